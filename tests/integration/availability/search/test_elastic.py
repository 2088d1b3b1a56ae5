"""Conformance of the Elasticsearch backend with the PostgreSQL reference query.

Runs only against a real cluster named by MEDSCHED_TEST_ELASTICSEARCH_URL (none runs here):
the same random searches as the index's conformance test, minus visit types that need rooms
or equipment (which the Elasticsearch backend refuses, see `availability_svc/elastic.py`).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings

from availability_svc.elastic import ElasticBackend
from availability_svc.reference_sql import ReferenceSqlBackend
from availability_svc.search_service import AvailabilityQuery
from availability_svc.verify import compare_pages
from common.db import Pool
from tests.integration.availability.search.world import (
    FIXED_NOW,
    GRANULE,
    World,
    domain_of,
    queries,
)

ELASTICSEARCH_URL = os.environ.get("MEDSCHED_TEST_ELASTICSEARCH_URL", "")

pytestmark = pytest.mark.skipif(
    not ELASTICSEARCH_URL,
    reason="MEDSCHED_TEST_ELASTICSEARCH_URL is not set: no Elasticsearch cluster to test against",
)


@pytest.fixture
async def elastic(pool: Pool, world: World) -> AsyncIterator[ElasticBackend]:
    from elasticsearch import AsyncElasticsearch

    client = AsyncElasticsearch(ELASTICSEARCH_URL, request_timeout=30)
    backend = ElasticBackend(client, pool, index=f"medsched-test-{uuid.uuid4().hex[:10]}")
    try:
        await backend.rebuild(
            world.organization_id, FIXED_NOW - timedelta(days=2), FIXED_NOW + timedelta(days=10)
        )
        yield backend
    finally:
        await client.options(ignore_status=404).indices.delete(index=backend.index)
        await client.close()


async def test_elasticsearch_answers_like_sql(
    elastic: ElasticBackend, pool: Pool, world: World
) -> None:
    # A change after the rebuild, applied the way a slot-event consumer would.
    rows = await world.rows("OPEN", 1)
    provider, start, _ = rows[0]
    await world.block(provider, [start, start + GRANULE])
    await elastic.sync_provider(world.organization_id, provider, start, start + GRANULE * 2)

    domain = await domain_of(pool, world)
    loop = asyncio.get_running_loop()
    reference = ReferenceSqlBackend(pool)
    needs_rooms = {world.visit_types[1], world.visit_types[2], world.visit_types[3]}

    @settings(
        max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(query=queries(domain))
    def agree(query: AvailabilityQuery) -> None:
        if query.visit_type_id in needs_rooms:
            return
        comparison = asyncio.run_coroutine_threadsafe(
            compare_pages(elastic, reference, query, 3), loop
        ).result(timeout=60)
        assert comparison.mismatch is None, comparison.mismatch.describe()

    await asyncio.to_thread(agree)
