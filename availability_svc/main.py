"""Composition root of the availability service: settings, dependencies, gRPC, graceful stop."""

from __future__ import annotations

from common.grpc_server import Registration, run
from common.runtime import Needs, Runtime, run_service
from common.settings import Settings
from medsched.availability.v1 import (
    availability_service_pb2,
    availability_service_pb2_grpc,
    schedule_admin_service_pb2,
    schedule_admin_service_pb2_grpc,
)

SERVICE = "availability"
NEEDS = Needs(database=True, nats=True)
SEARCH_SERVICE = availability_service_pb2.DESCRIPTOR.services_by_name[
    "AvailabilityService"
].full_name
ADMIN_SERVICE = schedule_admin_service_pb2.DESCRIPTOR.services_by_name[
    "ScheduleAdminService"
].full_name


def registrations(runtime: Runtime) -> list[Registration]:
    # The generated base servicers answer UNIMPLEMENTED for every method: the contracts are
    # served (reflection, health, REST transcoding) while the implementation is issue #3.
    return [
        Registration.of(
            availability_service_pb2_grpc.add_AvailabilityServiceServicer_to_server,
            availability_service_pb2_grpc.AvailabilityServiceServicer(),
            SEARCH_SERVICE,
            public_methods=("SearchAvailability",),
        ),
        Registration.of(
            schedule_admin_service_pb2_grpc.add_ScheduleAdminServiceServicer_to_server,
            schedule_admin_service_pb2_grpc.ScheduleAdminServiceServicer(),
            ADMIN_SERVICE,
        ),
    ]


def main() -> None:
    settings = Settings.from_env(SERVICE)
    run(run_service(settings, NEEDS, registrations))


if __name__ == "__main__":
    main()
