"""A small REST client for the running stack's gateway, and the demo data it books against.

Tokens are minted in-process with the stack's development issuer (what `medsched token`
does), so a test can use as many principals as it needs without a subprocess per token.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from common.auth import Role
from deploy.stack import Stack
from gateway.dev_issuer import DevIssuer, dev_issuer_folder, dev_principal, load_or_create

DEMO_ORGANIZATION_NAME = "Riverside Health"
NEW_PATIENT_VISIT = "New patient consultation"


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: status, content type and the body (parsed when JSON)."""

    status: int
    content_type: str
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class Gateway:
    """Calls the running gateway over HTTPS (trusting the stack's CA) with minted tokens."""

    url: str
    ca_file: str
    context: ssl.SSLContext
    issuer: DevIssuer
    _tokens: dict[tuple[Any, ...], str] = field(default_factory=dict)

    @classmethod
    def of(cls, stack: Stack) -> Gateway:
        return cls(
            url=f"https://{stack.addresses['gateway']}",
            ca_file=str(stack.pki.ca_cert),
            context=ssl.create_default_context(cafile=str(stack.pki.ca_cert)),
            issuer=load_or_create(dev_issuer_folder(stack.data_dir)),
        )

    def token(self, role: Role, subject: str, **scopes: Any) -> str:
        scoped = sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in scopes.items())
        key = (role, subject, *scoped)
        found = self._tokens.get(key)
        if found is None:
            principal = dev_principal(role, subject, **scopes)
            found = self.issuer.mint(principal, now=datetime.now(UTC), ttl=timedelta(hours=2))
            self._tokens[key] = found
        return found

    def patient(self, patient_id: str) -> str:
        return self.token(Role.PATIENT, patient_id)

    def staff(self, subject: str, organization_id: str) -> str:
        return self.token(Role.STAFF, subject, organization_ids=[organization_id])

    def admin(self, subject: str = "e2e-admin") -> str:
        return self.token(Role.ADMIN, subject)

    def call(
        self, method: str, path: str, token: str | None, body: Any = None, **query: Any
    ) -> Answer:
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=15) as response:
                return Answer(
                    response.status,
                    response.headers.get("Content-Type", ""),
                    response.read().decode(),
                )
        except urllib.error.HTTPError as e:
            return Answer(e.code, e.headers.get("Content-Type", ""), e.read().decode())


@dataclass(frozen=True)
class Demo:
    """Ids of the demo organization `up` seeds."""

    organization_id: str
    new_patient_visit_type_id: str


def demo(gateway: Gateway) -> Demo:
    admin = gateway.admin()
    organizations = gateway.call("GET", "/v1/organizations", admin, pageSize=100).json
    org = next(
        o["organizationId"]
        for o in organizations["organizations"]
        if o["displayName"] == DEMO_ORGANIZATION_NAME
    )
    visit_types = gateway.call(
        "GET", f"/v1/organizations/{org}/visit-types", admin, specialty="cardiology"
    ).json["visitTypes"]
    visit = next(v["visitTypeId"] for v in visit_types if v["displayName"] == NEW_PATIENT_VISIT)
    return Demo(organization_id=org, new_patient_visit_type_id=visit)


def open_slots(gateway: Gateway, demo_ids: Demo, token: str | None, limit: int = 20) -> list[str]:
    """Slot ids of open new-patient cardiology visits in the coming two weeks."""
    start = date.today() + timedelta(days=2)
    answer = gateway.call(
        "GET",
        "/v1/availability",
        token,
        specialty="cardiology",
        visitTypeId=demo_ids.new_patient_visit_type_id,
        **{"from": start.isoformat(), "to": (start + timedelta(days=12)).isoformat()},
        limit=limit,
    )
    assert answer.status == 200, answer.text
    return [slot["slotId"] for slot in answer.json["slots"]]


def book(gateway: Gateway, demo_ids: Demo, patient_id: str) -> dict[str, Any]:
    """Book a new-patient visit for `patient_id` (as them) on the first slot that takes it."""
    token = gateway.patient(patient_id)
    last = None
    for slot_id in open_slots(gateway, demo_ids, token):
        last = gateway.call(
            "POST",
            "/v1/appointments",
            token,
            {
                "slotId": slot_id,
                "visitTypeId": demo_ids.new_patient_visit_type_id,
                "patientId": patient_id,
                "visitReason": "e2e visit reason",
                "idempotencyKey": uuid.uuid4().hex,
            },
        )
        if last.status == 200:
            appointment: dict[str, Any] = last.json
            return appointment
        assert last.status == 409, last.text  # taken meanwhile: try the next one
    raise AssertionError(f"no slot could be booked: {last.text if last else 'none found'}")


def hold(gateway: Gateway, demo_ids: Demo, patient_id: str) -> dict[str, Any]:
    """Hold a new-patient visit for `patient_id` (as them)."""
    token = gateway.patient(patient_id)
    last = None
    for slot_id in reversed(open_slots(gateway, demo_ids, token)):
        last = gateway.call(
            "POST",
            "/v1/holds",
            token,
            {
                "slotId": slot_id,
                "visitTypeId": demo_ids.new_patient_visit_type_id,
                "patientId": patient_id,
            },
        )
        if last.status == 200:
            placed: dict[str, Any] = last.json
            return placed
        assert last.status == 409, last.text
    raise AssertionError(f"no slot could be held: {last.text if last else 'none found'}")
