"""``Actor``: what a network runs. Subclass it, name its ports, write ``handle``."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from .network import Network, _Reply


class Actor:
    """One actor: ``handle(port, payload, ctx)`` runs for each message on an inport;
    ``await ctx.emit(outport, value)`` sends a result on (and returns once the next hop
    has handled it)."""

    inports: ClassVar[tuple[str, ...]] = ("in",)
    outports: ClassVar[tuple[str, ...]] = ("out",)
    capabilities: ClassVar[tuple[str, ...]] = ()

    async def handle(self, port: str, payload: object, ctx: Context) -> None:
        raise NotImplementedError


class Context:
    """What ``handle`` gets: ``emit``, and which network and node it runs as."""

    def __init__(self, network: Network, node: str, reply: _Reply | None) -> None:
        self.network = network
        self.node = node
        self._reply = reply

    @property
    def network_id(self) -> str:
        return self.network.network_id

    @property
    def remote(self) -> bool:
        """Whether another network invoked this actor (its outputs go back there)."""
        return self._reply is not None

    async def emit(self, port: str, payload: object) -> None:
        await self.network._emit(self.node, port, payload, self._reply)
