"""Nobody reaches another patient's data, or another organization's, through the gateway.

Patient A books an appointment (REST `POST /v1/appointments` with a slot from
`GET /v1/availability`), holds a slot and has an eligibility check. Then patient B, and
staff of another organization, try every operation that takes one of A's ids. Each must
answer 403 or 404 with nothing of A in the body: no id beyond the one the caller sent, no
name, birth date, member id, visit reason or confirmation code.

The operations come from the gateway's OpenAPI document: every operation with a path
parameter naming a patient-owned thing (`OWNED`) must have an attempt in `ATTEMPTS` or a
reason in `NOT_APPLICABLE`, so a new endpoint cannot be forgotten. Staff of another
organization also try every operation with an `{organization_id}` path parameter on the
demo organization (with real provider, location, resource and visit type ids).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pytest

from deploy.stack import Stack
from tests.e2e.rest import Answer, Demo, Gateway, book, demo, hold, open_slots

# Path parameters naming something that belongs to one patient.
OWNED = (
    "appointment_id",
    "hold_id",
    "patient_id",
    "check_id",
    "entry_id",
    "offer_id",
    "notification_id",
)
_WAITLIST_501 = "waitlist_svc answers UNIMPLEMENTED (501) for every RPC today; no issue yet"
_NOTIFY_501 = "notify_svc answers UNIMPLEMENTED (501) for every RPC today; no issue yet"
# operationId -> why it is not tried yet. Each must still answer 501 (checked), so the
# entry is removed, and an attempt written, once the service is implemented.
NOT_APPLICABLE = {
    "NotifyService_ListAppointmentNotifications": _NOTIFY_501,
    "NotifyService_GetNotification": _NOTIFY_501,
    "NotifyService_ResendNotification": _NOTIFY_501,
    "NotifyService_GetNotificationPreferences": _NOTIFY_501,
    "NotifyService_UpdateNotificationPreferences": _NOTIFY_501,
    "WaitlistService_GetWaitlistEntry": _WAITLIST_501,
    "WaitlistService_LeaveWaitlist": _WAITLIST_501,
    "WaitlistService_ListWaitlistOffers": _WAITLIST_501,
    "WaitlistService_GetWaitlistOffer": _WAITLIST_501,
    "WaitlistService_ClaimWaitlistOffer": _WAITLIST_501,
    "WaitlistService_DeclineWaitlistOffer": _WAITLIST_501,
}
# The generic patch body this test sends (`displayName`) is not a field of a schedule
# template: the gateway refuses it (400, the caller's own body) before any service is called.
GATEWAY_REFUSES_BODY = frozenset({"ScheduleAdminService_UpdateScheduleTemplate"})
VISIT_REASON = "e2e visit reason"
MEMBER = {"payerId": "SIMPAYER", "memberId": "SIMA00001", "serviceTypeCode": "30"}
DEMOGRAPHICS = {"name": {"givenName": "JOHN", "familyName": "SMITH"}, "birthDate": "1980-01-15"}


@dataclass(frozen=True)
class Victim:
    """Patient A and everything of theirs an attacker might try to reach."""

    patient_id: str
    appointment: dict[str, Any]
    hold: dict[str, Any]
    check_id: str
    demo: Demo
    open_slot: str

    @property
    def ids(self) -> dict[str, str]:
        return {
            "appointment_id": self.appointment["appointmentId"],
            "hold_id": self.hold["holdId"],
            "patient_id": self.patient_id,
            "check_id": self.check_id,
        }

    def secrets(self) -> set[str]:
        """Every value of A's that must not appear in an answer to someone else."""
        found = set(self.ids.values())
        found |= {self.appointment["confirmationCode"], self.appointment["etag"]}
        found |= {VISIT_REASON, "JOHN", "SMITH", "1980-01-15", "SIMA00001"}
        found |= {r["resourceId"] for r in self.appointment["reservations"]}
        return found


# operationId -> (JSON body, query) of an otherwise valid request; the path carries A's ids.
Attempt = Callable[[Victim], tuple[Any, dict[str, str]]]
ATTEMPTS: dict[str, Attempt] = {
    "BookingService_GetAppointment": lambda v: (None, {}),
    "BookingService_CancelAppointment": lambda v: ({"cancellationReason": "PATIENT_REQUEST"}, {}),
    "BookingService_RescheduleAppointment": lambda v: (
        {"slotId": v.open_slot, "idempotencyKey": uuid.uuid4().hex},
        {},
    ),
    "BookingService_CheckInAppointment": lambda v: ({}, {}),
    "BookingService_CompleteAppointment": lambda v: ({}, {}),
    "BookingService_MarkNoShow": lambda v: ({}, {}),
    "BookingService_ReleaseHold": lambda v: (None, {}),
    "BookingService_ListPatientAppointments": lambda v: (None, {}),
    "EligibilityService_GetEligibilityCheck": lambda v: (None, {}),
}


