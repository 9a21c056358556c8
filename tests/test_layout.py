"""The layout rules of src/mmfuse hold: small modules and functions, no private name imported
across packages, no import cycle between packages (figures: `python scripts/layout.py`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import layout

# Functions allowed past the limit, each with its reason. Keep this short.
LONG_FUNCTIONS: dict[str, str] = {}


@pytest.fixture(scope="module")
def mods():
    return layout.modules()


def test_no_module_over_the_limit(mods):
    big = {m: n for m, p in mods.items() if (n := len(p.read_text().splitlines())) > 400}
    assert not big, f"modules over {layout.MAX_MODULE_LINES} lines: {big}"


def test_no_function_over_the_limit(mods):
    long = {
        f"{m}.{f}": n
        for m, p in mods.items()
        for f, n in layout.functions(p)
        if n > layout.MAX_FUNCTION_LINES and f"{m}.{f}" not in LONG_FUNCTIONS
    }
    assert not long, f"functions over {layout.MAX_FUNCTION_LINES} lines: {long}"


def test_no_private_import_across_packages(mods):
    assert layout.private_imports(mods) == []


def test_no_import_cycle_between_packages(mods):
    assert layout.cycles(layout.package_graph(mods)) == []


def test_the_checks_can_fail(tmp_path):
    # A tree made to break every rule is caught by each check.
    pkg = tmp_path / "mmfuse"
    for sub in ("a", "b"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    body = "\n".join(f"    x{i} = {i}" for i in range(70))
    (pkg / "a" / "m.py").write_text(f"from mmfuse.b.n import _hidden\n\ndef f():\n{body}\n")
    (pkg / "b" / "n.py").write_text("import mmfuse.a.m\n_hidden = 1\n" + "\n" * 401)
    mods = layout.modules(pkg)
    assert any(n > 400 for p in mods.values() for n in [len(p.read_text().splitlines())])
    assert [f for f, n in layout.functions(mods["mmfuse.a.m"]) if n > 60] == ["f"]
    assert layout.private_imports(mods) == ["mmfuse/a/m.py:1 imports mmfuse.b.n._hidden"]
    assert layout.cycles(layout.package_graph(mods)) == [["a", "b"]]
