"""``python -m waypost``: the same as the ``waypost`` command."""

from __future__ import annotations

from waypost.cli import main

main()
