"""Composition root of the eligibility service: settings, dependencies, gRPC, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from common.errors import DependencyUnavailable
from common.grpc_server import Registration, run
from common.runtime import Needs, Runtime, run_service
from common.settings import Settings
from eligibility_svc.cache import EligibilityCache
from eligibility_svc.config import EligibilityConfig
from eligibility_svc.core_client import ClearinghouseClient
from eligibility_svc.routing import RoutingTable, load_routing_table
from eligibility_svc.server import EligibilityServicer
from eligibility_svc.service import EligibilityService
from eligibility_svc.store import SCHEMA
from medsched.eligibility.v1 import eligibility_service_pb2, eligibility_service_pb2_grpc

logger = logging.getLogger(__name__)

SERVICE = "eligibility"
NEEDS = Needs(database=True, nats=True, redis=True, outbox_schema=SCHEMA)
ELIGIBILITY_SERVICE = eligibility_service_pb2.DESCRIPTOR.services_by_name[
    "EligibilityService"
].full_name


class ServiceSlot:
    """Holds the service once the process's dependencies are up."""

    def __init__(self) -> None:
        self.service: EligibilityService | None = None

    def get(self) -> EligibilityService:
        if self.service is None:
            raise DependencyUnavailable("the eligibility service is starting")
        return self.service


def registrations(slot: ServiceSlot) -> list[Registration]:
    return [
        Registration.of(
            eligibility_service_pb2_grpc.add_EligibilityServiceServicer_to_server,
            EligibilityServicer(slot.get),
            ELIGIBILITY_SERVICE,
        ),
    ]


def load_routes(config: EligibilityConfig) -> RoutingTable:
    if config.routing_table_path is None:
        logger.warning("no payer routing table configured: every check will answer ERROR")
        return RoutingTable()
    return load_routing_table(config.routing_table_path)


async def start_service(runtime: Runtime, slot: ServiceSlot, config: EligibilityConfig) -> None:
    """Build the service on the opened dependencies; register its stop; start the sweeper."""
    client = ClearinghouseClient(config.client)
    await client.start()
    runtime.on_close(client.close)
    service = EligibilityService(
        pool=runtime.pool,
        cache=EligibilityCache(runtime.redis, runtime.cipher, runtime.blind_index),
        cipher=runtime.cipher,
        blind_index=runtime.blind_index,
        client=client,
        routes=load_routes(config),
        config=config,
    )
    sweeper = asyncio.create_task(_sweep_forever(service, config.sweep_interval_s))

    async def stop() -> None:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await service.close(grace_s=runtime.settings.shutdown_grace_s)

    runtime.on_close(stop)
    slot.service = service


async def _sweep_forever(service: EligibilityService, interval_s: float) -> None:
    while True:
        try:
            await service.sweep()
        except Exception as e:
            # The sweep is housekeeping: a failed round is retried at the next interval.
            logger.warning("eligibility sweep failed", extra={"error_type": type(e).__name__})
        await asyncio.sleep(interval_s)


def main() -> None:
    settings = Settings.from_env(SERVICE)
    config = EligibilityConfig(
        routing_table_path=Path(settings.eligibility_routes)
        if settings.eligibility_routes
        else None,
        cache_ttl_s=settings.eligibility_cache_ttl_s,
        payer_timeout_s=settings.eligibility_payer_timeout_s,
        max_flights=settings.eligibility_max_flights,
    )
    slot = ServiceSlot()
    run(
        run_service(
            settings,
            NEEDS,
            lambda runtime: registrations(slot),
            on_ready=lambda runtime: start_service(runtime, slot, config),
        )
    )


if __name__ == "__main__":
    main()
