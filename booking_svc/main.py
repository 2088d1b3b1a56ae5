"""Composition root of the booking service: settings, dependencies, gRPC, background work."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from booking_svc.eligibility import GrpcEligibility
from booking_svc.holds import HoldStore
from booking_svc.server import BookingServicer
from booking_svc.service import BookingConfig, BookingService
from booking_svc.store import SCHEMA
from common import grpc_client
from common.errors import DependencyUnavailable
from common.grpc_server import Registration, run
from common.runtime import Needs, Runtime, run_service
from common.settings import Settings
from medsched.booking.v1 import booking_service_pb2, booking_service_pb2_grpc

logger = logging.getLogger(__name__)

SERVICE = "booking"
# Bookings hold a connection only for their own transactions (milliseconds), never while the
# payer answers; 40 covers the brief's peak (15 bookings/s) with room for holds and lists.
NEEDS = Needs(database=True, nats=True, redis=True, outbox_schema=SCHEMA, pool_max_size=40)
BOOKING_SERVICE = booking_service_pb2.DESCRIPTOR.services_by_name["BookingService"].full_name
HOLD_SWEEP_S = 1.0
HOUSEKEEPING_S = 3600.0


class ServiceSlot:
    """Holds the service once the process's dependencies are up."""

    def __init__(self) -> None:
        self.service: BookingService | None = None

    def get(self) -> BookingService:
        if self.service is None:
            raise DependencyUnavailable("the booking service is starting")
        return self.service


def config_from(settings: Settings) -> BookingConfig:
    return BookingConfig(
        budget_s=settings.booking_budget_s,
        verification_max_age=timedelta(days=settings.booking_verification_max_age_days),
        recheck_interval=timedelta(seconds=settings.booking_recheck_interval_s),
    )


async def start_service(runtime: Runtime, slot: ServiceSlot) -> None:
    settings = runtime.settings
    channel = grpc_client.channel(
        settings.address_of("eligibility"),
        tls=settings.tls,
        service_name_override="svc-eligibility" if settings.tls else None,
        tracer_provider=runtime.telemetry.tracer_provider,
    )
    runtime.on_close(lambda: channel.close(None))
    config = config_from(settings)
    service = BookingService(
        pool=runtime.pool,
        holds=HoldStore(runtime.redis),
        eligibility=GrpcEligibility(channel, runtime.principal_signer),
        cipher=runtime.cipher,
        blind_index=runtime.blind_index,
        config=config,
    )
    tasks = [
        asyncio.create_task(_every(HOLD_SWEEP_S, service.sweep_holds, "hold sweep")),
        asyncio.create_task(
            _every(
                min(60.0, config.recheck_interval.total_seconds()),
                service.recheck_pending,
                "eligibility re-check",
            )
        ),
        asyncio.create_task(_every(HOUSEKEEPING_S, service.prune, "idempotency prune")),
    ]

    async def stop() -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    runtime.on_close(stop)
    slot.service = service


async def _every(interval_s: float, work: Callable[[], Awaitable[int]], name: str) -> None:
    while True:
        try:
            await work()
        except Exception as e:
            # Housekeeping: a failed round is retried at the next interval.
            logger.warning("%s failed", name, extra={"error_type": type(e).__name__})
        await asyncio.sleep(interval_s)


def registrations(runtime: Runtime, slot: ServiceSlot) -> list[Registration]:
    return [
        Registration.of(
            booking_service_pb2_grpc.add_BookingServiceServicer_to_server,
            BookingServicer(slot.get, runtime.blind_index),
            BOOKING_SERVICE,
        ),
    ]


def main() -> None:
    settings = Settings.from_env(SERVICE)
    slot = ServiceSlot()
    run(
        run_service(
            settings,
            NEEDS,
            lambda runtime: registrations(runtime, slot),
            on_ready=lambda runtime: start_service(runtime, slot),
        )
    )


if __name__ == "__main__":
    main()
