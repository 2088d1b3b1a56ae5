"""OpenTelemetry traces and metrics for a service, with a Prometheus scrape endpoint.

`setup_telemetry` builds the providers once per process in `main.py`; `Telemetry.metrics`
holds the instruments every service shares:

| Prometheus series                       | kind      | labels                  |
|-----------------------------------------|-----------|-------------------------|
| `medsched_rpc_requests_total`           | counter   | service, method, code   |
| `medsched_rpc_duration_seconds`         | histogram | service, method, code   |
| `medsched_outbox_lag_seconds`           | gauge     | service, outbox         |
| `medsched_outbox_pending`               | gauge     | service, outbox         |
| `medsched_consumer_pending`             | gauge     | service, stream, consumer |
| `medsched_db_pool_size` / `_in_use` / `_waiting` | gauge | service, pool      |

Gauges are observed when Prometheus scrapes: modules plug in a callback with
`Metrics.register_gauge` (or the `observe_*` helpers) and get a registration to cancel when
they stop. Labels carry ids and names of things, never PHI.
"""

from __future__ import annotations

import importlib
import logging
import socket
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

logger = logging.getLogger(__name__)

METER_NAME = "medsched"
OUTBOX_LAG = "medsched.outbox.lag"
OUTBOX_PENDING = "medsched.outbox.pending"
CONSUMER_PENDING = "medsched.consumer.pending"
DB_POOL_SIZE = "medsched.db.pool.size"
DB_POOL_IN_USE = "medsched.db.pool.in_use"
DB_POOL_WAITING = "medsched.db.pool.waiting"

# Seconds. Dense below 100 ms where search lives, reaching the 2 s booking budget and beyond.
RPC_DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
)

_OTLP_EXPORTER_MODULE = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"
# How often the scrape server's loop checks for shutdown; bounds how long `shutdown()` waits.
_SERVER_POLL_INTERVAL_S = 0.05

GaugeCallback = Callable[[], Iterable[Observation]]


@dataclass(frozen=True)
class PoolUsage:
    """A connection pool's state at one moment."""

    size: int
    in_use: int
    waiting: int


class GaugeRegistration:
    """Handle returned by `Metrics.register_gauge`; `cancel()` stops the observations."""

    def __init__(self, cancels: Sequence[Callable[[], None]]) -> None:
        self._cancels = tuple(cancels)

    def cancel(self) -> None:
        for cancel in self._cancels:
            cancel()


class _Gauge:
    """One observable gauge fed by any number of registered callbacks.

    An OpenTelemetry observable instrument takes its callbacks when it is created; this
    indirection lets modules that start later (an outbox relay, a consumer) add theirs.
    Callbacks run on the scrape thread, hence the lock around the list.
    """

    def __init__(self, meter: Meter, name: str, description: str, unit: str, service: str) -> None:
        self.description = description
        self.unit = unit
        self._name = name
        self._service = service
        self._lock = threading.Lock()
        self._callbacks: list[GaugeCallback] = []
        meter.create_observable_gauge(
            name, callbacks=[self._observe], unit=unit, description=description
        )

    def add(self, callback: GaugeCallback) -> Callable[[], None]:
        with self._lock:
            self._callbacks.append(callback)

        def cancel() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return cancel

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            callbacks = list(self._callbacks)
        observations: list[Observation] = []
        for callback in callbacks:
            # One failing source must not hide the others' series from the scrape.
            try:
                observed = list(callback())
            except Exception:
                logger.exception("gauge callback failed", extra={"metric": self._name})
                continue
            observations += [
                Observation(o.value, {"service": self._service, **(o.attributes or {})})
                for o in observed
            ]
        return observations


