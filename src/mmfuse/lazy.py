"""Package namespaces whose public names load on first use (PEP 562).

`import mmfuse.cli` runs `mmfuse/__init__.py`, and `mmfuse.train.presets` runs
`mmfuse/train/__init__.py`: a package that imported every name it offers would make the command
line load torch, scikit-learn and pandas before it has parsed its arguments, and `mmfuse --help`
take seconds. A package lists where each name lives instead, and the module holding it is
imported when the name is first read (`from mmfuse.train import Trainer` included).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable, Mapping, Sequence


def lazy_names(
    package: str, sources: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, where `sources` maps a module to the public
    names it holds. A name, once read, becomes a plain attribute of the package."""
    where = {name: module for module, names in sources.items() for name in names}
    namespace = sys.modules[package].__dict__
    # Importing submodule `x` sets the package's attribute `x` to it, which would then hide a
    # lazy name `x` for good (a function named like its module, as `validate` once was).
    shadowed = sorted(set(where) & {m.name for m in pkgutil.iter_modules(namespace["__path__"])})
    if shadowed:
        raise ImportError(f"{package}: lazy names {shadowed} are also its submodules; rename one")

    def __getattr__(name: str) -> object:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *where})

    return __getattr__, __dir__
