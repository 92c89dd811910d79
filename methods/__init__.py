"""Saliency methods, one module per family; importing the package registers them all."""

import importlib
import pkgutil

from salbench.methods.base import METHODS, Capabilities, SaliencyMethod, create_method, register_method

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base" and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["METHODS", "Capabilities", "SaliencyMethod", "create_method", "register_method"]
