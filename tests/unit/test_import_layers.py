"""Dependencies point one way (docs/architecture.md, "Packages and layers").

Read from the source with ``ast`` (nothing is imported): every import of the
packages, at module level, inside functions (lazy) and under
``TYPE_CHECKING``.

- ``protos`` imports nothing of ours;
- the common layer (``mizzen`` but ``mizzen.cli``, ``mizzen.testing`` and
  ``mizzen.__main__``) imports only ``protos`` and itself;
- a daemon (``store``, ``controllers``, ``nodeagent``) imports only ``protos``,
  the common layer and itself, never another daemon;
- ``mizzen.cli`` (the composition root), ``mizzen.testing`` and
  ``mizzen.__main__`` may import anything;
- no import cycle is executed when modules load (module-level imports outside
  ``TYPE_CHECKING``);
- counting every import, the only cycles are the ones listed in KNOWN_CYCLES
  (type-only and lazy imports, still to be removed); a new one, or a known one
  that grows, fails.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("protos", "store", "controllers", "nodeagent", "mizzen")
DAEMONS = ("store", "controllers", "nodeagent")
TOP = ("mizzen.cli", "mizzen.testing", "mizzen.__main__")

KNOWN_CYCLES: list[frozenset[str]] = []


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The modules of ours an import statement names (a package's submodule when
    ``from package import submodule``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            here = module.split(".")
            if MODULES[module].name != "__init__.py":
                here = here[:-1]
            here = here[: len(here) - (node.level - 1)]
            base = ".".join([*here, *([node.module] if node.module else [])])
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    for name in names:
        while name not in MODULES and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in MODULES and name != module:
            yield name


def _deferred(node: ast.AST) -> bool:
    """Whether imports under node do not run when the module loads: functions,
    and ``if TYPE_CHECKING:`` blocks."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
        return True
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(every import, the imports executed when the module loads) per module."""
    every: dict[str, set[str]] = defaultdict(set)
    loading: dict[str, set[str]] = defaultdict(set)
    for module, path in MODULES.items():

        def visit(node: ast.AST, at_load: bool, module: str = module) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.Import | ast.ImportFrom):
                    for target in _targets(module, child):
                        every[module].add(target)
                        if at_load:
                            loading[module].add(target)
                elif _deferred(child):
                    visit(child, False)
                else:
                    visit(child, at_load)

        visit(ast.parse(path.read_text(), str(path)), True)
    return every, loading


EVERY, LOADING = _imports()


def _layer(module: str) -> str:
    if module == "protos" or module.startswith("protos."):
        return "protos"
    if module in TOP or module.startswith(tuple(f"{t}." for t in TOP)):
        return "top"
    for daemon in DAEMONS:
        if module == daemon or module.startswith(f"{daemon}."):
            return daemon
    return "common"


ALLOWED = {
    "protos": {"protos"},
    "common": {"protos", "common"},
    **{d: {"protos", "common", d} for d in DAEMONS},
    "top": {"protos", "common", *DAEMONS, "top"},
}


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_the_scan_sees_the_tree() -> None:
    assert {"store.node", "controllers.manager", "nodeagent.agent", "mizzen.cli.main"} <= set(
        MODULES
    )
    assert "protos.objects_pb2" in EVERY["store.objects_service"]
    assert "store.server" in EVERY["mizzen.cli.store_cmd"]  # a lazy import is seen


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_point_down(layer: str) -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in EVERY.items()
        if _layer(module) == layer
        for target in targets
        if _layer(target) not in ALLOWED[layer]
    )
    assert wrong == []


def test_no_import_cycle_runs_when_modules_load() -> None:
    assert _cycles(LOADING) == []


def test_no_new_import_cycles() -> None:
    unknown = [sorted(c) for c in _cycles(EVERY) if not any(c <= k for k in KNOWN_CYCLES)]
    assert unknown == []


def test_the_layer_rules_catch_a_wrong_import() -> None:
    assert _layer("store.node") == "store" and "controllers" not in ALLOWED["store"]
    assert _layer("mizzen.client.objects") == "common"
    assert _layer("mizzen.cli.main") == "top" and _layer("mizzen.clipboard") == "common"
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [frozenset({"a", "b"})]
