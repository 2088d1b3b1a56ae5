"""Composition root of the availability service: settings, dependencies, gRPC, graceful stop.

Start order (see `common.runtime.run_service`): the gRPC server answers at once with health
NOT_SERVING; the database, NATS and the relay of this schema's outbox come up; `on_ready`
builds the search index from a database snapshot and starts consuming slot events; only then
does health report SERVING. Until the index is built, searches answer UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

from availability_svc.admin_server import admin_registration
from availability_svc.projection import IndexBackend, Projection
from availability_svc.roll_forward import roll_forward_forever
from availability_svc.search_server import SEARCH_SERVICE, search_registration
from availability_svc.search_service import (
    AvailabilityQuery,
    Catalog,
    OfferPage,
    SearchService,
)
from common.errors import DependencyUnavailable
from common.grpc_server import Registration, run
from common.log import configure_logging
from common.runtime import Needs, Runtime, run_service
from common.settings import Settings
from common.workers import run_workers

__all__ = ["SEARCH_SERVICE", "SearchReadModel", "main", "registrations"]

SERVICE = "availability"
SCHEMA = "availability"
# The relay publishes what schedule administration and materialization write to this
# schema's outbox (slot events included); searches need no pool connection of their own.
NEEDS = Needs(database=True, nats=True, outbox_schema=SCHEMA)


class SearchReadModel:
    """This process's search read model: empty until `start` has built it."""

    def __init__(self, roll_forward_interval_s: float = 3600.0) -> None:
        self.projection: Projection | None = None
        self._roll_forward_interval_s = roll_forward_interval_s

    def _built(self) -> Projection:
        projection = self.projection
        if projection is None or not projection.ready:
            raise DependencyUnavailable("the search index is being built; retry shortly")
        return projection

    async def search(self, query: AvailabilityQuery) -> OfferPage:
        return IndexBackend(self._built()).search_now(query)

    def catalog(self) -> Catalog:
        return self._built().catalog()

    def index_time(self) -> datetime | None:
        projection = self.projection
        return None if projection is None else projection.index_time

    async def start(self, runtime: Runtime) -> None:
        """Build the index from a snapshot, then keep it current (stopped at shutdown)."""
        projection = Projection(runtime.pool, runtime.jetstream)
        await projection.build()
        # The index is long-lived: `common.runtime.settle_heap` moves it out of the cycle
        # collector's reach once this hook returns.
        await projection.start()
        runtime.on_close(projection.stop)
        self.projection = projection
        # The daily roll-forward (new horizon days), run here so nothing else must schedule it.
        if self._roll_forward_interval_s <= 0:
            return
        roller = asyncio.create_task(
            roll_forward_forever(runtime.pool, self._roll_forward_interval_s),
            name="roll-forward",
        )

        async def stop_roller() -> None:
            roller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await roller

        runtime.on_close(stop_roller)


def registrations(runtime: Runtime, read_model: SearchReadModel) -> list[Registration]:
    service = SearchService(
        read_model,
        catalog=read_model.catalog,
        clock=lambda: datetime.now(UTC),
        freshness=read_model.index_time,
    )
    return [search_registration(service), admin_registration(runtime)]


def _roll_forward_in_first(index: int) -> dict[str, str]:
    """Worker 0 rolls the horizon forward; the others need not try (one would win the lock)."""
    return {} if index == 0 else {"MEDSCHED_AVAILABILITY_ROLL_FORWARD_INTERVAL_S": "0"}


def main() -> None:
    settings = Settings.from_env(SERVICE)
    if settings.availability_processes > 1:
        # Searches are CPU-bound Python: more processes on one port, each with its index.
        configure_logging(settings.service, settings.log_level)
        raise SystemExit(
            run_workers(
                settings,
                "availability_svc.main",
                settings.availability_processes,
                count_variable="MEDSCHED_AVAILABILITY_PROCESSES",
                per_worker=_roll_forward_in_first,
            )
        )
    read_model = SearchReadModel(settings.availability_roll_forward_interval_s)
    run(
        run_service(
            settings,
            NEEDS,
            lambda runtime: registrations(runtime, read_model),
            on_ready=read_model.start,
        )
    )


if __name__ == "__main__":
    main()
