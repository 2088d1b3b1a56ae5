"""Unit tests for telemetry: metrics scraped over HTTP and traces (common.telemetry)."""

from __future__ import annotations

import importlib.util
import logging
import socket
import urllib.request
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from common.telemetry import (
    _OTLP_EXPORTER_MODULE,
    PoolUsage,
    Telemetry,
    parse_listen_address,
    setup_telemetry,
)

BOOK = "/medsched.booking.v1.BookingService/Book"
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    started = setup_telemetry("booking", metrics_listen="127.0.0.1:0", install_global=False)
    try:
        yield started
    finally:
        started.shutdown()


def scrape(telemetry: Telemetry) -> str:
    address = telemetry.metrics_address
    assert address is not None
    url = f"http://{address[0]}:{address[1]}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        body: bytes = response.read()
    return body.decode()


def series(text: str) -> Series:
    """Every sample as {(sample name, labels): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


def test_metrics_endpoint_binds_a_real_port_when_zero_is_asked(telemetry: Telemetry) -> None:
    address = telemetry.metrics_address

    assert address is not None
    assert address[0] == "127.0.0.1"
    assert address[1] > 0


def test_recorded_rpcs_are_scraped_with_count_and_latency(telemetry: Telemetry) -> None:
    telemetry.metrics.record_rpc(BOOK, "OK", 0.004)
    telemetry.metrics.record_rpc(BOOK, "OK", 0.030)
    telemetry.metrics.record_rpc(BOOK, "ABORTED", 1.5)

    scraped = series(scrape(telemetry))

    ok = labels(service="booking", method=BOOK, code="OK")
    aborted = labels(service="booking", method=BOOK, code="ABORTED")
    assert scraped[("medsched_rpc_requests_total", ok)] == 2.0
    assert scraped[("medsched_rpc_requests_total", aborted)] == 1.0
    assert scraped[("medsched_rpc_duration_seconds_count", ok)] == 2.0
    assert scraped[("medsched_rpc_duration_seconds_sum", ok)] == pytest.approx(0.034)
    assert scraped[("medsched_rpc_duration_seconds_bucket", ok | labels(le="0.005"))] == 1.0
    assert scraped[("medsched_rpc_duration_seconds_bucket", ok | labels(le="0.05"))] == 2.0
    assert scraped[("medsched_rpc_duration_seconds_bucket", aborted | labels(le="1.0"))] == 0.0
    assert scraped[("medsched_rpc_duration_seconds_bucket", aborted | labels(le="2.0"))] == 1.0


def test_resource_names_the_service(telemetry: Telemetry) -> None:
    telemetry.metrics.observe_outbox_pending("booking", lambda: 1)

    scraped = series(scrape(telemetry))

    [target] = [lbls for name, lbls in scraped if name == "target_info"]
    assert ("service_name", "booking") in target


def test_registered_gauges_are_observed_at_scrape_time(telemetry: Telemetry) -> None:
    lag = {"booking": 1.25}
    telemetry.metrics.observe_outbox_lag("booking", lambda: lag["booking"])
    telemetry.metrics.observe_outbox_pending("booking", lambda: 7)
    telemetry.metrics.observe_consumer_lag("MEDSCHED", "notify-booked", lambda: 42)
    telemetry.metrics.observe_db_pool("main", lambda: PoolUsage(size=10, in_use=4, waiting=1))

    first = series(scrape(telemetry))
    lag["booking"] = 0.5
    second = series(scrape(telemetry))

    outbox = labels(service="booking", outbox="booking")
    pool = labels(service="booking", pool="main")
    assert first[("medsched_outbox_lag_seconds", outbox)] == 1.25
    assert second[("medsched_outbox_lag_seconds", outbox)] == 0.5
    assert first[("medsched_outbox_pending", outbox)] == 7.0
    consumer = labels(service="booking", stream="MEDSCHED", consumer="notify-booked")
    assert first[("medsched_consumer_pending", consumer)] == 42.0
    assert first[("medsched_db_pool_size", pool)] == 10.0
    assert first[("medsched_db_pool_in_use", pool)] == 4.0
    assert first[("medsched_db_pool_waiting", pool)] == 1.0


def test_cancelled_gauge_registration_stops_its_series(telemetry: Telemetry) -> None:
    keep = telemetry.metrics.observe_outbox_pending("booking", lambda: 3)
    drop = telemetry.metrics.observe_outbox_pending("waitlist", lambda: 9)
    assert ("medsched_outbox_pending", labels(service="booking", outbox="waitlist")) in series(
        scrape(telemetry)
    )

    drop.cancel()
    scraped = series(scrape(telemetry))

    assert ("medsched_outbox_pending", labels(service="booking", outbox="waitlist")) not in scraped
    assert scraped[("medsched_outbox_pending", labels(service="booking", outbox="booking"))] == 3.0
    keep.cancel()


def test_gauge_with_nothing_to_report_yet_has_no_sample(telemetry: Telemetry) -> None:
    telemetry.metrics.observe_outbox_lag("booking", lambda: None)

    scraped = series(scrape(telemetry))

    assert not [name for name, _ in scraped if name == "medsched_outbox_lag_seconds"]


def test_failing_gauge_callback_does_not_hide_other_sources(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> int:
        raise RuntimeError("pool closed")

    telemetry.metrics.observe_outbox_pending("booking", broken)
    telemetry.metrics.observe_outbox_pending("waitlist", lambda: 2)

    with caplog.at_level(logging.ERROR, logger="common.telemetry"):
        scraped = series(scrape(telemetry))

    assert scraped[("medsched_outbox_pending", labels(service="booking", outbox="waitlist"))] == 2.0
    assert ("medsched_outbox_pending", labels(service="booking", outbox="booking")) not in scraped
    assert [r.getMessage() for r in caplog.records] == ["gauge callback failed"]


def test_custom_gauge_through_register_gauge(telemetry: Telemetry) -> None:
    from opentelemetry.metrics import Observation

    telemetry.metrics.register_gauge(
        "medsched.index.providers",
        "Providers in the availability index",
        "{provider}",
        lambda: [Observation(5000, {"shard": "0"})],
    )

    scraped = series(scrape(telemetry))

    assert scraped[("medsched_index_providers", labels(service="booking", shard="0"))] == 5000.0


def test_gauge_name_reused_with_another_unit_is_refused(telemetry: Telemetry) -> None:
    telemetry.metrics.register_gauge("medsched.thing", "things", "{thing}", lambda: [])

    with pytest.raises(ValueError, match=r"'medsched\.thing' already exists"):
        telemetry.metrics.register_gauge("medsched.thing", "things", "s", lambda: [])


def test_render_metrics_matches_the_endpoint(telemetry: Telemetry) -> None:
    telemetry.metrics.record_rpc(BOOK, "OK", 0.01)

    rendered = series(telemetry.render_metrics().decode())

    assert (
        rendered[("medsched_rpc_requests_total", labels(service="booking", method=BOOK, code="OK"))]
        == 1.0
    )


def test_shutdown_closes_the_endpoint() -> None:
    telemetry = setup_telemetry("booking", metrics_listen="127.0.0.1:0", install_global=False)
    address = telemetry.metrics_address
    assert address is not None

    telemetry.shutdown()
    telemetry.shutdown()

    with pytest.raises(ConnectionRefusedError), socket.create_connection(address, timeout=2):
        pass


def test_without_listen_address_no_endpoint_is_started() -> None:
    telemetry = setup_telemetry("booking", metrics_listen=None, install_global=False)
    try:
        telemetry.metrics.record_rpc(BOOK, "OK", 0.01)
        assert telemetry.metrics_address is None
        assert b"medsched_rpc_requests_total" in telemetry.render_metrics()
    finally:
        telemetry.shutdown()


def test_spans_carry_the_service_resource() -> None:
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(
        "waitlist",
        metrics_listen=None,
        install_global=False,
        span_processors=[SimpleSpanProcessor(exporter)],
    )
    try:
        with telemetry.tracer("waitlist_svc.service").start_as_current_span("match") as span:
            span.set_attribute("app.slot_id", "slot-9")
    finally:
        telemetry.shutdown()

    [finished] = exporter.get_finished_spans()
    assert finished.name == "match"
    assert finished.resource.attributes["service.name"] == "waitlist"
    assert finished.attributes is not None
    assert finished.attributes["app.slot_id"] == "slot-9"


def otlp_exporter_installed() -> bool:
    try:
        return importlib.util.find_spec(_OTLP_EXPORTER_MODULE) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(otlp_exporter_installed(), reason="the OTLP exporter is installed here")
def test_otlp_endpoint_without_exporter_installed_is_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="common.telemetry"):
        telemetry = setup_telemetry(
            "booking", metrics_listen=None, otlp_endpoint="localhost:4317", install_global=False
        )
    telemetry.shutdown()

    assert [r.getMessage() for r in caplog.records if r.name == "common.telemetry"] == [
        "an OTLP endpoint is configured but opentelemetry-exporter-otlp-proto-grpc is not "
        "installed; traces will not be exported"
    ]


def test_occupied_port_is_reported_with_the_address(telemetry: Telemetry) -> None:
    address = telemetry.metrics_address
    assert address is not None

    with pytest.raises(OSError, match=f"metrics_listen '127.0.0.1:{address[1]}'"):
        setup_telemetry("booking", metrics_listen=f"127.0.0.1:{address[1]}", install_global=False)


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        (":9464", ("0.0.0.0", 9464)),
        ("[::1]:0", ("::1", 0)),
        ("metrics.local:80", ("metrics.local", 80)),
    ],
)
def test_listen_addresses_are_parsed(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(listen) == expected


@pytest.mark.parametrize("listen", ["9464", "host:", "host:http", "host:70000", ""])
def test_bad_listen_addresses_are_refused(listen: str) -> None:
    with pytest.raises(ValueError, match="metrics_listen"):
        parse_listen_address(listen)


def test_spans_are_not_recorded_when_nothing_exports_them() -> None:
    telemetry = setup_telemetry("booking", metrics_listen=None, install_global=False)
    try:
        with telemetry.tracer("t").start_as_current_span("call") as span:
            # Not recorded, yet logs and outbound calls still get a real trace id.
            assert not span.is_recording()
            assert span.get_span_context().is_valid
    finally:
        telemetry.shutdown()


def test_spans_are_recorded_when_a_processor_receives_them() -> None:
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(
        "booking",
        metrics_listen=None,
        install_global=False,
        span_processors=[SimpleSpanProcessor(exporter)],
    )
    try:
        with telemetry.tracer("t").start_as_current_span("call") as span:
            assert span.is_recording()
        assert [s.name for s in exporter.get_finished_spans()] == ["call"]
    finally:
        telemetry.shutdown()
