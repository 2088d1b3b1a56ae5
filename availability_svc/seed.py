"""`medsched seed`: a synthetic, reproducible health system of any size.

One organisation in one metro area (New York, `America/New_York`):

- locations clustered around a dozen real neighbourhood centres (Midtown, Downtown Brooklyn,
  Jersey City, White Plains, ...), about one per 16 providers, each with exam rooms and, by
  size, procedure rooms, ultrasound, X-ray and ECG equipment;
- specialties of very uneven size (primary care is most of the workforce, some subspecialties
  have a handful of providers), each with visit types for new and returning patients of 1-4
  granules, some needing equipment (an echocardiogram needs an ultrasound);
- insurance plans with market shares: providers accept 5-20 plans, the big plans far more often;
- providers who are full-time, part-time, split between two locations (on different days, or
  mornings at one and afternoons at the other), some with Saturday clinics every other week.

Everything is drawn from `random.Random(seed)`, ids included, so the same arguments always
build the same organisation; running it again finds the organisation and only re-materializes.
Records go through `store.py` (the same code the admin API uses), then the whole horizon is
materialized by `materializer.materialize_organization`.
"""

from __future__ import annotations

import logging
import math
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from availability_svc import store
from availability_svc.admin_model import (
    Address,
    InsurancePlanRecord,
    LocationRecord,
    OrganizationRecord,
    ProviderRecord,
    ResourceCategory,
    ResourceNeedSpec,
    ResourceRecord,
    TemplateRecord,
    TemplateWindow,
    VisitTypeRecord,
)
from availability_svc.domain import PatientKind
from availability_svc.materializer import (
    EventContext,
    MaterializeStats,
    horizon_dates,
    materialize_organization,
)
from common.db import Connection, Pool

__all__ = ["DEFAULT_ORGANIZATION", "SeedSummary", "seed_organization"]

logger = logging.getLogger(__name__)

DEFAULT_ORGANIZATION = "Riverside Health"
TIME_ZONE = "America/New_York"
MILES_PER_DEGREE_LAT = 69.05

# (name, latitude, longitude, locality, state, postal code, weight)
_CLUSTERS = (
    ("Midtown", 40.7549, -73.9840, "New York", "NY", "10018", 5.0),
    ("Upper East Side", 40.7736, -73.9566, "New York", "NY", "10021", 3.0),
    ("Downtown Brooklyn", 40.6928, -73.9903, "Brooklyn", "NY", "11201", 4.0),
    ("Flushing", 40.7675, -73.8331, "Queens", "NY", "11354", 3.0),
    ("Jamaica", 40.7027, -73.7890, "Queens", "NY", "11432", 2.0),
    ("Fordham", 40.8615, -73.8905, "Bronx", "NY", "10458", 2.5),
    ("St. George", 40.6437, -74.0736, "Staten Island", "NY", "10301", 1.0),
    ("Jersey City", 40.7178, -74.0431, "Jersey City", "NJ", "07302", 2.0),
    ("Newark", 40.7357, -74.1724, "Newark", "NJ", "07102", 2.0),
    ("White Plains", 41.0340, -73.7629, "White Plains", "NY", "10601", 1.5),
    ("Hempstead", 40.7062, -73.6187, "Hempstead", "NY", "11550", 2.0),
    ("Stamford", 41.0534, -73.5387, "Stamford", "CT", "06901", 1.0),
)
_STREETS = (
    "Main St",
    "Broadway",
    "Park Ave",
    "Atlantic Ave",
    "Central Ave",
    "Grand St",
    "Court St",
    "Madison Ave",
    "Northern Blvd",
    "Ocean Pkwy",
    "Union Ave",
    "Bay St",
)

