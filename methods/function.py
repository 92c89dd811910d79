"""A plain function as a saliency method: ``@saliency_method("mine", needs_gradients=True)``.

The function is ``f(classifier, images, targets) -> B x H x W`` (``images`` in [0,1] pixel space,
``classifier`` a ``salbench.classifiers.Classifier``, ``targets`` class indices); a function that
also takes ``seeds`` receives the per-image seeds of a stochastic method. The decorator builds a
small ``SaliencyMethod`` subclass around it, so the function is checked (shape, finite values,
range: ``base.check_raw_maps``), upsampled and normalised like every built-in method, and its
source file enters the map-cache key (``code_objects``). The function itself is returned
unchanged (marked with ``__salbench_method__``, its registered name), so it stays callable as
written. Decorating a function of the same module and name again (a re-run notebook cell)
replaces the earlier registration instead of clashing with it.
"""

from __future__ import annotations

import hashlib
import inspect
import marshal
from collections.abc import Callable
from typing import Any

from salbench.methods.base import METHODS, Capabilities, SaliencyMethod, register_method

NORMALIZATIONS = ("max", "minmax", "none")


class FunctionMethod(SaliencyMethod):
    """Base of the classes ``saliency_method`` builds; ``function`` is the user's callable."""

    function: Callable[..., Any]
    takes_seeds: bool = False

    def attribute(self, classifier, images, targets, seeds):
        fn = type(self).function
        return fn(classifier, images, targets, seeds) if self.takes_seeds else fn(classifier, images, targets)

    def config(self) -> dict[str, Any]:
        fn = type(self).function
        return {**super().config(), "function": f"{fn.__module__}.{fn.__qualname__}", "function_sha256": function_digest(fn)}


def function_digest(fn: Callable[..., Any]) -> str:
    """sha256 (16 hex) of a function's compiled code (constants and names included): it changes
    when the function does, also for one defined in a notebook, which has no source file."""
    code = getattr(fn, "__code__", None)
    payload = marshal.dumps(code) if code is not None else repr(fn).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    return (getattr(a, "__module__", None), getattr(a, "__qualname__", None)) == (getattr(b, "__module__", None), getattr(b, "__qualname__", None))


def saliency_method(name: str, *, needs_gradients: bool = False, needs_feature_layer: bool = False,
                    classifier_dependent: bool = True, stochastic: bool = False, normalization: str = "max",
                    family: str = "plugin", description: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``f(classifier, images, targets[, seeds]) -> B x H x W`` as method ``name``.

    ``needs_gradients``: the function runs with autograd on (otherwise under ``torch.no_grad``);
    ``normalization``: ``"max"`` (non-negative maps divided by their maximum), ``"minmax"`` (any
    finite values, minimum subtracted first) or ``"none"`` (already in [0, 1]). The description
    defaults to the function's docstring's first line.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"saliency_method {name!r}: normalization={normalization!r}, expected one of {', '.join(NORMALIZATIONS)}")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(fn):
            raise TypeError(f"saliency_method {name!r} decorates {fn!r}, which is not callable")
        params = list(inspect.signature(fn).parameters)
        doc = (inspect.getdoc(fn) or "").strip().splitlines()
        attrs = {
            "function": staticmethod(fn),
            "takes_seeds": "seeds" in params,
            "capabilities": Capabilities(needs_gradients=needs_gradients, needs_feature_layer=needs_feature_layer,
                                         classifier_dependent=classifier_dependent, stochastic=stochastic, family=family),
            "normalization": normalization,
            "description": description or (doc[0] if doc else f"{fn.__module__}.{fn.__qualname__}"),
            "code_objects": (fn,),
            "__module__": fn.__module__,
            "__doc__": inspect.getdoc(fn),
        }
        cls = type(f"FunctionMethod_{fn.__name__}", (FunctionMethod,), attrs)
        if name in METHODS:
            old = METHODS.get(name)
            if isinstance(old, type) and issubclass(old, FunctionMethod) and _same_function(old.function, fn):
                METHODS.remove(name)  # the same function defined again: the new definition wins
        register_method(name)(cls)
        fn.__salbench_method__ = name  # type: ignore[attr-defined]
        return fn

    return deco
