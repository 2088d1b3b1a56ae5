"""Composition root of the eligibility service: settings, dependencies, gRPC, graceful stop."""

from __future__ import annotations

from common.grpc_server import Registration, run
from common.runtime import Needs, Runtime, run_service
from common.settings import Settings
from medsched.eligibility.v1 import eligibility_service_pb2, eligibility_service_pb2_grpc

SERVICE = "eligibility"
NEEDS = Needs(database=True, nats=True, redis=True)
ELIGIBILITY_SERVICE = eligibility_service_pb2.DESCRIPTOR.services_by_name[
    "EligibilityService"
].full_name


def registrations(runtime: Runtime) -> list[Registration]:
    # The generated base servicer answers UNIMPLEMENTED for every method: the contract is
    # served (reflection, health, REST transcoding) while the implementation is issue #4.
    return [
        Registration.of(
            eligibility_service_pb2_grpc.add_EligibilityServiceServicer_to_server,
            eligibility_service_pb2_grpc.EligibilityServiceServicer(),
            ELIGIBILITY_SERVICE,
        ),
    ]


def main() -> None:
    settings = Settings.from_env(SERVICE)
    run(run_service(settings, NEEDS, registrations))


if __name__ == "__main__":
    main()
