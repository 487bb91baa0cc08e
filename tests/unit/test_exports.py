"""Each package's public surface is exactly its __all__: every name in __all__ exists, and every
public name the package defines (or re-exports from its own modules) is in __all__."""

from __future__ import annotations

import importlib
import types

import pytest

PACKAGES = ["ferry", "ferry.common", "ferry.engines", "ferry.scheduler", "ferry.server"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_in_all_exists(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__, package
    assert len(set(module.__all__)) == len(module.__all__), f"{package}: duplicates in __all__"
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.{name}"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_of_the_package_is_in_all(package: str) -> None:
    module = importlib.import_module(package)
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)  # subpackages are reached by name
        and getattr(value, "__module__", "").startswith(package)  # not a library's name
    }
    assert public <= set(module.__all__), f"{package}: public but not in __all__: {public}"