# (specialty code, relative size, [(visit name, patient kind, granules, equipment kinds)])
_SPECIALTIES: tuple[
    tuple[str, float, tuple[tuple[str, PatientKind, int, tuple[str, ...]], ...]], ...
]
_SPECIALTIES = (
    (
        "family_medicine",
        22.0,
        (
            ("New patient visit", PatientKind.NEW, 3, ()),
            ("Follow-up visit", PatientKind.RETURNING, 2, ()),
            ("Annual physical", PatientKind.ANY, 3, ("ecg",)),
        ),
    ),
    (
        "internal_medicine",
        16.0,
        (
            ("New patient visit", PatientKind.NEW, 3, ()),
            ("Follow-up visit", PatientKind.RETURNING, 1, ()),
        ),
    ),
    (
        "pediatrics",
        12.0,
        (("Well-child visit", PatientKind.ANY, 2, ()), ("Sick visit", PatientKind.ANY, 1, ())),
    ),
    (
        "obstetrics_gynecology",
        7.0,
        (
            ("New patient visit", PatientKind.NEW, 3, ()),
            ("Prenatal ultrasound", PatientKind.RETURNING, 2, ("ultrasound",)),
            ("Follow-up visit", PatientKind.RETURNING, 1, ()),
        ),
    ),
    (
        "cardiology",
        5.0,
        (
            ("New patient consultation", PatientKind.NEW, 4, ("ecg",)),
            ("Echocardiogram", PatientKind.ANY, 4, ("ultrasound",)),
            ("Follow-up visit", PatientKind.RETURNING, 2, ()),
        ),
    ),
    (
        "orthopedics",
        4.5,
        (
            ("New patient visit", PatientKind.NEW, 3, ("x_ray",)),
            ("Follow-up visit", PatientKind.RETURNING, 1, ()),
        ),
    ),
    (
        "dermatology",
        4.0,
        (
            ("Skin check", PatientKind.ANY, 2, ()),
            ("Procedure visit", PatientKind.RETURNING, 3, ("procedure_room",)),
        ),
    ),
    (
        "psychiatry",
        3.5,
        (
            ("Initial evaluation", PatientKind.NEW, 4, ()),
            ("Medication management", PatientKind.RETURNING, 2, ()),
        ),
    ),
    (
        "gastroenterology",
        2.5,
        (
            ("Consultation", PatientKind.NEW, 3, ()),
            ("Follow-up visit", PatientKind.RETURNING, 2, ()),
        ),
    ),
    (
        "endocrinology",
        2.0,
        (
            ("Consultation", PatientKind.NEW, 3, ()),
            ("Follow-up visit", PatientKind.RETURNING, 2, ()),
        ),
    ),
    (
        "neurology",
        2.0,
        (
            ("Consultation", PatientKind.NEW, 4, ()),
            ("Follow-up visit", PatientKind.RETURNING, 2, ()),
        ),
    ),
    (
        "pulmonology",
        1.6,
        (
            ("Consultation", PatientKind.NEW, 3, ()),
            ("Follow-up visit", PatientKind.RETURNING, 2, ()),
        ),
    ),
    ("ophthalmology", 1.6, (("Eye exam", PatientKind.ANY, 2, ()),)),
    (
        "otolaryngology",
        1.3,
        (
            ("Consultation", PatientKind.NEW, 2, ()),
            ("Follow-up visit", PatientKind.RETURNING, 1, ()),
        ),
    ),
    (
        "urology",
        1.2,
        (
            ("Consultation", PatientKind.NEW, 2, ()),
            ("Bladder ultrasound", PatientKind.RETURNING, 2, ("ultrasound",)),
        ),
    ),
    (
        "rheumatology",
        0.9,
        (
            ("Consultation", PatientKind.NEW, 4, ()),
            ("Follow-up visit", PatientKind.RETURNING, 2, ()),
        ),
    ),
    (
        "nephrology",
        0.8,
        (
            ("Consultation", PatientKind.NEW, 3, ()),
            ("Follow-up visit", PatientKind.RETURNING, 2, ()),
        ),
    ),
    ("allergy_immunology", 0.7, (("Allergy testing", PatientKind.ANY, 4, ("procedure_room",)),)),
    (
        "oncology",
        0.7,
        (
            ("Consultation", PatientKind.NEW, 4, ()),
            ("Follow-up visit", PatientKind.RETURNING, 2, ()),
        ),
    ),
    ("infectious_disease", 0.4, (("Consultation", PatientKind.NEW, 3, ()),)),
    ("sports_medicine", 0.4, (("Injury visit", PatientKind.ANY, 2, ("x_ray",)),)),
    ("sleep_medicine", 0.3, (("Consultation", PatientKind.NEW, 3, ()),)),
)
_PAYERS = (
    ("aetna", "Aetna", "60054"),
    ("bcbs", "Blue Cross Blue Shield", "00803"),
    ("cigna", "Cigna", "62308"),
    ("uhc", "UnitedHealthcare", "87726"),
    ("emblem", "EmblemHealth", "13551"),
    ("healthfirst", "Healthfirst", "80141"),
    ("fidelis", "Fidelis Care", "11315"),
    ("oscar", "Oscar Health", "OSCAR"),
    ("humana", "Humana", "61101"),
    ("medicare", "Medicare", "13202"),
    ("medicaid", "Medicaid", "MCDNY"),
    ("metroplus", "MetroPlus", "13265"),
    ("wellcare", "WellCare", "14163"),
    ("amerigroup", "Amerigroup", "27514"),
    ("horizon", "Horizon BCBS NJ", "22099"),
    ("oxford", "Oxford Health Plans", "06111"),
    ("tricare", "TRICARE East", "99726"),
)
_PRODUCTS = (("ppo", "PPO"), ("hmo", "HMO"), ("epo", "EPO"))
_FIRST_NAMES = (
    "Ana",
    "James",
    "Mei",
    "Olu",
    "Priya",
    "Daniel",
    "Sofia",
    "Mohammed",
    "Grace",
    "Luis",
    "Hannah",
    "Kwame",
    "Yuki",
    "Elena",
    "Samuel",
    "Fatima",
    "Noah",
    "Aisha",
    "David",
    "Ingrid",
    "Rafael",
    "Chen",
    "Maria",
    "Tomas",
    "Leah",
    "Arjun",
    "Nadia",
)
_LAST_NAMES = (
    "Ruiz",
    "Okafor",
    "Chen",
    "Patel",
    "Cohen",
    "Kim",
    "Rossi",
    "Nguyen",
    "Garcia",
    "Haddad",
    "Novak",
    "Mensah",
    "Tanaka",
    "Ivanova",
    "Brooks",
    "Silva",
    "Khan",
    "Murphy",
    "Levy",
    "Santos",
    "Osei",
    "Park",
    "Fischer",
    "Diaz",
    "Ali",
    "Moreau",
)
_LANGUAGES = (
    ("es", 0.30),
    ("zh", 0.08),
    ("ru", 0.05),
    ("ht", 0.03),
    ("ko", 0.03),
    ("bn", 0.02),
    ("fr", 0.03),
    ("ar", 0.02),
)


