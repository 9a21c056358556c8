"""Layout figures for src/mmfuse: lines per package, the largest module and function, long
functions, private names imported across packages, and import cycles between packages.

`python scripts/layout.py` prints them; `tests/test_layout.py` holds the rules to them.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src" / "mmfuse"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name → file, for every module under `root`."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def package_of(module: str) -> str:
    """`mmfuse.train.trainer` → `train`; a top-level module is its own package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def imports(module: str, path: Path) -> list[tuple[str, str | None, int]]:
    """`(imported module, imported name or None, line)` for every mmfuse import, incl. lazy ones."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("mmfuse")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_pkg else anchor[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("mmfuse"):
                out += [(base, a.name, node.lineno) for a in node.names]
    return out


def functions(path: Path) -> list[tuple[str, int]]:
    """`(qualified name, lines)` for every function and method in a file."""
    tree = ast.parse(path.read_text())
    out = []

    def visit(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                out.append((name, child.end_lineno - child.lineno + 1))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return out


def private_imports(mods: dict[str, Path]) -> list[str]:
    """`a.py:12 imports b._name` where a module imports a private name from another package."""
    found = []
    for mod, path in mods.items():
        for target, name, line in imports(mod, path):
            if package_of(target) == package_of(mod):
                continue
            private_module = any(p.startswith("_") for p in target.split(".")[1:])
            private_name = name is not None and name.startswith("_") and name != "__version__"
            if (private_module and target != "mmfuse._version") or private_name:
                found.append(f"{_rel(path)}:{line} imports {target}.{name}")
    return found


def _rel(path: Path) -> str:
    """`.../src/mmfuse/a/b.py` → `mmfuse/a/b.py`."""
    parts = path.parts
    top = len(parts) - 1 - parts[::-1].index("mmfuse")
    return "/".join(parts[top:])


def package_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        src = package_of(mod)
        for target, name, _ in imports(mod, path):
            if target == "mmfuse" and name is not None:
                target = f"mmfuse.{name}"  # `from mmfuse import data`
                if target not in mods:
                    continue
            dst = package_of(target)
            if dst != src and src != "(root)" and dst != "(root)":
                graph[src].add(dst)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one package (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def main() -> int:
    mods = modules()
    lines = {m: len(p.read_text().splitlines()) for m, p in mods.items()}
    per_package: dict[str, int] = defaultdict(int)
    for m, n in lines.items():
        per_package[package_of(m)] += n
    print("package        lines")
    for pkg, n in sorted(per_package.items(), key=lambda kv: -kv[1]):
        print(f"{pkg:<14} {n:>5}")
    print(f"{'total':<14} {sum(lines.values()):>5}")
    big = max(lines, key=lines.get)
    print(f"largest module: {big} ({lines[big]} lines)")
    funcs = [(f"{m}.{f}", n) for m, p in mods.items() for f, n in functions(p)]
    funcs.sort(key=lambda fn: -fn[1])
    print(f"largest function: {funcs[0][0]} ({funcs[0][1]} lines)")
    print(
        f"modules over {MAX_MODULE_LINES} lines:", [m for m in lines if lines[m] > MAX_MODULE_LINES]
    )
    print(f"functions over {MAX_FUNCTION_LINES} lines:")
    for name, n in funcs:
        if n > MAX_FUNCTION_LINES:
            print(f"  {name} ({n})")
    priv = private_imports(mods)
    print(f"private imports across packages: {len(priv)}")
    for p in priv:
        print("  " + p)
    cyc = cycles(package_graph(mods))
    print(f"package import cycles: {cyc or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
