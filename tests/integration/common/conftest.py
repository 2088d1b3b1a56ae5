"""Fixtures for the data-plane tests: a migrated outbox schema, a pool, NATS and a test stream."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

from common import bus
from common.db import Pool, open_pool
from common.migrations import migrate
from common.outbox import OutboxRelay

SCHEMA = "svc"


@dataclass(frozen=True)
class EventStream:
    """A stream of this test's own, on subjects no other test uses."""

    name: str
    root: str

    def subject(self, aggregate: str, event: str) -> str:
        return f"{self.root}.{aggregate}.{event}"


@pytest.fixture
async def outbox_schema(database_url: str) -> str:
    """Schema `svc` with the shared tables (outbox, inbox) and nothing else."""
    await migrate(database_url, SCHEMA, None)
    return SCHEMA


@pytest.fixture
async def pool(database_url: str, outbox_schema: str) -> AsyncIterator[Pool]:
    db_pool = await open_pool(database_url, min_size=1, max_size=8, name="test")
    try:
        yield db_pool
    finally:
        await db_pool.close()


@pytest.fixture
async def nats_client(nats_url: str) -> AsyncIterator[tuple[NatsClient, JetStreamContext]]:
    client, js = await bus.connect(nats_url, name="test")
    try:
        yield client, js
    finally:
        await client.close()


@pytest.fixture
def js(nats_client: tuple[NatsClient, JetStreamContext]) -> JetStreamContext:
    return nats_client[1]


@pytest.fixture
async def stream(js: JetStreamContext, unique: str) -> AsyncIterator[EventStream]:
    test_stream = EventStream(name=f"T{unique}", root=f"t{unique}")
    await bus.ensure_stream(js, test_stream.name, [f"{test_stream.root}.>"], max_age_s=600)
    try:
        yield test_stream
    finally:
        await js.delete_stream(test_stream.name)


async def wait_for(
    condition: Callable[[], Awaitable[bool]], *, timeout_s: float = 10.0, what: str = "condition"
) -> None:
    """Poll `condition` until it holds; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


async def stream_messages(js: JetStreamContext, stream_name: str) -> list[RawStreamMsg]:
    """Every message stored in the stream, in stream order."""
    info = await js.stream_info(stream_name)
    first, last = info.state.first_seq, info.state.last_seq
    if info.state.messages == 0:
        return []
    return [await js.get_msg(stream_name, seq) for seq in range(first, last + 1)]


async def stream_count(js: JetStreamContext, stream_name: str) -> int:
    return (await js.stream_info(stream_name)).state.messages


@contextlib.asynccontextmanager
async def running(relay: OutboxRelay) -> AsyncIterator[asyncio.Task[None]]:
    """Run `relay` in a task for the duration of the block; stop it and wait for it after."""
    task = asyncio.create_task(relay.run())
    try:
        yield task
    finally:
        await relay.stop()
        if not task.cancelled():
            await asyncio.wait_for(task, timeout=10)
