"""py-consul's own test suite (from its PyPI sdist, unchanged but for its top-level
conftest.py, which starts Consul in Docker and is replaced by one that starts Waypost)
for the agent, catalog, health, status and kv modules. Every case passes but those listed
in docs/consul-compat.md with their reasons, and the list is exact: a case that starts
passing, or a new failure, fails this test.

Slow (the suite sleeps for TTLs: about 45 s): ``make consul-suite`` runs it; ``make
test`` does not.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SDIST_DIR = ROOT / "tests" / "consul_clients" / "py_consul_suite"
DOC = ROOT / "docs" / "consul-compat.md"
MODULES = ["test_agent.py", "test_catalog.py", "test_health.py", "test_status.py", "test_kv.py"]


def documented_failures() -> set[str]:
    """The cases docs/consul-compat.md lists as failing (``| `test_x` | reason |``)."""
    text = DOC.read_text()
    section = text.split("## py-consul's own test suite", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(test_[a-z0-9_]+)` \|", section, re.M))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_py_consul_suite_fails_only_where_documented(tmp_path: Path) -> None:
    sdists = sorted(SDIST_DIR.glob("py_consul-*.tar.gz"))
    assert sdists, "the py-consul sdist: `make consul-suite` downloads it"
    with tarfile.open(sdists[-1]) as tar:
        tar.extractall(tmp_path, filter="data")
    [src] = [p for p in tmp_path.iterdir() if p.is_dir()]
    shutil.copy(SDIST_DIR / "conftest.py", src / "conftest.py")
    report = tmp_path / "report.xml"
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
        f"--junitxml={report}", "--rootdir", str(src),
        *(str(src / "tests" / "api" / m) for m in MODULES),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=src, capture_output=True, text=True, timeout=280)
    assert report.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    failed, passed = set(), set()
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name", "")
        if case.find("failure") is not None or case.find("error") is not None:
            failed.add(name)
        elif case.find("skipped") is None:
            passed.add(name)
    assert len(passed) >= 30, done.stdout[-3000:]
    assert failed == documented_failures(), done.stdout[-5000:]
