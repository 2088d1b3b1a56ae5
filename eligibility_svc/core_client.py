"""The clearinghouse client: one 270 out, one 271 back, over CAQH CORE real-time HTTPS.

`ClearinghouseClient.exchange(route, x12_270, reference=..., deadline=...)` never raises for
what a payer does: every outcome, good or bad, is an `ExchangeResult` with the raw payload
kept for the audit trail and a PHI-free description. Per call:

- the whole exchange, retries included, ends by `deadline` (a `time.monotonic()` instant that
  the caller owns; the client never extends it);
- the payer's circuit breaker (`breaker.CircuitBreaker`) is asked first; an open circuit
  answers CIRCUIT_OPEN without touching the network;
- retries happen only when the payer provably did not take the request (see `_attempts`);
- the 271 must answer *this* 270: its BHT03 must echo our reference (TR3 real-time rule),
  so a mixed-up answer can never be shown as another patient's coverage.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import enum
import logging
import random
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp

from common.tls import https_client_context
from eligibility_svc.breaker import CircuitBreaker, Permit
from eligibility_svc.config import ClientConfig
from eligibility_svc.core_envelope import (
    PAYLOAD_TYPE_270,
    PAYLOAD_TYPE_271,
    PAYLOAD_TYPE_999,
    PAYLOAD_TYPE_TA1,
    SOAP_CONTENT_TYPE,
    SUCCESS,
    CoreMessage,
    Credentials,
    EnvelopeError,
    SoapFault,
    mime_request_fields,
    new_payload_id,
    parse_soap_response,
    response_from_fields,
    soap_request,
    timestamp,
)
from eligibility_svc.routing import PayerRoute, Transport
from eligibility_svc.x12 import EligibilityResponse, X12Error, parse_271

logger = logging.getLogger(__name__)

# Error codes and fault subcodes come from the payer: echoed only when they look like codes.
_SHOWABLE_CODE = re.compile(r"[A-Za-z0-9 :._-]{1,60}")
_RETRY_STATUS = 503
_AAA_UNABLE_TO_RESPOND = "42"


class ExchangeFailure(enum.Enum):
    """Why an exchange produced no usable 271."""

    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"
    CIRCUIT_OPEN = "circuit_open"
    INVALID_RESPONSE = "invalid_response"


@dataclass(frozen=True)
class ExchangeResult:
    """The outcome of one exchange with a payer. `response_payload` and `response` are PHI."""

    payload_id: str
    transport: Transport
    attempts: int
    elapsed_s: float
    failure: ExchangeFailure | None
    description: str
    """What happened, for operators: codes and numbers only, never payload content."""
    retryable: bool = False
    http_status: int | None = None
    core_error_code: str | None = None
    response_payload: str | None = field(default=None, repr=False)
    """What came back (the 271, a 999, or the garbage), for the audit trail."""
    response: EligibilityResponse | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _Reply:
    status: int
    content_type: str
    body: bytes


@dataclass(frozen=True)
class _Verdict:
    """An interpreted reply; `payer_fault` says whether it counts against the payer's circuit."""

    failure: ExchangeFailure | None
    description: str
    payer_fault: bool
    retryable: bool = False
    core_error_code: str | None = None
    payload: str | None = None
    response: EligibilityResponse | None = None


