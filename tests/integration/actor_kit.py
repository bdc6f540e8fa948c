"""Actors the actor tests run in worker processes (``waypost network --actors ...``)."""

from __future__ import annotations

from waypost.actors import Actor, Context


class Upper(Actor):
    capabilities = ("text",)

    async def handle(self, port: str, payload: object, ctx: Context) -> None:
        await ctx.emit("out", str(payload).upper())


class Reverse(Actor):
    capabilities = ("text", "reverse")

    async def handle(self, port: str, payload: object, ctx: Context) -> None:
        await ctx.emit("out", str(payload)[::-1])
