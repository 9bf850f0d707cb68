"""Packages that export lazily give the named objects, whatever was imported before."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import types

import pytest

LAZY_PACKAGES = ("astrocurate.algorithms.backbones", "astrocurate.algorithms.ssl")


@pytest.mark.parametrize("name", LAZY_PACKAGES)
def test_every_export_is_its_object_even_after_all_submodules_are_imported(name) -> None:
    package = importlib.import_module(name)
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{name}.{info.name}")  # sets the submodules as attributes
    for export in package.__all__:
        value = getattr(package, export)
        assert not isinstance(value, types.ModuleType), f"{name}.{export} is shadowed"
        assert export in dir(package)
    with pytest.raises(AttributeError):
        _ = package.no_such_name


def test_light_names_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from astrocurate.algorithms.ssl import PretrainConfig\n"
        "from astrocurate.algorithms.backbones import describe_backbone, WeightsError\n"
        "PretrainConfig().validate()\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
