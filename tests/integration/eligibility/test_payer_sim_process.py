"""The payer simulator as its own process: announces its address, serves health and stats."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import sys
import time

import aiohttp

from deploy.certs import DevPki


async def test_simulator_process_announces_its_address_and_answers_health(pki: DevPki) -> None:
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "eligibility_svc.payer_sim",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(pki.cert("payer-sim")),
        "--tls-key",
        str(pki.key("payer-sim")),
        "--latency-mean-ms",
        "5",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=10)
        announced = json.loads(line)
        assert time.monotonic() - started < 5
        assert announced["event"] == "listening"
        host, _, port = announced["address"].rpartition(":")
        assert host == "127.0.0.1"
        assert int(port) > 0
        assert announced["soap_url"] == f"https://{announced['address']}/core/soap"
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        async with aiohttp.ClientSession() as session:
            async with session.get(announced["healthz_url"], ssl=context) as response:
                assert (response.status, await response.text()) == (200, "ok")
            stats_url = announced["healthz_url"].replace("/healthz", "/stats")
            async with session.get(stats_url, ssl=context) as response:
                assert await response.json() == {
                    "requests": 0,
                    "by_transport": {},
                    "by_outcome": {},
                }
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
