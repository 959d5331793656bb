"""The package's import graph: no circle, and every import goes down the layers (module-level and
function-level imports alike), so that the folders show the architecture."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import SRC

PACKAGE = SRC / "vaecli"


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = p
    return mods


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the vaecli modules it imports. ``from pkg import sub`` counts as importing ``sub``
    only (a submodule import runs its package's ``__init__`` first, as any Python import does)."""
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rsplit(".", 1)[0]
                mod = node.module if not node.level else f"{base}.{node.module}" if node.module else base
                subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in mods]
                deps.update(subs if len(subs) == len(node.names) else [mod, *subs])
        edges[name] = {d for d in deps if d in mods and d != name}
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


# Lowest first: a module may import its own layer and those before it, never one after it.
LAYERS = (
    ("base", ("vaecli.errors", "vaecli.paths", "vaecli.fileio", "vaecli.config", "vaecli.device", "vaecli.distributed")),
    ("data", ("vaecli.data",)),
    ("render", ("vaecli.render",)),
    ("model", ("vaecli.model",)),
    ("eval", ("vaecli.eval",)),
    ("runs", ("vaecli.runs",)),
    ("train", ("vaecli.train",)),
    ("experiments", ("vaecli.experiments",)),
    ("share", ("vaecli.share",)),
    ("explore", ("vaecli.explore",)),
    ("cli", ("vaecli.cli", "vaecli.__main__")),
)


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of ``module`` (a vaecli module name)."""
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for each import of a module ``b`` in a higher layer than ``a``'s (the package root,
    whose lazy re-exports import nothing at import time, is exempt)."""
    return sorted(f"{a} -> {b}" for a, deps in edges.items() if a != "vaecli" for b in deps if b != "vaecli" and layer_of(b) > layer_of(a))


def test_the_import_graph_has_no_circle() -> None:
    mods = _modules()
    assert "vaecli.train.trainer" in mods and "vaecli.data" in mods
    assert _cycles(_edges(mods)) == []


def test_every_module_is_in_a_layer_and_imports_go_down() -> None:
    edges = _edges(_modules())
    assert upward_imports(edges) == []


def test_the_layer_check_finds_an_upward_import() -> None:
    assert upward_imports({"vaecli.model.vae": {"vaecli.train.recipe", "vaecli.config"}, "vaecli.cli.app": {"vaecli.data"}}) == [
        "vaecli.model.vae -> vaecli.train.recipe"
    ]


def test_the_cycle_finder_finds_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_package_root_re_exports_what_the_docs_use() -> None:
    import vaecli

    for name in vaecli.__all__:
        assert getattr(vaecli, name) is not None, name
    from vaecli import VAE, load_model
    from vaecli.model.vae import VAE as ModelVAE
    from vaecli.runs.store import load_model as store_load_model

    assert VAE is ModelVAE and load_model is store_load_model
