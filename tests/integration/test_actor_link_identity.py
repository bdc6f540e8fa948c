"""Security review finding 10: a peer's hello claims ``(network_id, instance_id)``, and a
second hello with the same claim replaced the live link, so a peer knowing the shared
token (any peer, without one) received a message meant for ``beta`` while the sender
counted it delivered. Messages to a network now go only over a link this network opened
to the endpoint the registry names, answering as that instance; a hello never reaches a
link another connection opened unless it shows that link's resume secret."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import ServerProcess
from tests.integration.test_actors import Sink
from waypost.actors import AuthenticationFailed, Network
from waypost.actors import protocol as p

TOKEN = "links"


class Impostor:
    """A raw WebSocket to a network that claims another's identity and acks what it gets."""

    def __init__(self) -> None:
        self.got: list[object] = []
        self.welcomed: p.Welcome | None = None
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def connect(self, endpoint: str, network_id: str, instance_id: str) -> None:
        self._session = aiohttp.ClientSession()
        ws = await self._session.ws_connect(endpoint)
        hello = p.Hello(network_id=network_id, instance_id=instance_id, token=TOKEN)
        await ws.send_bytes(p.encode([hello]))
        first = p.decode((await ws.receive()).data)[0]
        assert isinstance(first, p.Welcome)
        self.welcomed = first
        self._task = asyncio.create_task(self._serve(ws))

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for m in ws:
            if m.type != aiohttp.WSMsgType.BINARY:
                break
            for f in p.decode(m.data):
                if isinstance(f, p.Msg):
                    self.got.append(f.payload)
                    await ws.send_bytes(p.encode([p.Ack(seq=f.seq)]))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._session is not None:
            await self._session.close()


def test_a_hello_claiming_another_networks_identity_receives_nothing_meant_for_it(
    server: ServerProcess,
) -> None:
    async def go() -> None:
        alpha = Network("alpha", instance_id="alpha-1", discovery=[server.url], auth_token=TOKEN)
        beta = Network("beta", instance_id="beta-1", discovery=[server.url], auth_token=TOKEN)
        sink = Sink()
        beta.add_node("sink", sink)
        early, late = Impostor(), Impostor()
        async with alpha, beta:
            try:
                # Before alpha ever talked to beta: a peer claiming to be beta links first.
                await early.connect(alpha.endpoint, "beta", "beta-1")
                await alpha.send_remote("beta", "sink", "in", "one")
                # With alpha's link to beta live: a second claim does not replace it.
                await late.connect(alpha.endpoint, "beta", "beta-1")
                for m in ("two", "three"):
                    await alpha.send_remote("beta", "sink", "in", m)
                assert sink.got == ["one", "two", "three"]
                assert early.got == []
                assert late.got == []
                # Each impostor got a link of its own, not another's secret.
                assert early.welcomed is not None
                assert late.welcomed is not None
                assert early.welcomed.resume != late.welcomed.resume
                out = [x for x in alpha.bridge_status()["links"] if x["direction"] == "out"]
                assert [(x["network_id"], x["state"]) for x in out] == [("beta", "connected")]
            finally:
                await early.close()
                await late.close()

    asyncio.run(go())


def test_an_endpoint_that_answers_as_another_instance_is_refused(server: ServerProcess) -> None:
    """The registry's entry for ``ghost`` names beta's address (a stale entry, a port
    reused): alpha's message is refused there, not handed to beta's actor."""

    async def go() -> None:
        alpha = Network("alpha", instance_id="alpha-1", discovery=[server.url], auth_token=TOKEN)
        beta = Network("beta", instance_id="beta-1", discovery=[server.url], auth_token=TOKEN)
        sink = Sink()
        beta.add_node("sink", sink)
        async with alpha, beta:
            entry = {
                "id": "ghost-1", "service": "ghost", "kind": "network",
                "address": "127.0.0.1", "port": int(beta.endpoint.rsplit(":", 1)[1].split("/")[0]),
                "meta": {"network_id": "ghost", "instance_id": "ghost-1",
                         "endpoint": beta.endpoint, "load": "0"},
            }  # fmt: skip
            await alpha.client.batch(register=[entry])
            with pytest.raises(AuthenticationFailed, match="answered as beta/beta-1"):
                await alpha.send_remote("ghost", "sink", "in", "not for beta")
            assert sink.got == []

    asyncio.run(go())
