"""Channels to the gRPC services behind the gateway, generic callables per method, readiness.

Which process serves a service follows from its package: `medsched.<area>.v1.<Service>` is
served by the process configured as `<area>` in `MEDSCHED_SERVICE_ADDRS` (e.g.
`medsched.booking.v1.BookingService` -> `booking`). Services whose area has no address are
not served by this gateway (its routes and OpenAPI leave them out), which lets a deployment
put several gateways in front of different services.

Methods are called generically (`channel.unary_unary(path, serializer, deserializer)`) with
message classes made from the descriptors, so a new annotated RPC needs no gateway code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import grpc.aio
from google.protobuf import message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.descriptors import Api, HttpBinding

ChannelFactory = Callable[[str], grpc.aio.Channel]


def area_of(service_name: str) -> str:
    """`medsched.booking.v1.BookingService` -> `booking`; "" for other packages."""
    parts = service_name.split(".")
    if len(parts) >= 4 and parts[0] == "medsched":
        return parts[1]
    return ""


def service_targets(api: Api, service_addrs: Mapping[str, str]) -> dict[str, str]:
    """Service full name -> address, for every service of `api` with a configured area."""
    targets: dict[str, str] = {}
    for service in api.services():
        address = service_addrs.get(area_of(service))
        if address:
            targets[service] = address
    return targets


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class Backends:
    """One channel per distinct address, and a cached callable per bound method."""

    def __init__(self, targets: Mapping[str, str], channel_factory: ChannelFactory) -> None:
        self._targets = dict(targets)
        self._channels: dict[str, grpc.aio.Channel] = {}
        for address in sorted(set(self._targets.values())):
            self._channels[address] = channel_factory(address)
        self._callables: dict[str, Any] = {}

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(sorted(self._targets))

    def serves(self, service_name: str) -> bool:
        return service_name in self._targets

    def unary(self, binding: HttpBinding) -> grpc.aio.UnaryUnaryMultiCallable[Message, Message]:
        callable_: grpc.aio.UnaryUnaryMultiCallable[Message, Message] = self._callable(
            binding, streaming=False
        )
        return callable_

    def server_streaming(
        self, binding: HttpBinding
    ) -> grpc.aio.UnaryStreamMultiCallable[Message, Message]:
        callable_: grpc.aio.UnaryStreamMultiCallable[Message, Message] = self._callable(
            binding, streaming=True
        )
        return callable_

    def _callable(self, binding: HttpBinding, *, streaming: bool) -> Any:
        found = self._callables.get(binding.grpc_path)
        if found is None:
            channel = self._channels[self._targets[binding.service_name]]
            response_class = message_factory.GetMessageClass(binding.method.output_type)
            factory = channel.unary_stream if streaming else channel.unary_unary
            found = factory(
                binding.grpc_path,
                request_serializer=_serialize,
                response_deserializer=response_class.FromString,
            )
            self._callables[binding.grpc_path] = found
        return found

    async def readiness(self, timeout_s: float) -> dict[str, bool]:
        """Each served service -> whether its health check says SERVING within `timeout_s`."""
        names = self.services
        results = await asyncio.gather(*(self._serving(name, timeout_s) for name in names))
        return dict(zip(names, results, strict=True))

    async def _serving(self, service_name: str, timeout_s: float) -> bool:
        channel = self._channels[self._targets[service_name]]
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=service_name), timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        await asyncio.gather(*(channel.close(None) for channel in self._channels.values()))
