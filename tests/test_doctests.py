"""Every module's docstring example runs (the examples are documentation; they must stay true)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import k8snet_sim

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(k8snet_sim.__path__, "k8snet_sim.")
    # Scripts run inside emulated namespaces, and the CLI entry point, have no examples.
    if not m.name.endswith(("__main__", "podserver", "probe_client", "userspace_proxy"))
)


@pytest.mark.parametrize("name", MODULES)
def test_module_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