@pytest.fixture(scope="module")
def gateway(running_stack: Stack) -> Gateway:
    return Gateway.of(running_stack)


@pytest.fixture(scope="module")
def document(gateway: Gateway) -> dict[str, Any]:
    answer = gateway.call("GET", "/openapi.json", None)
    assert answer.status == 200
    parsed: dict[str, Any] = answer.json
    return parsed


@pytest.fixture(scope="module")
def victim(gateway: Gateway) -> Victim:
    ids = demo(gateway)
    patient_id = f"xp-a-{uuid.uuid4().hex[:8]}"
    appointment = book(gateway, ids, patient_id)
    placed = hold(gateway, ids, patient_id)
    check = gateway.call(
        "POST",
        "/v1/eligibility-checks",
        gateway.patient(patient_id),
        {
            "organizationId": ids.organization_id,
            "patientId": patient_id,
            **MEMBER,
            "patientDemographics": DEMOGRAPHICS,
        },
    )
    assert check.status == 200, check.text
    slots = [s for s in open_slots(gateway, ids, None) if s != appointment["slotId"]]
    return Victim(
        patient_id=patient_id,
        appointment=appointment,
        hold=placed,
        check_id=check.json["checkId"],
        demo=ids,
        open_slot=slots[len(slots) // 2],
    )


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def owned_operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for method, path, operation in operations(document)
        if any(f"{{{name}}}" in path for name in OWNED)
    ]


def assert_refused_without_leaks(
    answer: Answer, victim: Victim, sent: set[str], what: str, *, allow_empty_list: bool = False
) -> None:
    leaks = {secret for secret in victim.secrets() - sent if secret in answer.text}
    assert not leaks, f"{what} leaked {sorted(leaks)}: {answer.text[:500]}"
    if allow_empty_list and answer.status == 200:
        assert answer.json.get("appointments") == [], f"{what}: {answer.text[:500]}"
        return
    assert answer.status in (403, 404), f"{what} answered {answer.status}: {answer.text[:500]}"
    assert answer.content_type.startswith("application/problem+json")


def test_every_operation_taking_a_patients_id_is_tried_or_listed(
    document: dict[str, Any],
) -> None:
    found = {operation["operationId"] for _, _, operation in owned_operations(document)}
    neither = found - set(ATTEMPTS) - set(NOT_APPLICABLE)
    assert not neither, f"add an attempt (or a reason) for {sorted(neither)}"
    stale = (set(ATTEMPTS) | set(NOT_APPLICABLE)) - found
    assert not stale, f"no such operation any more: {sorted(stale)}"


def test_operations_not_applicable_yet_still_answer_not_implemented(
    gateway: Gateway, document: dict[str, Any], victim: Victim
) -> None:
    token = gateway.patient(f"xp-b-{uuid.uuid4().hex[:8]}")
    for method, path, operation in owned_operations(document):
        if operation["operationId"] not in NOT_APPLICABLE:
            continue
        concrete = path
        for name, value in victim.ids.items():
            concrete = concrete.replace(f"{{{name}}}", value)
        concrete = concrete.replace("{", "").replace("}", "")
        body: dict[str, Any] | None = {} if method in ("POST", "PATCH") else None
        answer = gateway.call(method, concrete, token, body)
        assert answer.status == 501, (
            f"{operation['operationId']} answers {answer.status}: its service is implemented, "
            "write an attempt for it and drop it from NOT_APPLICABLE"
        )


def _fill(path: str, values: dict[str, str]) -> tuple[str, set[str]]:
    sent = set()
    for name, value in values.items():
        if f"{{{name}}}" in path:
            path = path.replace(f"{{{name}}}", value)
            sent.add(value)
    return path, sent


