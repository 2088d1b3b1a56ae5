"""The domain error tree every service raises; the gRPC edge maps it to status codes once.

    MedschedError                       base; never raised directly
    ├── InvalidArgument                 INVALID_ARGUMENT   bad input; lists field violations
    ├── NotFound                        NOT_FOUND          no such thing (or not yours to see)
    ├── AlreadyExists                   ALREADY_EXISTS     e.g. idempotency key reused differently
    ├── Conflict                        ABORTED            lost a race / version check; retry
    ├── FailedPrecondition              FAILED_PRECONDITION  state forbids it; carries reasons
    ├── PermissionDenied                PERMISSION_DENIED  authenticated, not allowed
    ├── Unauthenticated                 UNAUTHENTICATED    no or bad credentials
    ├── ResourceExhausted               RESOURCE_EXHAUSTED rate or size limit
    ├── DependencyUnavailable           UNAVAILABLE        a dependency is down; retry later
    └── DeadlineExceeded                DEADLINE_EXCEEDED  ran out of the caller's time

Messages are written for the API caller: they say what is wrong and never carry PHI, SQL or
internal details. Structured `reasons` travel as `google.rpc.ErrorInfo`/`PreconditionFailure`
details so clients can act on them without parsing text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from google.protobuf.message import Message


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path in the request (e.g. `template.weekday`) and why."""

    field: str
    description: str


@dataclass(frozen=True)
class Reason:
    """A machine-readable reason (e.g. `TAKEN`) with the subject it concerns and metadata."""

    code: str
    subject: str = ""
    description: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    # The ErrorInfo domain; empty: medsched's own. A contract may name its own (e.g. the
    # booking contract's `medsched.booking.v1` for BOOKING_REFUSED).
    domain: str = ""
    # For NOT_FOUND: the kind of thing missing (e.g. `medsched.booking.v1.Appointment`),
    # sent as a `ResourceInfo` with `subject` as its name.
    resource_type: str = ""


class MedschedError(Exception):
    """Base of every error a service deliberately returns to its caller."""

    grpc_code_name: str = "UNKNOWN"

    def __init__(
        self, message: str, *, reasons: Iterable[Reason] = (), details: Iterable[Message] = ()
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reasons: tuple[Reason, ...] = tuple(reasons)
        # Typed details a contract defines for this error (e.g. a `BookingRefusal`), sent
        # after the standard ones.
        self.details: tuple[Message, ...] = tuple(details)


class InvalidArgument(MedschedError):
    grpc_code_name = "INVALID_ARGUMENT"

    def __init__(self, violations: Iterable[FieldViolation], message: str = "") -> None:
        self.violations: tuple[FieldViolation, ...] = tuple(violations)
        if not self.violations:
            raise ValueError("InvalidArgument needs at least one field violation")
        summary = message or "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(summary)

    @classmethod
    def single(cls, field_path: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field_path, description)])


class NotFound(MedschedError):
    grpc_code_name = "NOT_FOUND"


class AlreadyExists(MedschedError):
    grpc_code_name = "ALREADY_EXISTS"


class Conflict(MedschedError):
    grpc_code_name = "ABORTED"


class FailedPrecondition(MedschedError):
    grpc_code_name = "FAILED_PRECONDITION"


class PermissionDenied(MedschedError):
    grpc_code_name = "PERMISSION_DENIED"


class Unauthenticated(MedschedError):
    grpc_code_name = "UNAUTHENTICATED"


class ResourceExhausted(MedschedError):
    grpc_code_name = "RESOURCE_EXHAUSTED"


class DependencyUnavailable(MedschedError):
    grpc_code_name = "UNAVAILABLE"


class DeadlineExceeded(MedschedError):
    grpc_code_name = "DEADLINE_EXCEEDED"


class ViolationCollector:
    """Gathers every field violation of a request so the caller learns all of them at once."""

    def __init__(self) -> None:
        self._violations: list[FieldViolation] = []

    def add(self, field_path: str, description: str) -> None:
        self._violations.append(FieldViolation(field_path, description))

    def check(self, condition: bool, field_path: str, description: str) -> None:
        if not condition:
            self.add(field_path, description)

    @property
    def violations(self) -> tuple[FieldViolation, ...]:
        return tuple(self._violations)

    def raise_if_any(self) -> None:
        if self._violations:
            raise InvalidArgument(self._violations)
