"""Small actors to try networks with (`--actors waypost.actors.examples:Upper`)."""

from __future__ import annotations

from .actor import Actor, Context


class Upper(Actor):
    """Emits its input in upper case."""

    capabilities = ("text",)

    async def handle(self, port: str, payload: object, ctx: Context) -> None:
        await ctx.emit("out", str(payload).upper())


class Reverse(Actor):
    """Emits its input reversed."""

    capabilities = ("text", "reverse")

    async def handle(self, port: str, payload: object, ctx: Context) -> None:
        await ctx.emit("out", str(payload)[::-1])


class Echo(Actor):
    """Emits what it gets."""

    async def handle(self, port: str, payload: object, ctx: Context) -> None:
        await ctx.emit("out", payload)