@pytest.mark.parametrize("who", ["another patient", "staff of another organization"])
def test_nobody_else_reaches_a_patients_appointment_hold_or_check(
    gateway: Gateway, document: dict[str, Any], victim: Victim, who: str
) -> None:
    if who == "another patient":
        token = gateway.patient(f"xp-b-{uuid.uuid4().hex[:8]}")
    else:
        token = gateway.staff(f"xp-nurse-{uuid.uuid4().hex[:8]}", f"org-{uuid.uuid4().hex[:8]}")
    tried = 0
    for method, path, operation in owned_operations(document):
        attempt = ATTEMPTS.get(operation["operationId"])
        if attempt is None:
            continue
        concrete, sent = _fill(path, victim.ids)
        body, query = attempt(victim)
        answer = gateway.call(method, concrete, token, body, **query)
        # Staff elsewhere may list a patient's appointments: only those of their own
        # organizations, i.e. none of A's.
        lists = operation["operationId"] == "BookingService_ListPatientAppointments"
        assert_refused_without_leaks(
            answer,
            victim,
            sent,
            f"{who}: {method} {path}",
            allow_empty_list=lists and who != "another patient",
        )
        tried += 1
    assert tried == len(ATTEMPTS)
    # A still has everything: nothing above changed it.
    own = gateway.patient(victim.patient_id)
    mine = gateway.call("GET", f"/v1/appointments/{victim.ids['appointment_id']}", own)
    assert mine.status == 200
    assert mine.json["status"] == "BOOKED"
    assert mine.json["visitReason"] == VISIT_REASON


def test_another_patient_cannot_book_hold_or_check_eligibility_for_a_patient(
    gateway: Gateway, victim: Victim
) -> None:
    token = gateway.patient(f"xp-b-{uuid.uuid4().hex[:8]}")
    visit = victim.demo.new_patient_visit_type_id
    attempts = {
        "/v1/appointments": {
            "slotId": victim.open_slot,
            "visitTypeId": visit,
            "patientId": victim.patient_id,
            "idempotencyKey": uuid.uuid4().hex,
        },
        "/v1/holds": {
            "slotId": victim.open_slot,
            "visitTypeId": visit,
            "patientId": victim.patient_id,
        },
        "/v1/eligibility-checks": {
            "organizationId": victim.demo.organization_id,
            "patientId": victim.patient_id,
            **MEMBER,
            "patientDemographics": DEMOGRAPHICS,
        },
    }
    for path, body in attempts.items():
        answer = gateway.call("POST", path, token, body)
        sent = {victim.patient_id, "JOHN", "SMITH", "1980-01-15", "SIMA00001"}
        assert_refused_without_leaks(answer, victim, sent, f"POST {path} for A")


def test_staff_of_another_organization_reach_nothing_of_it(
    gateway: Gateway, document: dict[str, Any], victim: Victim
) -> None:
    token = gateway.staff(f"xp-nurse-{uuid.uuid4().hex[:8]}", f"org-{uuid.uuid4().hex[:8]}")
    appointment = victim.appointment
    values = {
        "organization_id": victim.demo.organization_id,
        "provider_id": appointment["providerId"],
        "location_id": appointment["locationId"],
        "visit_type_id": appointment["visitTypeId"],
        "resource_id": appointment["reservations"][0]["resourceId"],
    }
    day = (date.today() + timedelta(days=3)).isoformat()
    tried = []
    for method, path, operation in operations(document):
        if "{organization_id}" not in path or operation["operationId"] in NOT_APPLICABLE:
            continue
        concrete, sent = _fill(path, values)
        # Anything else the path names gets an id that exists nowhere.
        while "{" in concrete:
            start, end = concrete.index("{"), concrete.index("}")
            concrete = concrete[:start] + str(uuid.uuid4()) + concrete[end + 1 :]
        query = {"date": day} if path.endswith("/appointments") else {}
        body: Any = None
        if method == "PATCH":
            body, query = {"displayName": "renamed"}, {"updateMask": "displayName"}
        elif method == "POST":
            body = {}
        answer = gateway.call(method, concrete, token, body, **query)
        if operation["operationId"] in GATEWAY_REFUSES_BODY:
            assert answer.status == 400, answer.text[:300]
            assert [e["field"] for e in answer.json["errors"]] == ["displayName"]
        else:
            # The services check access before the body: even an empty body is not read.
            assert answer.status in (403, 404), (
                f"{method} {path} answered {answer.status}: {answer.text[:300]}"
            )
        leaks = {s for s in victim.secrets() - sent if s in answer.text}
        assert not leaks, f"{method} {path} leaked {sorted(leaks)}"
        tried.append(operation["operationId"])
    assert len(tried) >= 30, tried