class _NotAccepted(Exception):
    """The payer did not take the request (refused connection, 503): safe to send again."""

    def __init__(self, description: str, status: int | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.status = status


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ClearinghouseClient:
    """CORE real-time client with per-payer circuit breakers; one per process."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = _utc_now,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._now = now
        self._rng = rng or random.Random()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._ssl: dict[str, ssl.SSLContext] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._config.max_connections)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None)
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def breaker(self, payer_id: str) -> CircuitBreaker:
        """The circuit breaker of `payer_id` (made on first use)."""
        found = self._breakers.get(payer_id)
        if found is None:
            found = CircuitBreaker(self._config.breaker, self._clock)
            self._breakers[payer_id] = found
        return found

    async def exchange(
        self, route: PayerRoute, x12_270: str, *, reference: str, deadline: float
    ) -> ExchangeResult:
        """Send `x12_270` to the payer of `route`; answer by `deadline` (monotonic seconds).

        `reference` is the 270's BHT03, which the 271 must echo.
        """
        started = self._clock()
        payload_id = new_payload_id()
        breaker = self.breaker(route.payer_id)
        permit = breaker.acquire()
        if permit is None:
            wait = breaker.retry_after_s()
            return ExchangeResult(
                payload_id,
                route.transport,
                attempts=0,
                elapsed_s=0.0,
                failure=ExchangeFailure.CIRCUIT_OPEN,
                description=f"circuit open after repeated failures; next probe in {wait:.1f} s",
                retryable=True,
            )
        message = CoreMessage(
            payload_type=PAYLOAD_TYPE_270,
            payload_id=payload_id,
            timestamp=timestamp(self._now()),
            sender_id=route.sender_id,
            receiver_id=route.receiver_id,
            payload=x12_270,
        )
        try:
            attempts, status, verdict = await self._attempts(route, message, reference, deadline)
        except BaseException:
            breaker.release(permit)
            raise
        self._record(breaker, permit, verdict)
        result = ExchangeResult(
            payload_id,
            route.transport,
            attempts=attempts,
            elapsed_s=self._clock() - started,
            failure=verdict.failure,
            description=verdict.description,
            retryable=verdict.retryable,
            http_status=status,
            core_error_code=verdict.core_error_code,
            response_payload=verdict.payload,
            response=verdict.response,
        )
        self._log(route, result)
        return result

    # -- attempts and retries

    async def _attempts(
        self, route: PayerRoute, message: CoreMessage, reference: str, deadline: float
    ) -> tuple[int, int | None, _Verdict]:
        """Send until an answer, a failure that must not be retried, or no time/attempts left.

        Retried: a refused or failed connection (nothing was sent) and HTTP 503 (the server
        says it did not take the request). Not retried: a timeout or broken connection after
        the request went out. The payer may be working on that 270 right now: sending it
        again doubles the load on a payer that is already slow, and the second answer could
        not arrive before the caller's deadline anyway. The check reports PAYER_TIMEOUT and
        the caller asks again later, when the circuit breaker has had its say.
        """
        attempts = 0
        backoff = self._config.retry_backoff_s
        last_status: int | None = None
        while True:
            attempts += 1
            remaining = deadline - self._clock()
            if remaining <= 0:
                return attempts - 1, last_status, _timeout_verdict(deadline_spent=True)
            try:
                async with asyncio.timeout(remaining):
                    reply = await self._post(route, message)
            except TimeoutError:
                return attempts, last_status, _timeout_verdict(deadline_spent=False)
            except _NotAccepted as e:
                last_status = e.status
                pause = backoff * (1 + self._rng.random())
                if attempts > self._config.max_retries or self._clock() + pause >= deadline:
                    return (
                        attempts,
                        last_status,
                        _Verdict(
                            ExchangeFailure.UNAVAILABLE,
                            e.description,
                            payer_fault=True,
                            retryable=True,
                        ),
                    )
                await asyncio.sleep(pause)
                backoff *= 2
                continue
            except (aiohttp.ClientError, OSError) as e:
                return (
                    attempts,
                    last_status,
                    _Verdict(
                        ExchangeFailure.UNAVAILABLE,
                        f"transport failed after the request was sent ({type(e).__name__})",
                        payer_fault=True,
                        retryable=True,
                    ),
                )
            return attempts, reply.status, self._interpret(route, reply, reference)

    async def _post(self, route: PayerRoute, message: CoreMessage) -> _Reply:
        session = self._session
        if session is None:
            raise RuntimeError("ClearinghouseClient.start() was not called")
        credentials = Credentials(route.username, route.password)
        data: bytes | aiohttp.MultipartWriter
        headers: dict[str, str] = {}
        if route.transport is Transport.SOAP:
            data = soap_request(message, credentials)
            headers["Content-Type"] = SOAP_CONTENT_TYPE
        else:
            data = aiohttp.MultipartWriter("form-data")
            for name, value in mime_request_fields(message, credentials):
                part = data.append(value)
                part.set_content_disposition("form-data", name=name)
        try:
            async with session.post(
                route.endpoint, data=data, headers=headers, ssl=self._ssl_for(route)
            ) as response:
                if response.status == _RETRY_STATUS:
                    raise _NotAccepted("the payer answered HTTP 503 (not accepted)", 503)
                body = await self._read_limited(response)
                return _Reply(response.status, response.headers.get("Content-Type", ""), body)
        except aiohttp.ClientSSLError:
            # A certificate problem is configuration, not a passing fault: no retry.
            raise
        except aiohttp.ClientConnectorError as e:
            raise _NotAccepted(f"could not connect to the payer ({type(e).__name__})") from e

    async def _read_limited(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self._config.max_response_bytes
        if response.content_length is not None and response.content_length > limit:
            raise aiohttp.ClientPayloadError(f"response larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise aiohttp.ClientPayloadError(f"response larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _ssl_for(self, route: PayerRoute) -> ssl.SSLContext:
        context = self._ssl.get(route.payer_id)
        if context is None:
            context = https_client_context(
                ca=route.ca_file, cert=route.client_cert, key=route.client_key
            )
            self._ssl[route.payer_id] = context
        return context

    # -- reading the answer

    def _interpret(self, route: PayerRoute, reply: _Reply, reference: str) -> _Verdict:
        try:
            if route.transport is Transport.SOAP:
                answer = parse_soap_response(reply.body)
            else:
                answer = _parse_mime_response(reply)
        except EnvelopeError as e:
            return _Verdict(
                ExchangeFailure.INVALID_RESPONSE,
                f"HTTP {reply.status} with an unreadable CORE envelope: {e}",
                payer_fault=True,
                retryable=True,
                payload=_text(reply.body),
            )
        if isinstance(answer, SoapFault):
            return _Verdict(
                ExchangeFailure.UNAVAILABLE,
                f"HTTP {reply.status} SOAP fault {_code(answer.code)}"
                + (f" ({_code(answer.subcode)})" if answer.subcode else ""),
                payer_fault=True,
                retryable=answer.code != "Sender",
            )
        if reply.status != 200 or answer.error_code != SUCCESS:
            return _Verdict(
                ExchangeFailure.UNAVAILABLE,
                f"HTTP {reply.status} CORE error {_code(answer.error_code or 'none')}",
                payer_fault=True,
                retryable=True,
                core_error_code=_code(answer.error_code) if answer.error_code else None,
                payload=answer.payload or None,
            )
        return _read_payload(answer, reference)

    def _record(self, breaker: CircuitBreaker, permit: Permit, verdict: _Verdict) -> None:
        if verdict.payer_fault:
            breaker.record_failure(permit)
        else:
            breaker.record_success(permit)

    def _log(self, route: PayerRoute, result: ExchangeResult) -> None:
        extra = {
            "payer_id": route.payer_id,
            "payload_id": result.payload_id,
            "transport": route.transport.value,
            "attempts": result.attempts,
            "elapsed_ms": round(result.elapsed_s * 1000, 1),
            "http_status": result.http_status,
            "failure": None if result.failure is None else result.failure.value,
        }
        if result.failure is None:
            logger.debug("payer exchange answered", extra=extra)
        else:
            logger.warning("payer exchange failed: %s", result.description, extra=extra)


def _timeout_verdict(*, deadline_spent: bool) -> _Verdict:
    description = (
        "no time left for another attempt before the deadline"
        if deadline_spent
        else "the payer did not answer before the deadline"
    )
    return _Verdict(ExchangeFailure.TIMEOUT, description, payer_fault=True, retryable=True)


def _read_payload(answer: CoreMessage, reference: str) -> _Verdict:
    payload = answer.payload
    if answer.payload_type in (PAYLOAD_TYPE_999, PAYLOAD_TYPE_TA1):
        # The payer refused our 270 itself: our data or envelope is wrong, the payer is fine.
        kind = "999" if answer.payload_type == PAYLOAD_TYPE_999 else "TA1"
        return _Verdict(
            ExchangeFailure.INVALID_RESPONSE,
            f"the payer rejected the 270 with a {kind} acknowledgment",
            payer_fault=False,
            payload=payload,
        )
    if answer.payload_type != PAYLOAD_TYPE_271:
        return _Verdict(
            ExchangeFailure.INVALID_RESPONSE,
            f"unexpected PayloadType {_code(answer.payload_type)}",
            payer_fault=True,
            retryable=True,
            payload=payload,
        )
    try:
        transactions = parse_271(payload).transactions
    except X12Error as e:
        # X12Error messages locate the problem without quoting values (no PHI).
        return _Verdict(
            ExchangeFailure.INVALID_RESPONSE,
            f"the 271 could not be parsed: {e.message}",
            payer_fault=True,
            retryable=True,
            payload=payload,
        )
    if len(transactions) != 1:
        return _Verdict(
            ExchangeFailure.INVALID_RESPONSE,
            f"a real-time answer carries one 271 transaction, this one {len(transactions)}",
            payer_fault=True,
            payload=payload,
        )
    response = transactions[0]
    if response.reference != reference:
        return _Verdict(
            ExchangeFailure.INVALID_RESPONSE,
            "the 271 answers another inquiry (BHT03 does not echo our reference)",
            payer_fault=True,
            payload=payload,
        )
    unable = any(
        rejection.reason_code == _AAA_UNABLE_TO_RESPOND
        for source in response.sources
        for rejection in source.rejections
    )
    # AAA 42 at the source level is the payer saying it is down behind its gateway: a valid
    # answer for the check (ERROR), and a failure for the circuit.
    return _Verdict(None, "answered", payer_fault=unable, payload=payload, response=response)


def _parse_mime_response(reply: _Reply) -> CoreMessage:
    if not reply.content_type.lower().startswith("multipart/"):
        raise EnvelopeError("the response is not multipart")
    head = f"Content-Type: {reply.content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + reply.body)
    if not message.is_multipart():
        raise EnvelopeError("the multipart response has no parts")
    values: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            content = part.get_payload(decode=True)
            values[name] = content.decode("utf-8", "replace") if isinstance(content, bytes) else ""
    return response_from_fields(values)


def _text(body: bytes) -> str:
    return body.decode("utf-8", "replace")


def _code(value: str) -> str:
    return value if _SHOWABLE_CODE.fullmatch(value) else "(unrecognised)"
