"""The life of a service process: the wiring every `<service>/main.py` shares, in one place.

`run_service` does, in order:

1. logging and telemetry (metrics endpoint, tracer provider);
2. the gRPC server with the service's registrations, started at once so orchestrators can
   probe it: health answers NOT_SERVING while dependencies come up (a process sharing its
   port with others, `MEDSCHED_GRPC_REUSE_PORT`, starts it after step 3 instead);
3. the dependencies the service declared: PostgreSQL pool, NATS + the MEDSCHED stream,
   Redis, the outbox relay of its schema; plus PHI crypto and the principal verifier;
4. health SERVING; serve until SIGTERM; drain; close everything in reverse order.

Servicers get the `Runtime` when they are built and reach the dependencies through it at call
time; before they are up, `Runtime.pool` (etc.) raises `DependencyUnavailable`, which callers
see as UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
import redis.asyncio as aioredis
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from common import bus, db
from common.auth import PrincipalSigner
from common.crypto import BlindIndex, FieldCipher, KeyRing
from common.errors import DependencyUnavailable
from common.grpc_server import Registration, ServerHandle, create_server, serve
from common.log import configure_logging
from common.outbox import OutboxRelay
from common.settings import Settings
from common.telemetry import GaugeRegistration, PoolUsage, Telemetry, setup_telemetry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Needs:
    """Which dependencies a service opens before it declares itself ready."""

    database: bool = True
    nats: bool = True
    redis: bool = False
    outbox_schema: str = ""
    """Schema whose outbox this process relays to JetStream ("" = produces no events)."""
    pool_max_size: int = 10


@dataclass
class Runtime:
    """A service process's shared dependencies, opened by `run_service`."""

    settings: Settings
    telemetry: Telemetry
    cipher: FieldCipher
    blind_index: BlindIndex
    principal_signer: PrincipalSigner
    _pool: db.Pool | None = None
    _nats: NatsClient | None = None
    _js: JetStreamContext | None = None
    _redis: aioredis.Redis | None = None
    relay: OutboxRelay | None = None
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _gauges: list[GaugeRegistration] = field(default_factory=list)

    @property
    def pool(self) -> db.Pool:
        if self._pool is None:
            raise DependencyUnavailable("the database is not connected yet")
        return self._pool

    @property
    def jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise DependencyUnavailable("the event bus is not connected yet")
        return self._js

    @property
    def nats(self) -> NatsClient:
        if self._nats is None:
            raise DependencyUnavailable("the event bus is not connected yet")
        return self._nats

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise DependencyUnavailable("the cache is not connected yet")
        return self._redis

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run `closer` at shutdown (in reverse order of registration)."""
        self._closers.append(closer)


def build_runtime(settings: Settings, telemetry: Telemetry) -> Runtime:
    keyring = KeyRing.parse(settings.encryption_keys, settings.encryption_active_key)
    return Runtime(
        settings=settings,
        telemetry=telemetry,
        cipher=FieldCipher(keyring),
        blind_index=BlindIndex(settings.hash_key),
        principal_signer=PrincipalSigner(settings.principal_key),
    )


async def open_dependencies(runtime: Runtime, needs: Needs) -> None:
    """Open what `needs` asks for; each opened piece registers how to close itself."""
    settings = runtime.settings
    metrics = runtime.telemetry.metrics
    if needs.database:
        pool = await db.open_pool(
            settings.database_url, max_size=needs.pool_max_size, name=f"medsched-{settings.service}"
        )
        runtime._pool = pool
        runtime.on_close(pool.close)

        def usage() -> PoolUsage:
            stats = db.pool_stats(pool)
            return PoolUsage(size=stats.size, in_use=stats.in_use, waiting=stats.waiting)

        runtime._gauges.append(metrics.observe_db_pool(settings.service, usage))
    if needs.nats:
        client, js = await bus.connect(settings.nats_url, name=f"medsched-{settings.service}")
        runtime._nats, runtime._js = client, js
        runtime.on_close(lambda: bus.close(client))
        await bus.ensure_stream(js)
    if needs.redis:
        redis = aioredis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        try:
            await redis.ping()
        except (OSError, aioredis.RedisError) as e:
            raise DependencyUnavailable("Redis could not be reached") from e
        runtime._redis = redis
        runtime.on_close(redis.aclose)
    if needs.outbox_schema:
        await _start_relay(runtime, needs.outbox_schema)


async def _start_relay(runtime: Runtime, schema: str) -> None:
    relay = OutboxRelay(
        runtime.settings.database_url,
        schema,
        runtime.jetstream,
        name=f"medsched-{runtime.settings.service}-relay",
    )
    runtime.relay = relay
    task = asyncio.create_task(relay.run(), name=f"outbox-relay-{schema}")
    latest_lag: list[float | None] = [None]
    latest_pending: list[int | None] = [None]

    async def sample_lag() -> None:
        # Gauges are read from the scrape thread; the numbers come from the database, so a
        # task refreshes them here and the callbacks only read the last sample.
        while not task.done():
            with contextlib.suppress(Exception):
                lag = await relay.lag()
                latest_lag[0], latest_pending[0] = lag.oldest_age_s, lag.pending
            await asyncio.sleep(5)

    sampler = asyncio.create_task(sample_lag(), name=f"outbox-lag-{schema}")
    metrics = runtime.telemetry.metrics
    runtime._gauges.append(metrics.observe_outbox_lag(schema, lambda: latest_lag[0]))
    runtime._gauges.append(metrics.observe_outbox_pending(schema, lambda: latest_pending[0]))

    async def stop_relay() -> None:
        await relay.stop()
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        try:
            await asyncio.wait_for(task, timeout=10)
        except TimeoutError:
            task.cancel()

    runtime.on_close(stop_relay)


async def close_runtime(runtime: Runtime) -> None:
    for registration in runtime._gauges:
        registration.cancel()
    runtime._gauges.clear()
    while runtime._closers:
        closer = runtime._closers.pop()
        try:
            await closer()
        except Exception as e:  # a failing closer must not keep the rest open
            logger.warning(
                "error while closing a dependency", extra={"error_type": type(e).__name__}
            )


# Allocations between young-generation collections once a service is serving (CPython's
# default is 700). A gRPC call allocates a few hundred tracked objects, almost all freed by
# reference counting when it ends; at the default a young collection runs every call or two
# and scans every call in flight. One A/B pair on the availability search at saturation (a
# noisy machine): 1,110 -> 974 us per search, 552 -> 513 us per no-op call. Cycles still get
# collected, just in larger batches.
YOUNG_COLLECTION_THRESHOLD = 50_000


def settle_heap() -> None:
    """Tune the cycle collector for serving, once start-up has built its long-lived objects.

    What start-up built (indexes, caches, reference data, modules) is moved out of the
    collector's reach (`gc.freeze`), so older-generation collections stop walking it (at
    the availability index's size that took tens of milliseconds, stalling every call in
    flight); young collections then run every `YOUNG_COLLECTION_THRESHOLD` allocations.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)


