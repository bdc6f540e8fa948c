"""Files a check reads (an ``https`` check's ``ca_file``): which paths it may name, and
reading them without ever blocking the event loop.

A server runs the checks of instances registered through its API: a client names the
path, so it may read only under the operator's ``--check-files-dir`` (none by default),
and a path outside it is refused without being looked at (no answer tells whether it
exists). An agent runs the checks of its own definition files, written by the operator:
any path. Either way the file is opened without blocking, must be a regular file of at
most ``MAX_CA_BYTES``, and is read in a worker thread: ``/dev/stdin``, a FIFO or a
terminal once hung a server's loop for good.
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

from waypost.errors import Forbidden

MAX_CA_BYTES = 1 << 20


class CheckFiles:
    """The paths checks may read: anywhere (``root=None, anywhere=True``, an agent), under
    ``root`` (a server with ``--check-files-dir``), or nowhere (a server without it)."""

    def __init__(self, root: str | Path | None = None, *, anywhere: bool = False) -> None:
        self.anywhere = anywhere
        self.root = Path(os.path.abspath(root)) if root else None

    def allowed(self, path: str) -> Path:
        """The path a check's ``path`` names, if checks may read it (by its name: what it
        points to is checked when it is read); Forbidden otherwise."""
        if self.anywhere:
            return Path(path)
        if self.root is None:
            raise Forbidden(
                "ca_file: this server reads no files for checks (start it with "
                "--check-files-dir DIR, or define the check in an agent's files)",
                field="checks",
            )
        full = Path(os.path.normpath(self.root / path))
        if not full.is_relative_to(self.root):
            raise Forbidden(
                f"ca_file: {path!r} is outside the server's check files directory",
                field="checks",
            )
        return full

    def read(self, path: str) -> bytes:
        """The bytes of ``path`` (blocking: call it in a worker thread). OSError when it
        is not allowed, not a regular file, too large or unreadable."""
        try:
            full = self.allowed(path)
        except Forbidden as exc:
            raise PermissionError(exc.message) from None
        if self.root is not None and not self.anywhere:
            real = Path(os.path.realpath(full))
            if not real.is_relative_to(os.path.realpath(self.root)):
                raise PermissionError(f"{path!r} leads outside the check files directory")
            full = real
        fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(f"{path!r} is not a regular file")
            if info.st_size > MAX_CA_BYTES:
                raise OSError(f"{path!r} is larger than {MAX_CA_BYTES} bytes")
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read(MAX_CA_BYTES + 1)[:MAX_CA_BYTES]
        finally:
            os.close(fd)

    def ca_context(self, path: str) -> ssl.SSLContext:
        """A verifying client context that trusts the CA bundle at ``path`` (blocking)."""
        data = self.read(path)
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            return ssl.create_default_context(cadata=data)  # DER
        return ssl.create_default_context(cadata=text)
