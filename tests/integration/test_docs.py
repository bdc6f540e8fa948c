"""The Python examples in the docs run as written (against a real server)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.conftest import ServerProcess

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def blocks(name: str) -> list[str]:
    return BLOCK.findall((DOCS / name).read_text())


@pytest.mark.parametrize("n", range(len(blocks("python-client.md"))))
def test_python_client_examples_run(server: ServerProcess, n: int) -> None:
    code = blocks("python-client.md")[n]
    code = code.replace("http://127.0.0.1:8500", server.url)
    namespace: dict[str, object] = {"__name__": "docs_example"}
    exec(compile(code, f"python-client.md[{n}]", "exec"), namespace)
    test_fn = namespace.get("test_mine")
    if callable(test_fn):
        asyncio.run(test_fn())  # type: ignore[arg-type]
