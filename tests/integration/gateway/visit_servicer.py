"""A gRPC servicer for the test contract's `VisitService`, built from its descriptors.

Its behaviours are chosen so the gateway's paths can be observed from outside: it echoes
what it received (including the forwarded principal and request id) and fails in each of
the ways the gateway must translate (domain errors with details, an internal error whose
text must not leak, a slow call, a stream that breaks).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
from google.protobuf import json_format, message_factory
from google.protobuf.message import Message

from common.errors import (
    DependencyUnavailable,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Reason,
)
from common.grpc_server import Registration, current_principal
from gateway.descriptors import Api
from tests.unit.gateway.testproto import VISIT_SERVICE

Context = grpc.aio.ServicerContext[Any, Any]

# Text the servicer puts in an unexpected exception; it must never reach a client.
LEAKY_TEXT = "SELECT name FROM patients WHERE ssn = '078-05-1120'"


class VisitServicer:
    """Implements `medsched.gwtest.v1.VisitService` over message classes of `api`."""

    def __init__(self, api: Api) -> None:
        self._api = api
        self.slow_started = asyncio.Event()

    def message(self, name: str, values: dict[str, Any] | None = None) -> Message:
        descriptor = self._api.pool.FindMessageTypeByName(f"medsched.gwtest.v1.{name}")
        message = message_factory.GetMessageClass(descriptor)()
        if values:
            json_format.ParseDict(values, message)
        return message

    def registration(self) -> Registration:
        service = self._api.pool.FindServiceByName(VISIT_SERVICE)
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        behaviours: dict[str, Any] = {
            "SearchVisits": self.search_visits,
            "GetVisit": self.get_visit,
            "CreateVisit": self.create_visit,
            "CancelVisit": self.cancel_visit,
            "GetVisitNotes": self.get_visit_notes,
            "WatchVisits": self.watch_visits,
        }
        for method in service.methods:
            request_class = message_factory.GetMessageClass(method.input_type)
            behaviour = behaviours.get(method.name)
            if behaviour is None:
                continue
            make = (
                grpc.unary_stream_rpc_method_handler
                if method.server_streaming
                else grpc.unary_unary_rpc_method_handler
            )
            handlers[method.name] = make(
                behaviour,
                request_deserializer=request_class.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )
        return Registration.generic(
            grpc.method_handlers_generic_handler(VISIT_SERVICE, handlers), VISIT_SERVICE
        )

    @staticmethod
    def _who() -> str:
        principal = current_principal()
        if principal is None:
            return "anonymous"
        return f"{principal.role.value}:{principal.subject}:{principal.patient_id or ''}"

    async def search_visits(self, request: Any, context: Context) -> Message:
        del context
        echoed = json_format.MessageToDict(request, preserving_proto_field_name=True)
        return self.message(
            "SearchVisitsResponse",
            {
                "visits": [{"visitId": "v-1", "tags": [self._who()], "extra": echoed}],
                "nextPageToken": "page-2",
            },
        )

    async def get_visit(self, request: Any, context: Context) -> Message:
        visit_id = request.visit_id or request.name
        if visit_id == "missing":
            raise NotFound("visit not found")
        if visit_id == "boom":
            raise RuntimeError(LEAKY_TEXT)
        if visit_id == "slow":
            self.slow_started.set()
            await asyncio.sleep(30)
        request_id = dict(context.invocation_metadata() or ()).get("x-request-id", "")
        client_headers = sorted(
            key for key, _ in context.invocation_metadata() or () if key.startswith("x-medsched")
        )
        return self.message(
            "Visit",
            {
                "visitId": visit_id,
                "startTime": "2025-02-03T14:15:00Z",
                "bigNumber": str(2**40),
                "tags": [self._who(), f"request:{request_id}", *client_headers],
                "state": "SCHEDULED",
            },
        )

    async def create_visit(self, request: Any, context: Context) -> Message:
        del context
        if not request.visit.HasField("start_time"):
            raise InvalidArgument(
                [
                    FieldViolation("visit.start_time", "is required"),
                    FieldViolation("request_id", "must be a UUID"),
                ]
            )
        visit = json_format.MessageToDict(request.visit)
        visit.update(visitId="v-new", clinicId=request.clinic_id)
        return self.message("Visit", visit)

    async def cancel_visit(self, request: Any, context: Context) -> Message:
        del context
        if request.visit_id == "cancelled":
            raise FailedPrecondition(
                "the visit is already cancelled",
                reasons=[
                    Reason(
                        code="ALREADY_CANCELLED",
                        subject="visits/cancelled",
                        description="cancelled earlier",
                    )
                ],
            )
        return self.message(
            "Visit", {"visitId": request.visit_id, "state": "CANCELLED", "tags": [request.reason]}
        )

    async def get_visit_notes(self, request: Any, context: Context) -> Message:
        del context
        return self.message("VisitNotes", {"visitId": request.visit_id, "lines": ["a", "b"]})

    async def watch_visits(self, request: Any, context: Context) -> AsyncIterator[Message]:
        del context
        if request.clinic_id == "closed":
            raise NotFound("clinic not found")
        for index in range(request.count):
            if request.clinic_id == "flaky" and index == 2:
                raise DependencyUnavailable("the clinic feed was interrupted")
            yield self.message("Visit", {"visitId": f"v-{index}", "clinicId": request.clinic_id})
