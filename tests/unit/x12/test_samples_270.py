"""Every shared 270 sample parses into the inquiry it actually carries."""

from __future__ import annotations

from datetime import date, time

from eligibility_svc.x12 import (
    DatePeriod,
    EligibilityInquiry,
    Entity,
    IndustryCode,
    InformationReceiver,
    InterchangeHeader,
    Member,
    ServiceInquiry,
    TraceNumber,
    parse_270,
)
from tests.unit.x12.samples import requires_samples, sample

pytestmark = requires_samples

ABC_COMPANY = Entity("PR", "2", "ABC COMPANY", id_qualifier="PI", identifier="842610001")
DC_MEDICAID = Entity("PR", "2", "DC MEDICAID", id_qualifier="PI", identifier="DCMEDICAID")
ACME_HOME_HEALTH = InformationReceiver(
    Entity("1P", "2", "ACME HOME HEALTH", id_qualifier="XX", identifier="1234567893")
)
HEALTH_PLAN_COVERAGE = (ServiceInquiry(service_types=("30",)),)
MARY_SMITH_DEPENDENT = Member(
    entity=Entity("03", "1", "SMITH", first_name="MARY"),
    trace_numbers=(TraceNumber("1", "93175-012547", "9877281234"),),
    birth_date=date(1978, 10, 14),
    dates=(DatePeriod("291", date(2006, 5, 1)),),
)


def test_batch_of_two_inquiries_in_one_group_parses_both_patients() -> None:
    interchange = parse_270(sample("270_batch_two_transactions_x12edittools.edi"))

    assert interchange.warnings == ()
    assert interchange.header == InterchangeHeader(
        sender_qualifier="ZZ",
        sender_id="ACMEHOMEHLTH",
        receiver_qualifier="ZZ",
        receiver_id="DCMEDICAID",
        created_date=date(2026, 4, 12),
        created_time=time(12, 5),
        control_number=2,
        usage="T",
    )
    assert len(interchange.groups) == 1
    assert interchange.groups[0].control_number == 2
    first, second = interchange.transactions
    assert first == EligibilityInquiry(
        control_number="0001",
        reference="10001234",
        created_date=date(2026, 4, 12),
        created_time=time(12, 5),
        information_source=DC_MEDICAID,
        information_receiver=ACME_HOME_HEALTH,
        subscriber=Member(
            entity=Entity("IL", "1", "DOE", "PATIENT", id_qualifier="MI", identifier="000123450"),
            trace_numbers=(TraceNumber("1", "TRACE0001", "9877281234"),),
            birth_date=date(1990, 1, 1),
            gender="F",
            dates=(DatePeriod("291", date(2026, 4, 12)),),
        ),
        service_inquiries=HEALTH_PLAN_COVERAGE,
    )
    assert second.control_number == "0002"
    assert second.created_time == time(12, 6)
    assert second.subscriber.entity.first_name == "JANE"
    assert second.subscriber.entity.identifier == "000123451"
    assert second.subscriber.birth_date == date(1988, 12, 31)
    assert second.subscriber.trace_numbers[0].reference == "TRACE0002"


def test_dependent_inquiry_puts_the_eq_loop_on_the_dependent() -> None:
    interchange = parse_270(sample("270_dependent_generic_lfh.edi"))

    assert interchange.header.authorization_qualifier == "03"
    assert interchange.header.acknowledgment_requested is True
    (inquiry,) = interchange.transactions
    assert inquiry.information_source == ABC_COMPANY
    assert inquiry.information_receiver == InformationReceiver(
        Entity("1P", "1", "JONES", "MARCUS", id_qualifier="SV", identifier="2000034")
    )
    assert inquiry.subscriber == Member(
        Entity("IL", "1", id_qualifier="MI", identifier="11122333301")
    )
    assert inquiry.dependent == MARY_SMITH_DEPENDENT
    assert inquiry.patient is inquiry.dependent
    assert inquiry.service_inquiries == HEALTH_PLAN_COVERAGE


