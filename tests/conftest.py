"""Shared fixtures: small random-weight timm classifiers (a CNN and a ViT) at 32x32."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

from testutils import CLASSIFIER_ARCHS, make_classifier

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture()
def one_thread():
    """One intra-op thread for tiny models (as fast, and immune to oversubscription on a shared
    CPU); the previous count is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session", params=sorted(CLASSIFIER_ARCHS))
def classifier(request):
    arch, kw = CLASSIFIER_ARCHS[request.param]
    return make_classifier(arch, **kw)


# Tests never touch the user's cache: one temporary $SALBENCH_HOME for the whole session, set at
# import time so that module- and session-scoped fixtures and subprocesses see it too.
os.environ["SALBENCH_HOME"] = tempfile.mkdtemp(prefix="salbench-test-home-")


def pytest_sessionfinish(session, exitstatus):
    import shutil

    shutil.rmtree(os.environ["SALBENCH_HOME"], ignore_errors=True)


# ---------------------------------------------------------------- external tools in CI
_TOOL_OUTCOMES: dict[str, list[str]] = {}


def pytest_runtest_logreport(report):
    """Remember the outcome of tests marked ``uses_tool`` (the call phase, or a skip at setup)."""
    tools = [value for key, value in report.user_properties if key == "uses_tool"]
    if tools and (report.when == "call" or report.skipped):
        for tool in tools:
            _TOOL_OUTCOMES.setdefault(tool, []).append(f"{report.nodeid.split('::')[-1]} {report.outcome.upper()}")


def pytest_collection_modifyitems(items):
    for item in items:
        for mark in item.iter_markers("uses_tool"):
            item.user_properties.append(("uses_tool", mark.args[0]))  # read back in the log report


def pytest_terminal_summary(terminalreporter):
    """One line per external tool: did its tests run (CI must show PASSED, not SKIPPED)."""
    for tool, outcomes in sorted(_TOOL_OUTCOMES.items()):
        terminalreporter.write_line(f"external tool {tool}: {', '.join(outcomes)}")