class RpcStats:
    """RPC counts and latency histograms per (method, code), kept in plain Python.

    Recorded on every call. The OpenTelemetry SDK's counter and histogram cost about 20 us
    per call between them (they validate and hash the attributes on every measurement),
    which was several percent of a search's CPU; this costs about 1 us. Prometheus reads it
    through the same registry and sees the same series as before: `medsched_rpc_requests_total`
    and the `medsched_rpc_duration_seconds` histogram, labelled service, method and code.
    """

    def __init__(self, service: str, bounds: Sequence[float] = RPC_DURATION_BUCKETS) -> None:
        self._service = service
        self._bounds = tuple(bounds)
        self._labels = ["service", "method", "code"]
        self._le = [repr(float(b)) for b in self._bounds] + ["+Inf"]  # 0.005, 1.0, ...
        # (method, code) -> [count, sum of seconds, count per bucket (the last is +Inf)]
        self._rows: dict[tuple[str, str], list[float]] = {}
        # The scrape runs on the endpoint's thread, calls on the event loop's.
        self._lock = threading.Lock()

    def record(self, method: str, code: str, seconds: float) -> None:
        slot = 2 + bisect_left(self._bounds, seconds)  # buckets are upper-inclusive (`le`)
        key = (method, code)
        with self._lock:
            row = self._rows.get(key)
            if row is None:
                row = self._rows[key] = [0.0] * (3 + len(self._bounds))
            row[0] += 1
            row[1] += seconds
            row[slot] += 1

    def collect(self) -> Iterable[Metric]:
        """The two metric families (prometheus_client's collector protocol)."""
        with self._lock:
            rows = {key: list(row) for key, row in self._rows.items()}
        requests = CounterMetricFamily(
            "medsched_rpc_requests",
            "RPCs handled, by method and status code",
            labels=self._labels,
        )
        duration = HistogramMetricFamily(
            "medsched_rpc_duration_seconds",
            "RPC handling time, by method and status code",
            labels=self._labels,
            unit="seconds",
        )
        for (method, code), row in sorted(rows.items()):
            values = [self._service, method, code]
            requests.add_metric(values, row[0])
            cumulative = 0.0
            buckets = []
            for le, count in zip(self._le, row[2:], strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            duration.add_metric(values, buckets, sum_value=row[1])
        return [requests, duration]


class Metrics:
    """The instruments every service records: RPCs, outbox, consumers, database pool."""

    def __init__(self, meter: Meter, service: str) -> None:
        self._meter = meter
        self._service = service
        self._gauges: dict[str, _Gauge] = {}
        self._gauges_lock = threading.Lock()
        self.rpc_stats = RpcStats(service)
        """What `record_rpc` adds to; its owner registers it with the scrape registry."""

    def record_rpc(self, method: str, code: str, duration_s: float) -> None:
        """Count one handled RPC (`method` as `/package.Service/Method`, `code` as `OK` etc.)."""
        self.rpc_stats.record(method, code, duration_s)

    def register_gauge(
        self, name: str, description: str, unit: str, callback: GaugeCallback
    ) -> GaugeRegistration:
        """Add `callback` as a source of observations for gauge `name` (created on first use).

        The callback runs on the scrape thread: it must return quickly from state the owner
        keeps current (no I/O, no event loop calls). Each observation gets the `service` label.
        """
        with self._gauges_lock:
            gauge = self._gauges.get(name)
            if gauge is None:
                gauge = _Gauge(self._meter, name, description, unit, self._service)
                self._gauges[name] = gauge
            elif (gauge.description, gauge.unit) != (description, unit):
                raise ValueError(
                    f"gauge {name!r} already exists with unit {gauge.unit!r} and a "
                    "different description or unit"
                )
        return GaugeRegistration([gauge.add(callback)])

    def observe_outbox_lag(
        self, outbox: str, lag_seconds: Callable[[], float | None]
    ) -> GaugeRegistration:
        """Age in seconds of the oldest unpublished outbox row (None: nothing known yet)."""
        return self.register_gauge(
            OUTBOX_LAG,
            "Age of the oldest unpublished outbox event",
            "s",
            _single(lag_seconds, {"outbox": outbox}),
        )

    def observe_outbox_pending(
        self, outbox: str, pending_rows: Callable[[], int | None]
    ) -> GaugeRegistration:
        """Number of outbox rows not yet published."""
        return self.register_gauge(
            OUTBOX_PENDING,
            "Outbox events not yet published",
            "{row}",
            _single(pending_rows, {"outbox": outbox}),
        )

    def observe_consumer_lag(
        self, stream: str, consumer: str, pending_messages: Callable[[], int | None]
    ) -> GaugeRegistration:
        """Messages in `stream` not yet acknowledged by durable `consumer`."""
        return self.register_gauge(
            CONSUMER_PENDING,
            "Messages waiting for a durable consumer",
            "{message}",
            _single(pending_messages, {"stream": stream, "consumer": consumer}),
        )

    def observe_db_pool(
        self, pool: str, usage: Callable[[], PoolUsage | None]
    ) -> GaugeRegistration:
        """Connection pool size, connections in use and requests waiting for one."""
        labels = {"pool": pool}
        registrations = [
            self.register_gauge(
                DB_POOL_SIZE,
                "Connections held by the pool",
                "{connection}",
                _single(lambda: _field(usage(), "size"), labels),
            ),
            self.register_gauge(
                DB_POOL_IN_USE,
                "Pool connections lent out",
                "{connection}",
                _single(lambda: _field(usage(), "in_use"), labels),
            ),
            self.register_gauge(
                DB_POOL_WAITING,
                "Requests waiting for a pool connection",
                "{request}",
                _single(lambda: _field(usage(), "waiting"), labels),
            ),
        ]
        return GaugeRegistration([registration.cancel for registration in registrations])


def _field(usage: PoolUsage | None, name: str) -> int | None:
    return None if usage is None else int(getattr(usage, name))


def _single(value: Callable[[], float | None], labels: Mapping[str, str]) -> GaugeCallback:
    """A gauge callback observing one value with fixed labels, or nothing when it is None."""

    def observe() -> Iterable[Observation]:
        current = value()
        return [] if current is None else [Observation(current, dict(labels))]

    return observe


def parse_listen_address(listen: str) -> tuple[str, int]:
    """(host, port) from `host:port`, `[ipv6]:port` or `:port` (all interfaces)."""
    host, separator, port_text = listen.rpartition(":")
    if not separator or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"metrics_listen {listen!r} must be host:port with a port 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    # An empty host means every interface, as for other listeners.
    return host or "0.0.0.0", int(port_text)  # noqa: S104


class _MetricsServer(ThreadingMixIn, WSGIServer):
    """The scrape endpoint's HTTP server: a thread per request, none outliving the process."""

    daemon_threads = True


class _MetricsServer6(_MetricsServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    """Request handler that does not write access lines to stderr.

    wsgiref prints one plain-text line per request, which would break the JSON log stream
    (and every scrape would add noise to it).
    """

    def log_message(self, format: str, *args: Any) -> None:
        return


def _serve_metrics(
    registry: CollectorRegistry, host: str, port: int
) -> tuple[_MetricsServer, threading.Thread]:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = _MetricsServer6 if family == socket.AF_INET6 else _MetricsServer
    httpd = make_server(
        host, port, make_wsgi_app(registry), server_class=server_class, handler_class=_QuietHandler
    )
    thread = threading.Thread(
        target=httpd.serve_forever,
        kwargs={"poll_interval": _SERVER_POLL_INTERVAL_S},
        name="metrics-http",
        daemon=True,
    )
    thread.start()
    return httpd, thread


class Telemetry:
    """The process's tracer and meter providers, metrics and scrape endpoint."""

    def __init__(
        self,
        service: str,
        tracer_provider: TracerProvider,
        meter_provider: MeterProvider,
        registry: CollectorRegistry,
        server: tuple[_MetricsServer, threading.Thread] | None,
    ) -> None:
        self.service = service
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.metrics = Metrics(meter_provider.get_meter(METER_NAME), service)
        registry.register(self.metrics.rpc_stats)
        self._registry = registry
        self._server = server
        self._closed = False

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """The bound (host, port) of the scrape endpoint, with the real port when 0 was asked."""
        if self._server is None:
            return None
        httpd = self._server[0]
        return str(httpd.server_address[0]), httpd.server_port

    def tracer(self, name: str) -> Tracer:
        return self.tracer_provider.get_tracer(name)

    def render_metrics(self) -> bytes:
        """The Prometheus text exposition of every metric, as the endpoint serves it."""
        return generate_latest(self._registry)

    def shutdown(self) -> None:
        """Stop the endpoint, flush spans and release the providers (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            httpd, thread = self._server
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()


def _otlp_span_processor(endpoint: str) -> SpanProcessor | None:
    """A batch processor exporting to `endpoint`, or None when the exporter isn't installed.

    The OTLP exporter is an optional dependency: deployments that collect traces install
    `opentelemetry-exporter-otlp-proto-grpc`; everyone else should not carry it.
    """
    try:
        module = importlib.import_module(_OTLP_EXPORTER_MODULE)
    except ImportError:
        logger.warning(
            "an OTLP endpoint is configured but opentelemetry-exporter-otlp-proto-grpc is "
            "not installed; traces will not be exported"
        )
        return None
    return BatchSpanProcessor(module.OTLPSpanExporter(endpoint=endpoint))


def setup_telemetry(
    service: str,
    *,
    metrics_listen: str | None,
    otlp_endpoint: str | None = None,
    install_global: bool = True,
    span_processors: Sequence[SpanProcessor] = (),
) -> Telemetry:
    """Build tracing and metrics for `service`; serve `/metrics` on `metrics_listen` if given.

    With `install_global` the providers become OpenTelemetry's process-wide ones, which
    instrumentation libraries and `opentelemetry.trace.get_tracer` use; OpenTelemetry accepts
    that only once per process, so `main.py` passes True and tests pass False.
    """
    if not service:
        raise ValueError("service must not be empty")
    address = parse_listen_address(metrics_listen) if metrics_listen is not None else None
    resource = Resource.create({"service.name": service})

    processors = list(span_processors)
    if otlp_endpoint:
        otlp = _otlp_span_processor(otlp_endpoint)
        if otlp is not None:
            processors.append(otlp)
    # With nowhere to send spans, recording them is pure cost on every call (measured at
    # 10-20% of a search's CPU). Root spans are then not sampled: they still get trace ids,
    # which logs carry and which propagate, and a caller's sampled trace is still honoured.
    sampler = ParentBased(root=ALWAYS_ON if processors else ALWAYS_OFF)
    tracer_provider = TracerProvider(resource=resource, sampler=sampler)
    for processor in processors:
        tracer_provider.add_span_processor(processor)

    # A registry of our own, not prometheus_client's global one, so several Telemetry
    # objects (tests, or two services in one process) never collide.
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry, scope_info_enabled=False)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])

    server = None
    if address is not None:
        try:
            server = _serve_metrics(registry, *address)
        except OSError as e:
            meter_provider.shutdown()
            tracer_provider.shutdown()
            raise OSError(e.errno, f"metrics_listen {metrics_listen!r}: {e.strerror}") from e

    if install_global:
        otel_trace.set_tracer_provider(tracer_provider)
        otel_metrics.set_meter_provider(meter_provider)
    return Telemetry(service, tracer_provider, meter_provider, registry, server)