def test_single_line_dependent_inquiry_with_gt_repetition_separator() -> None:
    interchange = parse_270(sample("270_dependent_physician_single_line_badx12.edi"))

    assert interchange.header.control_number == 10216
    assert interchange.groups[0].control_number == 20213
    (inquiry,) = interchange.transactions
    assert inquiry.control_number == "1235"
    assert inquiry.information_receiver.entity.identifier == "0202034"
    assert inquiry.subscriber.entity.name is None
    assert inquiry.subscriber.entity.identifier == "11122333301"
    assert inquiry.dependent == MARY_SMITH_DEPENDENT
    assert inquiry.service_inquiries == HEALTH_PLAN_COVERAGE


def test_inquiry_without_st03_takes_the_version_from_gs08_and_keeps_bht06() -> None:
    interchange = parse_270(sample("270_no_st03_bht06_edicli.edi"))

    (inquiry,) = interchange.transactions
    assert inquiry.transaction_type == "EH"
    assert inquiry.reference == "INQUIRY123"
    assert inquiry.information_source == Entity(
        "PR", "2", "SAMPLE INSURANCE COMPANY", id_qualifier="PI", identifier="66783"
    )
    assert inquiry.subscriber.entity == Entity(
        "IL", "1", "DOE", "JANE", "M", id_qualifier="MI", identifier="MEMBER123"
    )
    assert inquiry.subscriber.birth_date == date(1985, 2, 15)
    assert inquiry.subscriber.dates == ()
    assert inquiry.dependent is None


def test_realtime_single_medicaid_inquiry() -> None:
    interchange = parse_270(sample("270_realtime_single_dc_medicaid_x12edittools.edi"))

    assert interchange.header.created_time == time(12, 0)
    (inquiry,) = interchange.transactions
    assert inquiry.information_source == DC_MEDICAID
    assert inquiry.information_receiver == ACME_HOME_HEALTH
    assert inquiry.subscriber.entity.identifier == "000123450"
    assert inquiry.subscriber.dates == (DatePeriod("291", date(2026, 4, 12)),)
    assert inquiry.service_inquiries == HEALTH_PLAN_COVERAGE


def test_tr3_subscriber_example_one_segment_per_line() -> None:
    interchange = parse_270(sample("270_subscriber_generic_lfh.edi"))

    (inquiry,) = interchange.transactions
    assert inquiry == EligibilityInquiry(
        control_number="1234",
        reference="10001234",
        created_date=date(2006, 5, 1),
        created_time=time(13, 19),
        information_source=ABC_COMPANY,
        information_receiver=InformationReceiver(
            Entity("1P", "2", "BONE AND JOINT CLINIC", id_qualifier="SV", identifier="2000035")
        ),
        subscriber=Member(
            entity=Entity(
                "IL", "1", "SMITH", "ROBERT", id_qualifier="MI", identifier="11122333301"
            ),
            trace_numbers=(TraceNumber("1", "93175-012547", "9877281234"),),
            birth_date=date(1943, 5, 19),
            dates=(DatePeriod("291", date(2006, 5, 1)),),
        ),
        service_inquiries=HEALTH_PLAN_COVERAGE,
    )


def test_same_subscriber_example_on_one_line_gives_the_same_inquiry() -> None:
    one_line = parse_270(sample("270_subscriber_single_line_badx12.edi"))
    per_line = parse_270(sample("270_subscriber_generic_lfh.edi"))

    assert one_line.transactions == per_line.transactions
    assert one_line.header.sender_id == "123456789012345"


def test_two_transactions_tricare_date_range_and_place_of_service() -> None:
    interchange = parse_270(sample("270_two_transactions_tricare_and_dependent_mavidian.edi"))

    assert [t.control_number for t in interchange.transactions] == ["0001", "1235"]
    tricare, dependent_inquiry = interchange.transactions
    assert tricare.information_source.name == "TRICARE"
    assert tricare.subscriber.entity.middle_name == "S"
    assert tricare.subscriber.dates == (DatePeriod("291", date(2012, 11, 20), date(2012, 11, 27)),)
    assert tricare.service_inquiries == (
        ServiceInquiry(service_types=("47",), industry_codes=(IndustryCode("ZZ", "21"),)),
    )
    assert dependent_inquiry.subscriber.entity.identifier == "11122333307"
    assert dependent_inquiry.dependent == MARY_SMITH_DEPENDENT
