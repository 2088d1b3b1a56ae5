"""Loop walker: the HL hierarchy of a 270/271 and the segments each loop may hold.

Segment order inside a loop is tolerated where payers vary in practice (an AAA before the
DMG, a TRN after the NM1), but a segment that belongs to no loop at its position is an error,
and segments after an EB (or EQ) belong to that benefit (or inquiry) as the TR3 nests them:
an LS/LE 2120 loop therefore attaches to the EB right before it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import date

from eligibility_svc.x12 import codes, segments
from eligibility_svc.x12.elements import fail, required_code, required_text, text
from eligibility_svc.x12.errors import X12StructureError, describe_found
from eligibility_svc.x12.model import (
    Address,
    Benefit,
    Contact,
    DatePeriod,
    Entity,
    IndustryCode,
    InformationReceiver,
    Member,
    PatientResponse,
    ProviderInfo,
    ReceiverLoop,
    Reference,
    Rejection,
    RelatedEntity,
    Relationship,
    ServiceDelivery,
    ServiceInquiry,
    SourceLoop,
    TraceNumber,
)
from eligibility_svc.x12.tokenizer import Segment

_LOOP_LETTER = {
    codes.LEVEL_SOURCE: "A",
    codes.LEVEL_RECEIVER: "B",
    codes.LEVEL_SUBSCRIBER: "C",
    codes.LEVEL_DEPENDENT: "D",
}
# Segments the TR3 allows in a patient loop that the normalized model does not carry.
_IGNORED_PATIENT_SEGMENTS = frozenset({"HI", "MPI"})
_IGNORED_INQUIRY_SEGMENTS = frozenset({"AMT"})


@dataclass
class HLNode:
    """One HL level with the segments that follow it up to the next HL."""

    hl: Segment
    level: str
    segments: list[Segment] = field(default_factory=list)
    children: list[HLNode] = field(default_factory=list)

    @property
    def loop(self) -> str:
        letter = _LOOP_LETTER[self.level]
        return f"2000{letter}/2100{letter} ({codes.LEVEL_NAMES[self.level]})"


def build_hierarchy(body: Sequence[Segment], trailer: Segment) -> list[HLNode]:
    """The HL tree of a transaction body (the segments after BHT); returns the roots."""
    first = body[0] if body else trailer
    if first.id != "HL":
        raise X12StructureError(
            "expected HL (the information source level) after BHT",
            ordinal=first.ordinal,
            segment_id=first.id,
        )
    roots: list[HLNode] = []
    by_id: dict[str, HLNode] = {}
    current: HLNode | None = None
    for segment in body:
        if segment.id != "HL":
            assert current is not None  # body[0] is an HL
            current.segments.append(segment)
            continue
        current = _add_level(segment, by_id, roots)
    return roots


def _add_level(hl: Segment, by_id: dict[str, HLNode], roots: list[HLNode]) -> HLNode:
    hl_id = required_text(hl, 1, "a hierarchical id number")
    if hl_id in by_id:
        raise fail(
            hl,
            1,
            f"expected a new hierarchical id; segment {by_id[hl_id].hl.ordinal} uses it already",
        )
    level = required_code(hl, 3, "a hierarchical level code 20, 21, 22 or 23", codes.LEVEL_NAMES)
    parent_id = text(hl, 2)
    node = HLNode(hl, level)
    if level == codes.LEVEL_SOURCE:
        if parent_id is not None:
            raise fail(hl, 2, "expected no parent for an information source level (HL03 20)")
        roots.append(node)
    else:
        _parent(hl, parent_id, level, by_id).children.append(node)
    by_id[hl_id] = node
    return node


def _parent(hl: Segment, parent_id: str | None, level: str, by_id: dict[str, HLNode]) -> HLNode:
    wanted = codes.PARENT_LEVEL[level]
    wanted_name = f"an earlier {codes.LEVEL_NAMES[wanted]} level (HL03 {wanted})"
    if parent_id is None:
        raise fail(hl, 2, f"expected the id of {wanted_name}, found nothing")
    parent = by_id.get(parent_id)
    if parent is None:
        raise fail(
            hl,
            2,
            f"expected the id of {wanted_name}, "
            f"found {describe_found(parent_id)}, which no earlier HL has",
        )
    if parent.level != wanted:
        raise fail(
            hl,
            2,
            f"expected the id of {wanted_name}, "
            f"found the id of level {parent.level} ({codes.LEVEL_NAMES[parent.level]})",
        )
    return parent


def _not_allowed(segment: Segment, where: str, allowed: Collection[str]) -> X12StructureError:
    return X12StructureError(
        f"{segment.id} is not allowed here; expected one of {', '.join(allowed)} in {where}",
        ordinal=segment.ordinal,
        segment_id=segment.id,
    )


def _missing_name(node: HLNode) -> X12StructureError:
    return X12StructureError(
        f"expected NM1 naming the {codes.LEVEL_NAMES[node.level]} in loop {node.loop}",
        ordinal=node.hl.ordinal,
        segment_id="HL",
    )


def _ignored(segment: Segment, warnings: list[str]) -> None:
    warnings.append(
        f"segment {segment.ordinal} ({segment.id}): not part of the normalized result; ignored"
    )


def _at_most_once(segment: Segment, seen: set[str], where: str) -> None:
    if segment.id in seen:
        raise X12StructureError(
            f"a second {segment.id} in {where}; expected at most one",
            ordinal=segment.ordinal,
            segment_id=segment.id,
        )
    seen.add(segment.id)


class _AddressParts:
    """N3 and N4 of one entity, combined into one `Address`."""

    def __init__(self) -> None:
        self.street: tuple[str, ...] = ()
        self.n4: Segment | None = None
        self.present = False

    def accept(self, segment: Segment) -> None:
        self.present = True
        if segment.id == "N3":
            first = required_text(segment, 1, "an address line")
            second = text(segment, 2)
            self.street = (first,) if second is None else (first, second)
        else:
            self.n4 = segment

    def address(self) -> Address | None:
        if not self.present:
            return None
        n4 = self.n4
        if n4 is None:
            return Address(street=self.street)
        return Address(
            street=self.street,
            city=text(n4, 1),
            state=text(n4, 2),
            postal_code=text(n4, 3),
            country_code=text(n4, 4),
            country_subdivision=text(n4, 7),
        )


class _PartyLoop:
    """NM1, REF, N3/N4, PRV, PER and AAA of a source or receiver loop (2100A/2100B)."""

    def __init__(
        self, node: HLNode, allowed_entities: Collection[str], allowed: tuple[str, ...]
    ) -> None:
        self.node = node
        self.allowed = allowed
        self.entity: Entity | None = None
        self.references: list[Reference] = []
        self.address = _AddressParts()
        self.provider: ProviderInfo | None = None
        self.contacts: list[Contact] = []
        self.rejections: list[Rejection] = []
        self._allowed_entities = allowed_entities
        self._seen: set[str] = set()
        for segment in node.segments:
            self._accept(segment)

    def _accept(self, segment: Segment) -> None:
        if segment.id not in self.allowed:
            raise _not_allowed(segment, f"loop {self.node.loop}", self.allowed)
        if segment.id in ("NM1", "N3", "N4", "PRV"):
            _at_most_once(segment, self._seen, f"loop {self.node.loop}")
        if segment.id == "NM1":
            allowed = ", ".join(sorted(self._allowed_entities))
            what = f"an entity code of the {codes.LEVEL_NAMES[self.node.level]} ({allowed})"
            self.entity = segments.entity(segment, self._allowed_entities, what)
        elif segment.id == "REF":
            self.references.append(segments.reference(segment))
        elif segment.id in ("N3", "N4"):
            self.address.accept(segment)
        elif segment.id == "PRV":
            self.provider = segments.provider(segment)
        elif segment.id == "PER":
            self.contacts.append(segments.contact(segment))
        elif segment.id == "AAA":
            self.rejections.append(segments.rejection(segment))

    def required_entity(self) -> Entity:
        if self.entity is None:
            raise _missing_name(self.node)
        return self.entity

    def receiver(self) -> InformationReceiver:
        return InformationReceiver(
            entity=self.required_entity(),
            references=tuple(self.references),
            address=self.address.address(),
            provider=self.provider,
        )


class _MemberLoop:
    """The patient-level segments shared by 270 and 271 (loops 2000C/2100C, 2000D/2100D)."""

    SEGMENTS = ("TRN", "NM1", "REF", "N3", "N4", "PRV", "DMG", "INS", "HI", "DTP", "MPI")
    _ONCE = frozenset({"NM1", "N3", "N4", "PRV", "DMG", "INS"})

    def __init__(self, node: HLNode, warnings: list[str]) -> None:
        self.node = node
        self.warnings = warnings
        self.entity: Entity | None = None
        self.traces: list[TraceNumber] = []
        self.references: list[Reference] = []
        self.address = _AddressParts()
        self.provider: ProviderInfo | None = None
        self.birth_date: date | None = None
        self.gender: str | None = None
        self.relationship: Relationship | None = None
        self.dates: list[DatePeriod] = []
        self._seen: set[str] = set()

    def accept(self, segment: Segment) -> bool:
        """Take a member-level segment; False when it is not one (the caller decides)."""
        if segment.id not in self.SEGMENTS:
            return False
        if segment.id in self._ONCE:
            _at_most_once(segment, self._seen, f"loop {self.node.loop}")
        if segment.id == "NM1":
            self.entity = self._entity(segment)
        elif segment.id == "TRN":
            self.traces.append(segments.trace(segment))
        elif segment.id == "REF":
            self.references.append(segments.reference(segment))
        elif segment.id in ("N3", "N4"):
            self.address.accept(segment)
        elif segment.id == "PRV":
            self.provider = segments.provider(segment)
        elif segment.id == "DMG":
            self.birth_date, self.gender = segments.demographics(segment)
        elif segment.id == "INS":
            self.relationship = segments.relationship(segment)
        elif segment.id == "DTP":
            self.dates.append(segments.date_period(segment))
        elif segment.id in _IGNORED_PATIENT_SEGMENTS:
            _ignored(segment, self.warnings)
        return True

    def _entity(self, segment: Segment) -> Entity:
        if self.node.level == codes.LEVEL_SUBSCRIBER:
            return segments.entity(
                segment, (codes.SUBSCRIBER_ENTITY,), "the entity code IL (insured or subscriber)"
            )
        return segments.entity(segment, (codes.DEPENDENT_ENTITY,), "the entity code 03 (dependent)")

    def member(self) -> Member:
        if self.entity is None:
            raise _missing_name(self.node)
        return Member(
            entity=self.entity,
            trace_numbers=tuple(self.traces),
            references=tuple(self.references),
            address=self.address.address(),
            provider=self.provider,
            birth_date=self.birth_date,
            gender=self.gender,
            relationship=self.relationship,
            dates=tuple(self.dates),
        )


# --- 270 ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InquiryLoops:
    """The parts of a 270 transaction below BHT."""

    source: Entity
    receiver: InformationReceiver
    subscriber: Member
    dependent: Member | None
    service_inquiries: tuple[ServiceInquiry, ...]


def read_inquiry_loops(roots: list[HLNode], warnings: list[str]) -> InquiryLoops:
    """One source, receiver and subscriber and at most one dependent: a real-time 270."""
    source_node = _only_child(roots, None, "information source")
    receiver_node = _only_child(source_node.children, source_node, "information receiver")
    subscriber_node = _only_child(receiver_node.children, receiver_node, "subscriber")
    dependent_nodes = subscriber_node.children
    if len(dependent_nodes) > 1:
        raise _second_level(dependent_nodes[1], "dependent")
    source = _PartyLoop(source_node, codes.SOURCE_ENTITIES, ("NM1",)).required_entity()
    receiver = _PartyLoop(
        receiver_node, codes.RECEIVER_ENTITIES, ("NM1", "REF", "N3", "N4", "PRV")
    ).receiver()
    has_dependent = bool(dependent_nodes)
    subscriber, subscriber_inquiries = _read_inquiry_member(
        subscriber_node, not has_dependent, warnings
    )
    dependent = None
    inquiries = subscriber_inquiries
    if has_dependent:
        dependent, inquiries = _read_inquiry_member(dependent_nodes[0], True, warnings)
    patient_node = dependent_nodes[0] if has_dependent else subscriber_node
    if not inquiries:
        raise X12StructureError(
            "expected at least one EQ (eligibility or benefit inquiry) in the "
            f"{codes.LEVEL_NAMES[patient_node.level]} loop",
            ordinal=patient_node.hl.ordinal,
            segment_id="HL",
        )
    return InquiryLoops(source, receiver, subscriber, dependent, inquiries)


def _only_child(nodes: list[HLNode], parent: HLNode | None, name: str) -> HLNode:
    if not nodes:
        raise X12StructureError(
            f"expected an {name} level under this HL" if parent else f"expected an {name} level",
            ordinal=None if parent is None else parent.hl.ordinal,
            segment_id=None if parent is None else "HL",
        )
    if len(nodes) > 1:
        raise _second_level(nodes[1], name)
    return nodes[0]


def _second_level(node: HLNode, name: str) -> X12StructureError:
    return X12StructureError(
        f"a second {name} level in one 270 transaction set is not supported "
        "(a real-time inquiry carries one patient)",
        ordinal=node.hl.ordinal,
        segment_id="HL",
    )


class _InquiryDraft:
    """An EQ loop being read: the EQ plus its III, REF and DTP."""

    def __init__(self, eq: Segment) -> None:
        self.inquiry = segments.service_inquiry(eq)
        self.industry_codes: list[IndustryCode] = []
        self.references: list[Reference] = []
        self.dates: list[DatePeriod] = []

    def freeze(self) -> ServiceInquiry:
        return replace(
            self.inquiry,
            industry_codes=tuple(self.industry_codes),
            references=tuple(self.references),
            dates=tuple(self.dates),
        )


_INQUIRY_LOOP_SEGMENTS = ("EQ", "AMT", "III", "REF", "DTP")


def _read_inquiry_member(
    node: HLNode, is_patient: bool, warnings: list[str]
) -> tuple[Member, tuple[ServiceInquiry, ...]]:
    member = _MemberLoop(node, warnings)
    drafts: list[_InquiryDraft] = []
    letter = _LOOP_LETTER[node.level]
    for segment in node.segments:
        if segment.id == "EQ":
            if not is_patient:
                raise X12StructureError(
                    "EQ is not allowed in the subscriber loop when a dependent loop follows; "
                    "the inquiry belongs in loop 2110D",
                    ordinal=segment.ordinal,
                    segment_id="EQ",
                )
            drafts.append(_InquiryDraft(segment))
        elif drafts:
            _accept_inquiry_detail(drafts[-1], segment, f"loop 2110{letter} (after EQ)", warnings)
        elif not member.accept(segment):
            raise _not_allowed(segment, f"loop {node.loop} of a 270", (*_MemberLoop.SEGMENTS, "EQ"))
    return member.member(), tuple(draft.freeze() for draft in drafts)


def _accept_inquiry_detail(
    draft: _InquiryDraft, segment: Segment, where: str, warnings: list[str]
) -> None:
    if segment.id == "III":
        draft.industry_codes.append(segments.industry_code(segment))
    elif segment.id == "REF":
        draft.references.append(segments.reference(segment))
    elif segment.id == "DTP":
        draft.dates.append(segments.date_period(segment))
    elif segment.id in _IGNORED_INQUIRY_SEGMENTS:
        _ignored(segment, warnings)
    else:
        raise _not_allowed(segment, where, _INQUIRY_LOOP_SEGMENTS)


# --- 271 ---------------------------------------------------------------------------------


def read_response_loops(roots: list[HLNode], warnings: list[str]) -> tuple[SourceLoop, ...]:
    return tuple(_source_loop(node, warnings) for node in roots)


def _source_loop(node: HLNode, warnings: list[str]) -> SourceLoop:
    party = _PartyLoop(node, codes.SOURCE_ENTITIES, ("NM1", "PER", "AAA"))
    return SourceLoop(
        entity=party.required_entity(),
        contacts=tuple(party.contacts),
        rejections=tuple(party.rejections),
        receivers=tuple(_receiver_loop(child, warnings) for child in node.children),
    )


def _receiver_loop(node: HLNode, warnings: list[str]) -> ReceiverLoop:
    party = _PartyLoop(node, codes.RECEIVER_ENTITIES, ("NM1", "REF", "N3", "N4", "AAA", "PRV"))
    return ReceiverLoop(
        receiver=party.receiver(),
        rejections=tuple(party.rejections),
        subscribers=tuple(_patient(child, warnings) for child in node.children),
    )


class _RelatedDraft:
    """A 2120 entry being read: NM1 with its N3/N4, PER and PRV."""

    def __init__(self, nm1: Segment) -> None:
        # The 2120 loop names many kinds of entities (P3 primary care provider, PRP primary
        # payer, 2B third-party administrator...), so any entity code is accepted here.
        self.entity = segments.entity(nm1, None, "an entity identifier code")
        self.address = _AddressParts()
        self.contacts: list[Contact] = []
        self.provider: ProviderInfo | None = None
        self._seen: set[str] = set()

    def accept(self, segment: Segment) -> None:
        if segment.id in ("N3", "N4", "PRV"):
            _at_most_once(segment, self._seen, "loop 2120")
        if segment.id in ("N3", "N4"):
            self.address.accept(segment)
        elif segment.id == "PER":
            self.contacts.append(segments.contact(segment))
        else:
            self.provider = segments.provider(segment)

    def freeze(self) -> RelatedEntity:
        return RelatedEntity(
            self.entity, self.address.address(), tuple(self.contacts), self.provider
        )


class _BenefitDraft:
    """An EB loop being read, with its LS/LE 2120 state."""

    DETAIL_SEGMENTS = ("EB", "HSD", "REF", "DTP", "AAA", "MSG", "III", "LS")

    def __init__(self, eb: Segment, warnings: list[str]) -> None:
        self.benefit = segments.benefit(eb, warnings)
        self.deliveries: list[ServiceDelivery] = []
        self.references: list[Reference] = []
        self.dates: list[DatePeriod] = []
        self.rejections: list[Rejection] = []
        self.messages: list[str] = []
        self.industry_codes: list[IndustryCode] = []
        self.related: list[_RelatedDraft] = []
        self.open_ls: Segment | None = None

    def accept(self, segment: Segment, where: str) -> None:
        if self.open_ls is not None:
            self._accept_2120(segment)
        elif segment.id == "HSD":
            self.deliveries.append(segments.service_delivery(segment))
        elif segment.id == "REF":
            self.references.append(segments.reference(segment))
        elif segment.id == "DTP":
            self.dates.append(segments.date_period(segment))
        elif segment.id == "AAA":
            self.rejections.append(segments.rejection(segment))
        elif segment.id == "MSG":
            self.messages.append(segments.message(segment))
        elif segment.id == "III":
            self.industry_codes.append(segments.industry_code(segment))
        elif segment.id == "LS":
            required_code(segment, 1, "the loop identifier 2120", ("2120",))
            self.open_ls = segment
        else:
            raise _not_allowed(segment, where, self.DETAIL_SEGMENTS)

    def _accept_2120(self, segment: Segment) -> None:
        if segment.id == "LE":
            required_code(segment, 1, "the loop identifier 2120", ("2120",))
            self.open_ls = None
        elif segment.id == "NM1":
            self.related.append(_RelatedDraft(segment))
        elif segment.id in ("N3", "N4", "PER", "PRV") and self.related:
            self.related[-1].accept(segment)
        else:
            allowed = ("NM1", "N3", "N4", "PER", "PRV", "LE") if self.related else ("NM1",)
            assert self.open_ls is not None
            raise _not_allowed(
                segment, f"loop 2120 opened by LS at segment {self.open_ls.ordinal}", allowed
            )

    def freeze(self) -> Benefit:
        if self.open_ls is not None:
            raise X12StructureError(
                "expected LE*2120 closing this LS before the loop ends",
                ordinal=self.open_ls.ordinal,
                segment_id="LS",
            )
        return replace(
            self.benefit,
            service_deliveries=tuple(self.deliveries),
            references=tuple(self.references),
            dates=tuple(self.dates),
            rejections=tuple(self.rejections),
            messages=tuple(self.messages),
            industry_codes=tuple(self.industry_codes),
            related_entities=tuple(draft.freeze() for draft in self.related),
        )


def _patient(node: HLNode, warnings: list[str]) -> PatientResponse:
    member = _MemberLoop(node, warnings)
    rejections: list[Rejection] = []
    drafts: list[_BenefitDraft] = []
    where = f"loop 2110{_LOOP_LETTER[node.level]} (after EB)"
    for segment in node.segments:
        if segment.id == "EB" and not (drafts and drafts[-1].open_ls is not None):
            drafts.append(_BenefitDraft(segment, warnings))
        elif drafts:
            drafts[-1].accept(segment, where)
        elif segment.id == "AAA":
            rejections.append(segments.rejection(segment))
        elif not member.accept(segment):
            raise _not_allowed(
                segment, f"loop {node.loop} of a 271", (*_MemberLoop.SEGMENTS, "AAA", "EB")
            )
    return PatientResponse(
        member=member.member(),
        rejections=tuple(rejections),
        benefits=tuple(draft.freeze() for draft in drafts),
        dependents=tuple(_patient(child, warnings) for child in node.children),
    )
