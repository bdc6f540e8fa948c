"""The dependency rules of design.md: imports point down the layers, never up."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "waypost"

# Layer of each top-level module or package; a module may import its own layer or lower.
LAYERS = {
    "_version": 0,
    "errors": 0,
    "aio": 0,
    "processes": 0,
    "durations": 1,
    "tls": 1,
    "telemetry": 1,
    "versions": 1,
    "sse": 1,
    "members": 1,
    "zones": 2,
    "model": 2,
    "query": 2,
    "compact": 2,
    "prometheus": 2,
    "consul": 2,
    "catalog": 3,
    "acl": 3,
    "store": 3,
    "traffic": 3,
    "health": 3,
    "settings": 3,
    "registry": 4,
    "checking": 4,
    "api": 5,
    "dns": 5,
    "client": 5,
    "peers": 5,
    "actors": 5,
    "agent": 6,
    "proxy": 6,
    "server": 7,
    "testing": 8,
    "cli": 9,
    "__main__": 10,
    "__init__": 10,
}
# Sideways imports that are forbidden even within a layer.
FORBIDDEN = {
    ("client", "api"),
    ("client", "registry"),
    ("client", "catalog"),
    ("client", "store"),
    ("catalog", "store"),
    ("store", "catalog"),
    ("model", "catalog"),
    ("model", "query"),
}
# Pure layers: no I/O libraries (design.md: the catalog knows no HTTP, traffic/ no sockets).
PURE = (
    "catalog",
    "acl",
    "compact",
    "prometheus",
    "consul",
    "traffic",
    "model",
    "query",
    "versions",
    "durations",
    "sse",
)
IO_LIBRARIES = {"aiohttp", "httpx", "socket", "asyncio.streams", "ssl", "uvloop", "requests"}


def third_party(path: Path) -> set[str]:
    """Top-level (and dotted) names of what a file imports from outside Waypost."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("waypost"):
                names.update({node.module, node.module.split(".")[0]})
        elif isinstance(node, ast.Import):
            for a in node.names:
                if not a.name.startswith("waypost"):
                    names.update({a.name, a.name.split(".")[0]})
    return names


def part_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("waypost"):
            parts = node.module.split(".")
            if len(parts) > 1:
                names.add(parts[1])
            else:  # "from waypost import x": x is a top-level module or a public name
                names.update(a.name for a in node.names if a.name in LAYERS)
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "waypost" and len(parts) > 1:
                    names.add(parts[1])
    return names


def test_every_module_has_a_layer() -> None:
    for path in SRC.rglob("*.py"):
        assert part_of(path) in LAYERS, f"{path} is in no layer of the import rules"


def test_imports_point_down_the_layers() -> None:
    bad = []
    for path in SRC.rglob("*.py"):
        me = part_of(path)
        for other in imported(path):
            if other == me:
                continue
            if LAYERS[other] > LAYERS[me] or (me, other) in FORBIDDEN:
                bad.append(f"{path.relative_to(SRC)} imports waypost.{other}")
    assert not bad, "\n".join(bad)


def test_the_model_imports_only_the_bottom_layers() -> None:
    assert imported(SRC / "model.py") <= {"errors", "durations", "versions"}


def test_pure_layers_import_no_io_library() -> None:
    bad = []
    for path in SRC.rglob("*.py"):
        if part_of(path) in PURE:
            for name in sorted(third_party(path) & IO_LIBRARIES):
                bad.append(f"{path.relative_to(SRC)} imports {name}")
    assert not bad, "\n".join(bad)


def test_importing_the_model_and_catalog_pulls_in_no_http_library() -> None:
    import subprocess
    import sys

    code = (
        "import sys, waypost.model, waypost.catalog, waypost.query\n"
        "loaded = sorted(m for m in ('aiohttp', 'httpx') if m in sys.modules)\n"
        "print(','.join(loaded))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
