"""The simulated payer's HTTPS server: CAQH CORE SOAP and MIME endpoints over the roster rules.

    POST /core/soap   SOAP 1.2 envelope, WS-Security UsernameToken
    POST /core/mime   multipart/form-data with the CORE fields, UserName and Password
    GET  /healthz     200 "ok"
    GET  /stats       request counts as JSON (no member data)

Each request: authenticate, check the envelope, parse the 270 with our codec, decide with
`roster.decide`, wait the simulated latency, answer. Latency is lognormal around a mean (a
long tail, like real payers) from a seeded generator, unless a member fixes its own. Fractions
of requests can be turned into timeouts, 503s or garbage regardless of the member.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import random
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import MultipartWriter, web

from eligibility_svc.core_envelope import (
    PAYLOAD_TYPE_270,
    PAYLOAD_TYPE_271,
    SUCCESS,
    UNAUTHORIZED,
    CoreMessage,
    Credentials,
    EnvelopeError,
    SoapFault,
    mime_response_fields,
    new_payload_id,
    parse_soap_request,
    request_from_fields,
    request_problems,
    soap_fault,
    soap_response,
    timestamp,
)
from eligibility_svc.payer_sim.roster import Behavior, Decision, Roster, builtin_roster, decide
from eligibility_svc.x12 import X12Error, build_271, interchange_for, parse_270

logger = logging.getLogger(__name__)

SOAP_PATH = "/core/soap"
MIME_PATH = "/core/mime"
SOAP_RESPONSE_TYPE = "application/soap+xml; charset=UTF-8"
# No real-time answer is allowed to take longer than CORE's 20 seconds.
MAX_LATENCY_S = 20.0
# "Never answers": far beyond any client's deadline, yet finite so a stuck test ends.
HANG_S = 600.0
MAX_REQUEST_BYTES = 256 * 1024
# The development stack's agreed credentials; real deployments pass their own.
DEV_CREDENTIALS = Credentials("medsched", "medsched-dev-password")


@dataclass(frozen=True)
class SimulatorConfig:
    """Behaviour of the simulated payer."""

    credentials: Credentials = field(default_factory=lambda: DEV_CREDENTIALS)
    roster: Roster = field(default_factory=lambda: Roster.of(builtin_roster()))
    latency_mean_s: float = 1.5
    latency_sigma: float = 0.6
    """Lognormal shape: 0.6 puts the 99th percentile near 3.4 times the mean."""
    seed: int = 0
    timeout_fraction: float = 0.0
    unavailable_fraction: float = 0.0
    garbage_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.latency_mean_s < 0 or self.latency_sigma < 0:
            raise ValueError("latency mean and sigma must not be negative")
        for name in ("timeout_fraction", "unavailable_fraction", "garbage_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")


@dataclass
class Stats:
    """What the simulator has seen; tests count payer calls with it."""

    requests: int = 0
    by_transport: Counter[str] = field(default_factory=Counter)
    by_outcome: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "by_transport": dict(self.by_transport),
            "by_outcome": dict(self.by_outcome),
        }


class LatencyModel:
    """Lognormal delays with a given mean, capped at the CORE limit, from a seeded generator."""

    def __init__(self, mean_s: float, sigma: float, rng: random.Random) -> None:
        self._mean = mean_s
        self._sigma = sigma
        self._rng = rng
        # For a lognormal, mean = exp(mu + sigma^2 / 2).
        self._mu = math.log(mean_s) - sigma * sigma / 2 if mean_s > 0 else 0.0

    def sample(self) -> float:
        if self._mean == 0:
            return 0.0
        return min(MAX_LATENCY_S, self._rng.lognormvariate(self._mu, self._sigma))


class PayerSimulator:
    """The aiohttp application and its runner; `start()` binds and returns the address."""

    def __init__(
        self, config: SimulatorConfig, *, now: Callable[[], datetime] | None = None
    ) -> None:
        self.config = config
        self.stats = Stats()
        self._rng = random.Random(config.seed)
        self._latency = LatencyModel(config.latency_mean_s, config.latency_sigma, self._rng)
        self._now = now or (lambda: datetime.now(UTC))
        self._control = self._rng.randrange(1, 900_000_000)
        self._runner: web.AppRunner | None = None
        self.host = ""
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_post(SOAP_PATH, self._soap)
        app.router.add_post(MIME_PATH, self._mime)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/stats", self._stats)
        return app

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext) -> str:
        """Listen on `host:port` (0: a free port) over TLS; return `host:port` bound."""
        # handler_cancellation: a client that hangs up stops its request's (possibly endless)
        # simulated wait instead of leaving it running until the server stops.
        runner = web.AppRunner(
            self.app(), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        sock = socket.create_server((host, port), reuse_port=False)
        try:
            site = web.SockSite(runner, sock, ssl_context=ssl_context)
            await site.start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        self.host, self.port = host, int(sock.getsockname()[1])
        return f"{self.host}:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def reset_stats(self) -> None:
        self.stats = Stats()

    # -- handlers

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.as_dict())

    async def _soap(self, request: web.Request) -> web.StreamResponse:
        self._count("soap")
        try:
            message, credentials = parse_soap_request(await request.read())
        except EnvelopeError as e:
            self.stats.by_outcome["malformed"] += 1
            fault = SoapFault("Sender", f"malformed request: {e}")
            return _soap_reply(soap_fault(fault), 400)
        if not self._authenticated(credentials):
            self.stats.by_outcome["unauthorized"] += 1
            fault = SoapFault("Sender", "authentication failed", "wsse:FailedAuthentication")
            return _soap_reply(soap_fault(fault), 401)
        return await self._answer(message, _SoapWriter())

    async def _mime(self, request: web.Request) -> web.StreamResponse:
        self._count("mime")
        if not request.content_type.startswith("multipart/"):
            self.stats.by_outcome["malformed"] += 1
            return web.Response(status=400, text="multipart/form-data expected")
        form = await request.post()
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        message, credentials = request_from_fields(values)
        if not self._authenticated(credentials):
            self.stats.by_outcome["unauthorized"] += 1
            return _MimeWriter().error(message, UNAUTHORIZED, "authentication failed", 401)
        return await self._answer(message, _MimeWriter())

    def _count(self, transport: str) -> None:
        self.stats.requests += 1
        self.stats.by_transport[transport] += 1

    def _authenticated(self, credentials: Credentials | None) -> bool:
        if credentials is None:
            return False
        expected = self.config.credentials
        # Both compared in constant time, and both always compared.
        user_ok = hmac.compare_digest(credentials.username.encode(), expected.username.encode())
        password_ok = hmac.compare_digest(credentials.password.encode(), expected.password.encode())
        return user_ok and password_ok

    async def _answer(self, message: CoreMessage, writer: _Writer) -> web.StreamResponse:
        problem = request_problems(message, expected_payload=PAYLOAD_TYPE_270)
        if problem is not None:
            self.stats.by_outcome["envelope_error"] += 1
            return writer.error(message, problem[0], problem[1], 400)
        forced = self._forced_behavior()
        try:
            interchange = parse_270(message.payload)
        except X12Error as e:
            self.stats.by_outcome["bad_270"] += 1
            return writer.error(message, "PayloadIllegal", f"the 270 is invalid: {e.message}", 400)
        inquiries = interchange.transactions
        if len(inquiries) != 1:
            self.stats.by_outcome["bad_270"] += 1
            return writer.error(message, "PayloadIllegal", "one 270 transaction expected", 400)
        decision = decide(inquiries[0], self.config.roster, self._now())
        behavior = forced or decision.behavior
        delay = decision.latency_s if decision.latency_s is not None else self._latency.sample()
        self.stats.by_outcome[behavior.value] += 1
        if behavior is Behavior.TIMEOUT:
            await asyncio.sleep(HANG_S)
        await asyncio.sleep(delay)
        if behavior is Behavior.HTTP_503:
            return web.Response(status=503, text="service unavailable")
        if behavior is Behavior.GARBAGE:
            return web.Response(status=200, body=self._garbage(), content_type="text/plain")
        payload = "NOT AN X12 PAYLOAD" if behavior is Behavior.BAD_X12 else ""
        if not payload:
            payload = self._x12_for(interchange.header.sender_id, message, decision)
        return writer.answer(self._reply(message, payload))

    def _forced_behavior(self) -> Behavior | None:
        draw = self._rng.random()
        for fraction, behavior in (
            (self.config.timeout_fraction, Behavior.TIMEOUT),
            (self.config.unavailable_fraction, Behavior.HTTP_503),
            (self.config.garbage_fraction, Behavior.GARBAGE),
        ):
            if draw < fraction:
                return behavior
            draw -= fraction
        return None

    def _garbage(self) -> bytes:
        return b"<<" + self._rng.randbytes(48).hex().encode() + b"\x00 not a CORE envelope"

    def _x12_for(self, submitter: str, message: CoreMessage, decision: Decision) -> str:
        assert decision.response is not None
        self._control = self._control % 999_999_999 + 1
        interchange = interchange_for(
            [decision.response],
            sender_id=message.receiver_id[:15],
            receiver_id=submitter,
            control_number=self._control,
            created=self._now(),
        )
        return build_271(interchange)

    def _reply(self, request: CoreMessage, payload: str) -> CoreMessage:
        return CoreMessage(
            payload_type=PAYLOAD_TYPE_271,
            payload_id=new_payload_id(),
            timestamp=timestamp(self._now()),
            sender_id=request.receiver_id,
            receiver_id=request.sender_id,
            payload=payload,
            error_code=SUCCESS,
            error_message="",
        )


class _Writer:
    """Writes a CORE response in one transport's shape."""

    def answer(self, message: CoreMessage) -> web.StreamResponse:
        raise NotImplementedError

    def error(self, request: CoreMessage, code: str, text: str, status: int) -> web.StreamResponse:
        message = CoreMessage(
            payload_type=request.payload_type or PAYLOAD_TYPE_271,
            payload_id=request.payload_id or new_payload_id(),
            timestamp=timestamp(datetime.now(UTC)),
            sender_id=request.receiver_id,
            receiver_id=request.sender_id,
            payload="",
            error_code=code,
            error_message=text,
        )
        response = self.answer(message)
        response.set_status(status)
        return response


class _SoapWriter(_Writer):
    def answer(self, message: CoreMessage) -> web.StreamResponse:
        return _soap_reply(soap_response(message), 200)


class _MimeWriter(_Writer):
    def answer(self, message: CoreMessage) -> web.StreamResponse:
        writer = MultipartWriter("form-data")
        for name, value in mime_response_fields(message):
            part = writer.append(value)
            part.set_content_disposition("form-data", name=name)
        return web.Response(status=200, body=writer)


def _soap_reply(body: bytes, status: int) -> web.Response:
    return web.Response(status=status, body=body, headers={"Content-Type": SOAP_RESPONSE_TYPE})


def server_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """TLS 1.2+ (the CORE floor) with the given certificate chain and key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=cert, keyfile=key)
    return context
