"""The `EligibilityVerified` event as it travels: an `EventEnvelope`, serialized for the outbox."""

from __future__ import annotations

import uuid
from datetime import datetime

from google.protobuf import timestamp_pb2

from eligibility_svc.domain import CheckStatus
from eligibility_svc.store import AGGREGATE_TYPE, VERIFIED_EVENT_TYPE, CompletedCheck
from medsched.common.v1 import types_pb2
from medsched.eligibility.v1 import eligibility_pb2
from medsched.events.v1 import eligibility_events_pb2, envelope_pb2

_STATUS = {
    CheckStatus.ACTIVE: eligibility_pb2.ACTIVE,
    CheckStatus.INACTIVE: eligibility_pb2.INACTIVE,
    CheckStatus.NOT_FOUND: eligibility_pb2.NOT_FOUND,
    CheckStatus.ERROR: eligibility_pb2.ERROR,
}


def verified_event(
    check: CompletedCheck,
    *,
    event_id: uuid.UUID,
    status: CheckStatus,
    responded_at: datetime | None,
    occurred_at: datetime,
) -> bytes:
    """The envelope of one check's completion: ids, codes and instants only (no PHI)."""
    verified = eligibility_events_pb2.EligibilityVerified(
        check_id=check.check_id,
        patient_id=check.patient_id,
        appointment_id=check.appointment_id,
        payer_id=check.payer_id,
        service_type_code=check.service_type,
        status=_STATUS[status],
    )
    if responded_at is not None:
        verified.response_time.CopyFrom(_timestamp(responded_at))
    envelope = envelope_pb2.EventEnvelope(
        event_id=str(event_id),
        event_type=VERIFIED_EVENT_TYPE,
        aggregate_type=AGGREGATE_TYPE,
        aggregate_id=check.check_id,
        # A check completes exactly once (store.complete_pending), so its one event is the
        # first and only of its aggregate.
        aggregate_sequence=1,
        organization_id=check.organization_id,
        actor_role=types_pb2.SYSTEM,
        correlation_id=check.check_id,
        eligibility_verified=verified,
    )
    envelope.occurred_at.CopyFrom(_timestamp(occurred_at))
    return envelope.SerializeToString()


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp
