"""The node agent: service definitions, checks, the node's lease, anti-entropy, drain."""

from __future__ import annotations
