"""Composition root of the notify service: settings, dependencies, gRPC, graceful stop."""

from __future__ import annotations

from common.grpc_server import Registration, run
from common.runtime import Needs, Runtime, run_service
from common.settings import Settings
from medsched.notify.v1 import notify_service_pb2, notify_service_pb2_grpc

SERVICE = "notify"
NEEDS = Needs(database=True, nats=True)
NOTIFY_SERVICE = notify_service_pb2.DESCRIPTOR.services_by_name["NotifyService"].full_name


def registrations(runtime: Runtime) -> list[Registration]:
    # The generated base servicer answers UNIMPLEMENTED for every method: the contract is
    # served (reflection, health, REST transcoding) while the implementation is issue #5.
    return [
        Registration.of(
            notify_service_pb2_grpc.add_NotifyServiceServicer_to_server,
            notify_service_pb2_grpc.NotifyServiceServicer(),
            NOTIFY_SERVICE,
        ),
    ]


def main() -> None:
    settings = Settings.from_env(SERVICE)
    run(run_service(settings, NEEDS, registrations))


if __name__ == "__main__":
    main()
