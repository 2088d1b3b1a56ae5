"""Composition root of the booking service: settings, dependencies, gRPC, graceful stop."""

from __future__ import annotations

from common.grpc_server import Registration, run
from common.runtime import Needs, Runtime, run_service
from common.settings import Settings
from medsched.booking.v1 import booking_service_pb2, booking_service_pb2_grpc

SERVICE = "booking"
NEEDS = Needs(database=True, nats=True, redis=True)
BOOKING_SERVICE = booking_service_pb2.DESCRIPTOR.services_by_name["BookingService"].full_name


def registrations(runtime: Runtime) -> list[Registration]:
    # The generated base servicer answers UNIMPLEMENTED for every method: the contract is
    # served (reflection, health, REST transcoding) while the implementation is issue #5.
    return [
        Registration.of(
            booking_service_pb2_grpc.add_BookingServiceServicer_to_server,
            booking_service_pb2_grpc.BookingServiceServicer(),
            BOOKING_SERVICE,
        ),
    ]


def main() -> None:
    settings = Settings.from_env(SERVICE)
    run(run_service(settings, NEEDS, registrations))


if __name__ == "__main__":
    main()
