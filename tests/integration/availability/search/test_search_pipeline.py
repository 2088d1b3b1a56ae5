"""Search over gRPC through the shared call pipeline: tracing, metrics, errors, encoding.

The pipeline (`common.grpc_server`) wraps each handler once at registration instead of
running interceptors per call; these tests check what it must still do for the search
method, whose handler answers with pre-encoded bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from availability_svc.search_server import AvailabilitySearchServicer, search_registration
from availability_svc.search_service import (
    AvailabilityQuery,
    Catalog,
    LocationInfo,
    Offer,
    OfferPage,
    OrganizationInfo,
    ProviderInfo,
    SearchService,
)
from common.errors import DependencyUnavailable
from common.grpc_server import ServerHandle, create_server
from medsched.availability.v1 import availability_service_pb2 as pb
from medsched.availability.v1 import availability_service_pb2_grpc as pb_grpc

NOW = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
ORG = "0b0e9f3c-3c8e-4f43-9d0e-5a8f0c7b2a10"
PROVIDER = "7f000000-0000-4000-8000-000000000001"
LOCATION = "5a000000-0000-4000-8000-000000000001"
CATALOG = Catalog(
    organizations={ORG: OrganizationInfo(ORG, "America/Chicago", 15, 90, True)},
    providers={PROVIDER: ProviderInfo(PROVIDER, ORG, "Dr. One", ("cardiology",), ("en",))},
    locations={LOCATION: LocationInfo(LOCATION, ORG, "Lakeview", 41.94, -87.65, "America/Chicago")},
)
START = int(datetime(2026, 3, 3, 15, 0, tzinfo=UTC).timestamp())
SEARCH = "/medsched.availability.v1.AvailabilityService/SearchAvailability"
HEALTH = "/grpc.health.v1.Health/Check"
# A sampled remote parent, as an instrumented caller sends it.
PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{PARENT_TRACE}-00f067aa0ba902b7-01"


class Backend:
    """Offers one result per search; `fail` makes the next search fail unexpectedly."""

    def __init__(self) -> None:
        self.fail: BaseException | None = None

    async def search(self, query: AvailabilityQuery) -> OfferPage:
        if self.fail is not None:
            raise self.fail
        offer = Offer(PROVIDER, LOCATION, START, START + 900, 1.234, 0.0, None)
        return OfferPage((offer,), True)


@dataclass
class Running:
    handle: ServerHandle
    channel: grpc.aio.Channel
    backend: Backend
    service: SearchService
    spans: InMemorySpanExporter
    observed: list[tuple[str, grpc.StatusCode, float]]


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    backend = Backend()
    service = SearchService(backend, catalog=lambda: CATALOG, clock=lambda: NOW)
    spans = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(spans))
    observed: list[tuple[str, grpc.StatusCode, float]] = []
    handle = await create_server(
        service_name="availability",
        listen="127.0.0.1:0",
        tls=None,
        servicers=[search_registration(service)],
        principal_verifier=None,
        on_rpc=lambda method, code, seconds: observed.append((method, code, seconds)),
        tracer_provider=tracing,
    )
    await handle.start()
    await handle.set_serving()
    channel = grpc.aio.insecure_channel(handle.address)
    try:
        yield Running(handle, channel, backend, service, spans, observed)
    finally:
        await channel.close(None)
        await handle.stop(0)


def search_request(**fields: object) -> pb.SearchAvailabilityRequest:
    base: dict[str, object] = {
        "organization_id": ORG,
        "location": "41.9,-87.6",
        "radius": "10mi",
        "from_date": "2026-03-03",
        "to_date": "2026-03-05",
    }
    base.update(fields)
    return pb.SearchAvailabilityRequest(**base)  # type: ignore[arg-type]


async def _eventually_observed(running: Running, count: int) -> None:
    """The server reports a call just after the client has its answer."""
    for _ in range(400):
        if len(running.observed) >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"expected {count} observed calls, got {running.observed}")


async def test_a_search_answers_what_the_servicer_builds(running: Running) -> None:
    stub = pb_grpc.AvailabilityServiceStub(running.channel)
    response = await stub.SearchAvailability(search_request(), timeout=5)
    servicer = AvailabilitySearchServicer(running.service)
    in_process = await servicer.SearchAvailability(search_request(), None)  # type: ignore[arg-type]
    assert response == in_process
    (slot,) = response.slots
    assert slot.provider.display_name == "Dr. One"
    assert slot.location.distance.value == 1.23
    assert slot.start_time.seconds == START
    assert response.next_page_token


async def test_a_search_continues_the_callers_trace_and_is_measured(running: Running) -> None:
    stub = pb_grpc.AvailabilityServiceStub(running.channel)
    await stub.SearchAvailability(
        search_request(), metadata=(("traceparent", TRACEPARENT),), timeout=5
    )
    await _eventually_observed(running, 1)
    (span,) = [s for s in running.spans.get_finished_spans() if s.name == SEARCH]
    assert format(span.context.trace_id, "032x") == PARENT_TRACE
    assert span.parent is not None
    assert span.parent.is_remote
    assert span.attributes is not None
    assert span.attributes["rpc.system"] == "grpc"
    assert span.attributes["rpc.service"] == "medsched.availability.v1.AvailabilityService"
    assert span.attributes["rpc.method"] == "SearchAvailability"
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    assert span.attributes["net.peer.name"] == "localhost"
    assert span.status.status_code is StatusCode.UNSET
    assert [(m, c) for m, c, _ in running.observed] == [(SEARCH, grpc.StatusCode.OK)]


async def test_a_bad_request_is_mapped_and_recorded_as_the_callers_error(
    running: Running,
) -> None:
    stub = pb_grpc.AvailabilityServiceStub(running.channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.SearchAvailability(search_request(radius="far"), timeout=5)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    await _eventually_observed(running, 1)
    (span,) = [s for s in running.spans.get_finished_spans() if s.name == SEARCH]
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert span.status.status_code is StatusCode.UNSET  # the caller's mistake, not ours
    assert [(m, c) for m, c, _ in running.observed] == [(SEARCH, grpc.StatusCode.INVALID_ARGUMENT)]


async def test_an_unavailable_backend_marks_the_span_as_failed(running: Running) -> None:
    running.backend.fail = DependencyUnavailable("the search index is being built")
    stub = pb_grpc.AvailabilityServiceStub(running.channel)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.SearchAvailability(search_request(), timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    await _eventually_observed(running, 1)
    (span,) = [s for s in running.spans.get_finished_spans() if s.name == SEARCH]
    assert span.status.status_code is StatusCode.ERROR
    assert any(event.name == "exception" for event in span.events)


async def test_health_checks_are_measured_but_not_traced(running: Running) -> None:
    health = health_pb2_grpc.HealthStub(running.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await _eventually_observed(running, 1)
    assert [(m, c) for m, c, _ in running.observed] == [(HEALTH, grpc.StatusCode.OK)]
    assert running.spans.get_finished_spans() == ()
