"""``/openapi.json`` says exactly what the server accepts: schemathesis, every check on.

Schema-valid requests must be accepted (or answered 404/409 for state), schema-violating
ones refused with a 4xx, no 5xx anywhere, and every answer must match its documented
status, content type, headers and schema. Bounded: a fixed seed, a few dozen examples an
operation, and a time budget. The event stream is left out (it never ends; its
parameters are tested in test_events.py and test_core.py).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerProcess

FUZZ_SECONDS = 45


@pytest.mark.timeout(FUZZ_SECONDS + 120)
def test_schemathesis_with_every_check_finds_nothing(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # Blocking queries would hold each fuzzed request for minutes: cut them short.
    srv = start_server("--store", "memory://", "--max-wait", "200ms")
    st = Path(sys.executable).parent / "schemathesis"
    cmd = [
        str(st),
        "run",
        f"{srv.url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "20",
        "--max-time",
        str(FUZZ_SECONDS),
        "--request-timeout",
        "10",
        "--exclude-path",
        "/api/v1/events",
        "--seed",
        "20261123",
        "--workers",
        "1",
        "--no-color",
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, cwd=tmp_path, timeout=FUZZ_SECONDS + 100
    )
    tail = "\n".join(done.stdout.splitlines()[-80:])
    assert done.returncode == 0, f"schemathesis found problems:\n{tail}\n{done.stderr[-2000:]}"
    assert " passed" in done.stdout or "No issues found" in done.stdout, tail
