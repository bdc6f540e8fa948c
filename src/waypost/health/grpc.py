"""gRPC checks: grpc.health.v1 Check, optionally for one service; SERVING is passing,
anything else (or no answer) critical."""

from __future__ import annotations

from typing import Any

from waypost.durations import parse_duration
from waypost.health.context import CheckContext
from waypost.model import Check, Status


async def run(check: Check, ctx: CheckContext) -> tuple[Status, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = str(check.grpc)
    what = f"gRPC {target}" + (f" service {check.grpc_service!r}" if check.grpc_service else "")
    try:
        async with ctx.grpc_channel(target) as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=check.grpc_service),
                timeout=parse_duration(check.timeout),
            )
    except grpc.aio.AioRpcError as exc:
        return Status.CRITICAL, f"{what}: {exc.code().name}: {exc.details() or ''}".rstrip(": ")
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return Status.PASSING, f"{what}: {name}"
    return Status.CRITICAL, f"{what}: {name}"
