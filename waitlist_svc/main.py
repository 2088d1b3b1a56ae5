"""Composition root of the waitlist service: settings, dependencies, gRPC, graceful stop."""

from __future__ import annotations

from common.grpc_server import Registration, run
from common.runtime import Needs, Runtime, run_service
from common.settings import Settings
from medsched.waitlist.v1 import waitlist_service_pb2, waitlist_service_pb2_grpc

SERVICE = "waitlist"
NEEDS = Needs(database=True, nats=True, redis=True)
WAITLIST_SERVICE = waitlist_service_pb2.DESCRIPTOR.services_by_name["WaitlistService"].full_name


def registrations(runtime: Runtime) -> list[Registration]:
    # The generated base servicer answers UNIMPLEMENTED for every method: the contract is
    # served (reflection, health, REST transcoding) while the implementation is issue #5.
    return [
        Registration.of(
            waitlist_service_pb2_grpc.add_WaitlistServiceServicer_to_server,
            waitlist_service_pb2_grpc.WaitlistServiceServicer(),
            WAITLIST_SERVICE,
        ),
    ]


def main() -> None:
    settings = Settings.from_env(SERVICE)
    run(run_service(settings, NEEDS, registrations))


if __name__ == "__main__":
    main()
