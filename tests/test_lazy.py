"""Package names that load on first use (`mmfuse.lazy`)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _make(tmp_path, init: str) -> None:
    pkg = tmp_path / "lazypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(init)
    (pkg / "tool.py").write_text("LOADED = True\ndef tool():\n    return 'tool'\n")
    (pkg / "other.py").write_text("def helper():\n    return 'helper'\n")


def _run(tmp_path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


def test_a_name_loads_its_module_on_first_use_only(tmp_path):
    _make(
        tmp_path,
        "from mmfuse.lazy import lazy_names\n"
        "__getattr__, __dir__ = lazy_names(__name__, {'lazypkg.other': ['helper']})\n",
    )
    done = _run(
        tmp_path,
        "import sys, lazypkg\n"
        "assert 'lazypkg.other' not in sys.modules\n"
        "assert 'helper' in dir(lazypkg)\n"
        "from lazypkg import helper\n"
        "assert helper() == 'helper' and 'lazypkg.other' in sys.modules\n"
        "try:\n    lazypkg.missing\nexcept AttributeError as e:\n    print(e)\n",
    )
    assert done.returncode == 0, done.stderr
    assert "has no attribute 'missing'" in done.stdout


def test_a_name_that_is_also_a_submodule_is_refused(tmp_path):
    # `from pkg import tool` would give the module `tool` once anything imported it.
    _make(
        tmp_path,
        "from mmfuse.lazy import lazy_names\n"
        "__getattr__, __dir__ = lazy_names(__name__, {'lazypkg.tool': ['tool']})\n",
    )
    done = _run(tmp_path, "import lazypkg")
    assert done.returncode != 0
    assert "lazy names ['tool'] are also its submodules" in done.stderr


@pytest.mark.parametrize(
    "package", ["mmfuse", "mmfuse.anomaly", "mmfuse.data", "mmfuse.model", "mmfuse.train"]
)
def test_every_public_name_resolves(package):
    import importlib

    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
