"""The package has no import circles and no upward imports (read from the source with ``ast``; nothing imported).

Layers, bottom to top: the areas (data, encoder, mining, training, merging, evaluation, deploy, serving and the
shared leaf modules) -> orchestration -> pipelines / components -> cli. An area may import from orchestration only
its two leaf modules of settings, ``orchestration.config`` and ``orchestration.images``. The same check as
``../shared/tools/import_cycles.py`` (Tarjan's strongly connected components over every module-level and
function-level import), so `python ../shared/tools/import_cycles.py embedpipe` agrees with this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"embedpipe": ROOT / "embedpipe", "embedpipe.pipelines": ROOT / "pipelines",
            "embedpipe.components": ROOT / "components"}
TOP = ("embedpipe.orchestration", "embedpipe.pipelines", "embedpipe.components", "embedpipe.cli")
LEAVES = {"embedpipe.orchestration.config", "embedpipe.orchestration.images"}


def _modules() -> dict[str, Path]:
    mods = {}
    for dotted, top in PACKAGES.items():
        for path in top.rglob("*.py"):
            if dotted == "embedpipe" and path.relative_to(top).parts[0] in ("pipelines", "components"):
                continue  # the symlinks to ../pipelines and ../components
            rel = ".".join(path.relative_to(top).with_suffix("").parts)
            mods[f"{dotted}.{rel}".removesuffix(".__init__")] = path
    return mods


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for target in targets:
                if target.split(".")[0] != "embedpipe":
                    continue
                found = resolve(target)
                if found and found != mod and not (mod.startswith(found + ".") and mods[found].name == "__init__.py"):
                    edges[mod].add(found)
    return edges


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    mods = _modules()
    assert len(mods) > 80  # the walk found the package
    assert _circles(_edges(mods)) == []


def test_circles_are_found():
    """The checker itself: a two-module circle is reported."""
    assert _circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_upward_imports():
    edges = _edges(_modules())
    upward = sorted(f"{m} -> {t}" for m, targets in edges.items() for t in targets
                    if not m.startswith(TOP) and m not in LEAVES and t.startswith(TOP) and t not in LEAVES)
    assert upward == []
    # orchestration's settings leaves import no orchestration module but each other
    assert all(t in LEAVES or not t.startswith(TOP) for m in LEAVES for t in edges[m])


def test_preflight_and_the_recipe_load_without_torch():
    import subprocess
    import sys

    code = ("import sys, embedpipe.orchestration.preflight, embedpipe.recipe; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


LAYERS = ("embedpipe.orchestration", ("embedpipe.pipelines", "embedpipe.components"), "embedpipe.cli")


def _layer(module: str) -> int | None:
    for rank, prefixes in enumerate(LAYERS):
        if module.startswith(prefixes):
            return rank
    return None


def test_the_top_layers_import_downward_only():
    """orchestration -> pipelines / components -> cli: orchestration (compile, the local runner) is handed the
    pipeline it builds or runs, and imports no pipeline, component or command."""
    edges = _edges(_modules())
    upward = sorted(f"{m} -> {t}" for m, targets in edges.items() for t in targets
                    if _layer(m) is not None and _layer(t) is not None and _layer(t) > _layer(m))
    assert upward == []
    assert _layer("embedpipe.orchestration.compile") < _layer("embedpipe.pipelines.full") < _layer("embedpipe.cli")


def test_an_upward_import_is_found(tmp_path):
    """The layer check itself, on the edges it would see if compile imported the full pipeline again."""
    edges = {"embedpipe.orchestration.compile": {"embedpipe.pipelines.full"}}
    upward = [f"{m} -> {t}" for m, targets in edges.items() for t in targets if _layer(t) > _layer(m)]
    assert upward == ["embedpipe.orchestration.compile -> embedpipe.pipelines.full"]
