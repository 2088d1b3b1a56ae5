"""Fixtures for the search read-model tests: a migrated database, a test stream, a seeded world."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from availability_svc.projection import Projection
from common import bus
from common.db import Pool, open_pool
from common.migrations import migrate
from tests.integration.availability.search.world import (
    MIGRATIONS,
    EventStream,
    World,
    make_projection,
)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    await migrate(database_url, "availability", MIGRATIONS)
    db_pool = await open_pool(database_url, min_size=1, max_size=6, name="test-search")
    try:
        yield db_pool
    finally:
        await db_pool.close()


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    client: NatsClient
    client, context = await bus.connect(nats_url, name="test-search")
    try:
        yield context
    finally:
        await client.close()


@pytest.fixture
async def stream(js: JetStreamContext, unique: str) -> AsyncIterator[EventStream]:
    test_stream = EventStream(name=f"S{unique}", root=f"s{unique}")
    await bus.ensure_stream(js, test_stream.name, [f"{test_stream.root}.>"], max_age_s=600)
    try:
        yield test_stream
    finally:
        await js.delete_stream(test_stream.name)


@pytest.fixture
async def world(pool: Pool, js: JetStreamContext, stream: EventStream) -> World:
    seeded = World(pool, js, stream, random.Random(20260305))
    await seeded.seed()
    return seeded


@pytest.fixture
async def projection(
    pool: Pool, js: JetStreamContext, stream: EventStream, world: World
) -> AsyncIterator[Projection]:
    """Built from the seeded world and following the test stream."""
    built = make_projection(pool, js, stream)
    await built.build()
    await built.start()
    try:
        yield built
    finally:
        await built.stop()
