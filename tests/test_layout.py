"""The tree is the architecture: the import rules, no circles, no module too large to read.

    netevents (the library)  imports neither the app layer (netevents.app) nor the agent
    netevents.agent          imports the library, never the app layer
    netevents.app            the only place that wires agents and consumers together

Imports are read from the source (every ``import`` statement, also those inside functions), so
a lazy import cannot hide an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("netevents",)
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
        # CPython extensions of ours (a C file that defines PyInit_<name>): modules that import
        # nothing of ours, so ``from ._cnats import scan`` is an arrow to them, not to the package
        for path in sorted((ROOT / pkg).rglob("*.c")):
            if f"PyInit_{path.stem}" in path.read_text(errors="replace"):
                mods[".".join(path.relative_to(ROOT).with_suffix("").parts)] = path
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module of ours that an imported dotted name lands in (longest known prefix)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(mod: str, path: Path) -> set[str]:
    is_pkg = path.name == "__init__.py"
    package = mod if is_pkg else mod.rpartition(".")[0]
    out: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    # imports for type checkers only (``if TYPE_CHECKING:``) are not arrows at run time
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # ``from pkg import submodule`` is an arrow to the submodule only; a name that is
            # not a module of ours is an arrow to the module (or package) that defines it
            names = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in MODULES else origin
                     for a in node.names]
        else:
            continue
        for n in names:
            target = _resolve(n)
            if target and target != mod:
                out.add(target)
    return out


GRAPH = {m: _imports(m, p) if p.suffix == ".py" else set() for m, p in MODULES.items()}


def _layer(mod: str) -> str:
    for layer in ("app", "agent"):
        if mod == f"netevents.{layer}" or mod.startswith(f"netevents.{layer}."):
            return layer
    return "library"


def test_the_library_imports_neither_the_app_nor_the_agents():
    bad = sorted(f"{m} -> {t}" for m, ts in GRAPH.items() if _layer(m) == "library"
                 for t in ts if _layer(t) in ("app", "agent"))
    assert not bad, "the library (netevents) must not import the app layer or agents:\n" + "\n".join(bad)


def test_agents_do_not_import_the_app():
    bad = sorted(f"{m} -> {t}" for m, ts in GRAPH.items() if _layer(m) == "agent"
                 for t in ts if _layer(t) == "app")
    assert not bad, "agents must not import netevents.app:\n" + "\n".join(bad)


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(GRAPH):
        if m not in index:
            visit(m)
    return out


def test_no_import_circles():
    cycles = _cycles()
    assert not cycles, "modules that import each other (directly or around a circle):\n" + \
        "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("mod", sorted(m for m, p in MODULES.items() if p.suffix == ".py"))
def test_no_module_is_too_large_to_read(mod):
    lines = len(MODULES[mod].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[mod].relative_to(ROOT)} has {lines} lines (> {MAX_LINES}): cut it at a seam"


def test_the_rule_sees_lazy_imports():
    # the reader must see an import inside a function: the app imports netevents.agent.compose lazily or not
    assert "netevents.agent.compose" in GRAPH["netevents.app.agent_commands"]
    assert any(t.startswith("netevents.agent.capture") for t in GRAPH["netevents.app.agent_commands"])
    # and an extension module of ours as the module it is, not as its package
    assert "netevents.bus._cnats" in GRAPH["netevents.bus.inbound"]
    assert "netevents.bus" not in GRAPH["netevents.bus.inbound"]
