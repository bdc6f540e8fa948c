"""What a check may read (``ca_file``), and that reading it never blocks: a path outside
the server's check files directory is refused without being looked at, and only a
regular file of bounded size is read, whatever a name points to."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from waypost.errors import Forbidden
from waypost.health.files import MAX_CA_BYTES, CheckFiles


def test_a_server_without_a_check_files_dir_reads_nothing(tmp_path: Path) -> None:
    pem = tmp_path / "ca.pem"
    pem.write_text("x")
    with pytest.raises(Forbidden, match="reads no files for checks"):
        CheckFiles().allowed(str(pem))
    with pytest.raises(PermissionError):
        CheckFiles().read(str(pem))


@pytest.mark.parametrize("path", ["/dev/stdin", "/etc/passwd", "../x.pem", "a/../../x.pem"])
def test_paths_outside_the_directory_are_refused_by_name(tmp_path: Path, path: str) -> None:
    files = CheckFiles(tmp_path / "files")
    with pytest.raises(Forbidden, match="outside the server's check files directory"):
        files.allowed(path)


def test_the_same_answer_whether_or_not_an_outside_path_exists(tmp_path: Path) -> None:
    """No answer tells a client whether a path exists on the server."""
    files = CheckFiles(tmp_path / "files")
    answers = set()
    for path in ("/etc/passwd", "/etc/no-such-file-here"):
        with pytest.raises(PermissionError) as exc:
            files.read(path)
        answers.add(str(exc.value).replace(path, "P"))
    assert len(answers) == 1


def test_a_link_inside_that_leads_outside_is_refused_when_read(tmp_path: Path) -> None:
    root = tmp_path / "files"
    root.mkdir()
    (root / "stdin.pem").symlink_to("/dev/stdin")
    (root / "passwd.pem").symlink_to("/etc/passwd")
    files = CheckFiles(root)
    for name in ("stdin.pem", "passwd.pem"):
        assert files.allowed(name) == root / name  # accepted by its name
        with pytest.raises(PermissionError, match="leads outside"):
            files.read(name)


def test_a_fifo_or_a_pipe_is_refused_at_once_not_waited_on(tmp_path: Path) -> None:
    """Opened without blocking and refused as not a regular file: a FIFO nobody writes to
    (and a pipe as standard input) once held a server's event loop for good."""
    root = tmp_path / "files"
    root.mkdir()
    os.mkfifo(root / "fifo.pem")
    done = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            CheckFiles(root).read("fifo.pem")
        except OSError as exc:
            errors.append(exc)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(5), "reading a FIFO blocked"
    assert "not a regular file" in str(errors[0])
    # An agent may read any path, but /dev/stdin as an open pipe is still no CA file.
    code = (
        "from waypost.health.files import CheckFiles\n"
        "try:\n    CheckFiles(anywhere=True).read('/dev/stdin')\n"
        "except OSError as exc:\n    print(exc)\n"
    )
    r, w = os.pipe()
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], stdin=r, capture_output=True, text=True, timeout=30
        )
    finally:
        os.close(r)
        os.close(w)
    assert "not a regular file" in out.stdout, out


def test_a_ca_bundle_under_the_directory_makes_a_verifying_context(tmp_path: Path) -> None:
    root = tmp_path / "files"
    (root / "sub").mkdir(parents=True)
    system = ssl.get_default_verify_paths().cafile
    if system is None or not Path(system).is_file():
        pytest.skip("no system CA bundle to copy")
    bundle = Path(system).read_bytes()
    first = bundle[: bundle.index(b"-----END CERTIFICATE-----") + 26]
    (root / "sub" / "ca.pem").write_bytes(first)
    ctx = CheckFiles(root).ca_context("sub/ca.pem")
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert len(ctx.get_ca_certs()) == 1
    (root / "big.pem").write_bytes(b"x" * (MAX_CA_BYTES + 1))
    with pytest.raises(OSError, match="larger than"):
        CheckFiles(root).read("big.pem")