ServicerFactory = Callable[[Runtime], Sequence[Registration]]
StartHook = Callable[[Runtime], Awaitable[None]]


async def run_service(
    settings: Settings,
    needs: Needs,
    servicers: ServicerFactory,
    *,
    on_ready: StartHook | None = None,
) -> None:
    """Run one service process until SIGTERM (see the module docstring for the order)."""
    configure_logging(settings.service, settings.log_level)
    telemetry = setup_telemetry(
        settings.service,
        metrics_listen=settings.metrics_listen or None,
        otlp_endpoint=settings.otlp_endpoint or None,
    )
    runtime = build_runtime(settings, telemetry)

    async def start_server() -> ServerHandle:
        handle = await create_server(
            service_name=settings.service,
            listen=settings.grpc_listen,
            tls=settings.tls,
            servicers=servicers(runtime),
            principal_verifier=runtime.principal_signer,
            on_rpc=lambda method, code, seconds: telemetry.metrics.record_rpc(
                method, _code_name(code), seconds
            ),
            tracer_provider=telemetry.tracer_provider,
            reuse_port=settings.grpc_reuse_port,
        )
        await handle.start()
        return handle

    # A process that shares its port with others (`common.workers`) binds it only once it is
    # ready: bound while still starting, it would take its share of new connections and answer
    # them UNAVAILABLE (an index still being built) while the others could serve them.
    late_bind = settings.grpc_reuse_port
    handle: ServerHandle | None = None
    try:
        if not late_bind:
            handle = await start_server()
        await open_dependencies(runtime, needs)
        if on_ready is not None:
            await on_ready(runtime)
        if handle is None:
            handle = await start_server()
        settle_heap()
        await handle.set_serving()
        logger.info("service ready", extra={"service": settings.service, "port": handle.port})
        await serve(handle, grace_s=settings.shutdown_grace_s)
    finally:
        if handle is not None:
            await handle.server.stop(0)
        await close_runtime(runtime)
        telemetry.shutdown()


def _code_name(code: grpc.StatusCode) -> str:
    return str(code.name)