@dataclass(frozen=True, slots=True)
class SeedSummary:
    """What `seed_organization` built (or found) and what materialization did."""

    organization_id: str
    created: bool
    locations: int
    providers: int
    plans: int
    visit_types: int
    resources: int
    templates: int
    materialized: MaterializeStats


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _npi(rng: random.Random) -> str:
    """A 10-digit NPI with a valid check digit (Luhn over the `80840` card-issuer prefix)."""
    body = "1" + "".join(str(rng.randrange(10)) for _ in range(8))
    digits = [int(d) for d in "80840" + body]
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return body + str((10 - total % 10) % 10)


def _organization_id(name: str, seed: int) -> str:
    # Derived from the arguments, so `medsched seed` run twice finds its own organisation.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"medsched:seed:{name}:{seed}"))


class _Builder:
    """Draws the organisation's records in a fixed order from one random generator."""

    def __init__(self, org: OrganizationRecord, providers: int, rng: random.Random) -> None:
        self.org = org
        self.provider_count = providers
        self.rng = rng

    def locations(self) -> list[LocationRecord]:
        rng = self.rng
        count = max(3, round(self.provider_count / 16))
        weights = [c[6] for c in _CLUSTERS]
        result = []
        for index in range(count):
            name, lat, lon, locality, state, postal, _ = (
                _CLUSTERS[index] if index < len(_CLUSTERS) else rng.choices(_CLUSTERS, weights)[0]
            )
            # Within about 3 miles of the neighbourhood centre (Gaussian scatter).
            north = rng.gauss(0.0, 1.5) / MILES_PER_DEGREE_LAT
            east = rng.gauss(0.0, 1.5) / (MILES_PER_DEGREE_LAT * math.cos(math.radians(lat)))
            result.append(
                LocationRecord(
                    id=_uuid(rng),
                    organization_id=self.org.id,
                    display_name=f"{self.org.display_name} - {name} {index + 1}",
                    address=Address(
                        address_lines=(f"{rng.randrange(1, 999)} {rng.choice(_STREETS)}",),
                        locality=locality,
                        administrative_area=state,
                        postal_code=postal,
                        region_code="US",
                    ),
                    latitude=round(lat + north, 6),
                    longitude=round(lon + east, 6),
                    time_zone=TIME_ZONE,
                    active=True,
                )
            )
        return result

    def resources(self, locations: list[LocationRecord]) -> list[ResourceRecord]:
        rng = self.rng
        result = []
        for loc in locations:
            kit = [("exam_room", ResourceCategory.ROOM, "Exam", rng.randint(4, 12))]
            kit.append(("procedure_room", ResourceCategory.ROOM, "Procedure", rng.randint(0, 2)))
            kit.append(("ultrasound", ResourceCategory.EQUIPMENT, "Ultrasound", rng.randint(0, 2)))
            kit.append(("x_ray", ResourceCategory.EQUIPMENT, "X-ray", rng.randint(0, 1)))
            kit.append(("ecg", ResourceCategory.EQUIPMENT, "ECG", rng.randint(1, 2)))
            for kind, category, label, count in kit:
                for number in range(1, count + 1):
                    result.append(
                        ResourceRecord(
                            id=_uuid(rng),
                            organization_id=self.org.id,
                            location_id=loc.id,
                            display_name=f"{label} {number}",
                            category=category,
                            kind=kind,
                            active=True,
                        )
                    )
        return result

    def plans(self) -> tuple[list[InsurancePlanRecord], list[float]]:
        rng = self.rng
        wanted = min(50, max(8, self.provider_count // 10))
        pairs = [(p, prod) for p in _PAYERS for prod in _PRODUCTS]
        rng.shuffle(pairs)
        plans = [
            InsurancePlanRecord(
                plan_id=f"{payer[0]}_{product[0]}",
                organization_id=self.org.id,
                display_name=f"{payer[1]} {product[1]}",
                payer_id=payer[2],
                active=True,
            )
            for payer, product in pairs[:wanted]
        ]
        # Market shares fall off like a power law: a few plans cover most patients.
        shares = [1.0 / (rank + 1) ** 1.1 for rank in range(len(plans))]
        return plans, shares

    def visit_types(self) -> dict[str, list[VisitTypeRecord]]:
        rng = self.rng
        result: dict[str, list[VisitTypeRecord]] = {}
        for specialty, _, visits in _SPECIALTIES:
            result[specialty] = [
                VisitTypeRecord(
                    id=_uuid(rng),
                    organization_id=self.org.id,
                    display_name=name,
                    specialty=specialty,
                    duration_granules=granules,
                    resource_needs=(
                        ResourceNeedSpec(ResourceCategory.ROOM, "exam_room", 1),
                        *(
                            ResourceNeedSpec(
                                ResourceCategory.ROOM
                                if kind.endswith("_room")
                                else ResourceCategory.EQUIPMENT,
                                kind,
                                1,
                            )
                            for kind in equipment
                        ),
                    ),
                    patient_kind=kind_of_patient,
                    location_ids=(),
                    minimum_notice_seconds=2 * 3600,
                    maximum_days_ahead=0,
                    service_type_code="98" if kind_of_patient is not PatientKind.NEW else "30",
                    active=True,
                )
                for name, kind_of_patient, granules, equipment in visits
            ]
        return result

    def provider(
        self,
        locations: list[LocationRecord],
        plans: list[InsurancePlanRecord],
        shares: list[float],
    ) -> tuple[ProviderRecord, str]:
        rng = self.rng
        specialty = rng.choices([s[0] for s in _SPECIALTIES], [s[1] for s in _SPECIALTIES])[0]
        home = rng.randrange(len(locations))
        sites = [locations[home].id]
        if rng.random() < 0.3 and len(locations) > 1:
            # A second site close to the first: the nearest few locations by coordinates.
            near = sorted(
                (i for i in range(len(locations)) if i != home),
                key=lambda i: (
                    (locations[i].latitude - locations[home].latitude) ** 2
                    + (locations[i].longitude - locations[home].longitude) ** 2
                ),
            )[:4]
            sites.append(locations[rng.choice(near)].id)
        accepted: set[str] = set()
        target = rng.randint(5, min(20, len(plans)))
        while len(accepted) < target:
            accepted.add(rng.choices(plans, shares)[0].plan_id)
        languages = ["en"] + [code for code, share in _LANGUAGES if rng.random() < share]
        title = "MD" if rng.random() < 0.8 else rng.choice(("DO", "NP", "PA"))
        record = ProviderRecord(
            id=_uuid(rng),
            organization_id=self.org.id,
            display_name=f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}, {title}",
            npi=_npi(rng),
            specialties=(specialty,),
            languages=tuple(languages),
            accepted_plan_ids=tuple(sorted(accepted)),
            location_ids=tuple(sites),
            accepting_new_patients=rng.random() < 0.85,
            active=True,
        )
        return record, specialty

    def templates(
        self, provider: ProviderRecord, visit_type_ids: tuple[str, ...], start: date
    ) -> list[TemplateRecord]:
        rng = self.rng
        monday = start - timedelta(days=start.weekday())
        full_day = ((8 * 60, 12 * 60), (12 * 60 + 30, 17 * 60 + 30))

        def template(
            location_id: str, windows: list[TemplateWindow], interval: int = 1
        ) -> TemplateRecord:
            return TemplateRecord(
                id=_uuid(rng),
                organization_id=self.org.id,
                provider_id=provider.id,
                location_id=location_id,
                effective_start_date=monday,
                effective_end_date=None,
                week_interval=interval,
                windows=tuple(windows),
                visit_type_ids=visit_type_ids,
            )

        def day(weekday: int, spans: tuple[tuple[int, int], ...]) -> list[TemplateWindow]:
            return [TemplateWindow(weekday, s, e) for s, e in spans]

        sites = provider.location_ids
        part_time = rng.random() < 0.2
        days = sorted(rng.sample(range(1, 6), 3)) if part_time else [1, 2, 3, 4, 5]
        if len(sites) == 1:
            windows = [w for d in days for w in day(d, full_day)]
            result = [template(sites[0], windows)]
        elif rng.random() < 0.5:
            # Split by day: the second site gets one or two of the working days.
            away = set(rng.sample(days, min(len(days) - 1, rng.randint(1, 2))))
            result = [
                template(sites[0], [w for d in days if d not in away for w in day(d, full_day)]),
                template(sites[1], [w for d in sorted(away) for w in day(d, full_day)]),
            ]
        else:
            # Split within the day: mornings at one site, afternoons at the other.
            result = [
                template(sites[0], [w for d in days for w in day(d, full_day[:1])]),
                template(sites[1], [w for d in days for w in day(d, full_day[1:])]),
            ]
        if rng.random() < 0.1:
            result.append(template(sites[0], day(6, ((9 * 60, 13 * 60),)), interval=2))
        return result


async def seed_organization(
    pool: Pool,
    *,
    providers: int = 50,
    seed: int = 7,
    organization_name: str = DEFAULT_ORGANIZATION,
    now: datetime | None = None,
    materialize: bool = True,
) -> SeedSummary:
    """Build (or find) the synthetic organisation and materialize its horizon."""
    if providers < 1:
        raise ValueError("providers must be at least 1")
    now = now or datetime.now(UTC)
    rng = random.Random(f"{organization_name}:{seed}:{providers}")
    org = OrganizationRecord(
        id=_organization_id(organization_name, seed),
        display_name=organization_name,
        granule_minutes=15,
        horizon_days=90,
        time_zone=TIME_ZONE,
        active=True,
    )
    async with pool.connection() as conn, conn.transaction():
        existing = await store.get_organization(conn, org.id)
        if existing is not None:
            found = await store.organization_counts(conn, existing.id)
            counts = (
                found["locations"],
                found["providers"],
                found["plans"],
                found["visit_types"],
                found["resources"],
                found["templates"],
            )
            created = False
        else:
            counts = await _create(conn, _Builder(org, providers, rng), now)
            created = True
    stats = MaterializeStats()
    if materialize:
        stats = await materialize_organization(
            pool, org.id, now=now, context=EventContext(actor_id="medsched-seed")
        )
    return SeedSummary(org.id, created, *counts, materialized=stats)


async def _create(
    conn: Connection, builder: _Builder, now: datetime
) -> tuple[int, int, int, int, int, int]:
    org = await store.insert_organization(conn, builder.org)
    today, _ = horizon_dates(org, now)
    locations = builder.locations()
    for loc in locations:
        await store.insert_location(conn, loc)
    resources = builder.resources(locations)
    for res in resources:
        await store.insert_resource(conn, res)
    plans, shares = builder.plans()
    for plan in plans:
        await store.insert_plan(conn, plan)
    visit_types = builder.visit_types()
    for records in visit_types.values():
        for vt in records:
            await store.insert_visit_type(conn, vt)
    templates = 0
    for _ in range(builder.provider_count):
        provider, specialty = builder.provider(locations, plans, shares)
        await store.insert_provider(conn, provider)
        offered = tuple(vt.id for vt in visit_types[specialty])
        for tpl in builder.templates(provider, offered, today):
            await store.insert_template(conn, tpl)
            templates += 1
    logger.info(
        "organization seeded",
        extra={"organization_id": org.id, "providers": builder.provider_count},
    )
    return (
        len(locations),
        builder.provider_count,
        len(plans),
        sum(len(v) for v in visit_types.values()),
        len(resources),
        templates,
    )
