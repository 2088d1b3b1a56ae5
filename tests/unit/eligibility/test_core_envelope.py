"""CAQH CORE envelopes: SOAP and MIME round trips, faults, refused DTDs, envelope rules."""

from __future__ import annotations

import pytest

from eligibility_svc.core_envelope import (
    PAYLOAD_TYPE_270,
    PAYLOAD_TYPE_271,
    CoreMessage,
    Credentials,
    EnvelopeError,
    SoapFault,
    mime_request_fields,
    parse_soap_request,
    parse_soap_response,
    request_from_fields,
    request_problems,
    soap_fault,
    soap_request,
    soap_response,
)

X12 = "ISA*00*          *00*          *ZZ*A &lt; B <X> &amp;~GS*HS~"
REQUEST = CoreMessage(
    payload_type=PAYLOAD_TYPE_270,
    payload_id="f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
    timestamp="2026-03-01T09:30:00Z",
    sender_id="MEDSCHED",
    receiver_id="SIMPAYER",
    payload=X12,
)
CREDENTIALS = Credentials("medsched", "s3cr&t<pass>")


def test_soap_request_round_trips_fields_and_username_token() -> None:
    body = soap_request(REQUEST, CREDENTIALS)
    assert b'xmlns:soapenv="http://www.w3.org/2003/05/soap-envelope"' in body
    assert b"COREEnvelopeRealTimeRequest" in body
    assert b"<CORERuleVersion>2.2.0</CORERuleVersion>" in body
    message, credentials = parse_soap_request(body)
    assert message == REQUEST
    assert credentials == CREDENTIALS


def test_soap_response_round_trips_error_code_and_payload() -> None:
    response = CoreMessage(
        payload_type=PAYLOAD_TYPE_271,
        payload_id=REQUEST.payload_id,
        timestamp=REQUEST.timestamp,
        sender_id="SIMPAYER",
        receiver_id="MEDSCHED",
        payload=X12,
        error_code="Success",
    )
    assert parse_soap_response(soap_response(response)) == response


def test_soap_fault_is_read_with_its_subcode() -> None:
    fault = SoapFault("Sender", "authentication failed", "wsse:FailedAuthentication")
    assert parse_soap_response(soap_fault(fault)) == fault


def test_core_element_is_found_whatever_its_prefix() -> None:
    body = (
        b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body>'
        b"<COREEnvelopeRealTimeResponse><PayloadType>X12_271_Response_005010X279A1"
        b"</PayloadType><ErrorCode>Success</ErrorCode><Payload><![CDATA[ISA*00~]]></Payload>"
        b"</COREEnvelopeRealTimeResponse></s:Body></s:Envelope>"
    )
    message = parse_soap_response(body)
    assert isinstance(message, CoreMessage)
    assert (message.payload_type, message.error_code, message.payload) == (
        PAYLOAD_TYPE_271,
        "Success",
        "ISA*00~",
    )


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"<<not xml", "not well-formed XML"),
        (b"<a/>", "not a SOAP 1.2 Envelope"),
        (
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]>'
            b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"/>',
            "document type declaration",
        ),
        (
            b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body/></s:Envelope>',
            "holds no COREEnvelopeRealTimeResponse",
        ),
    ],
)
def test_unreadable_envelopes_are_refused_precisely(body: bytes, problem: str) -> None:
    with pytest.raises(EnvelopeError, match=problem):
        parse_soap_response(body)


def test_mime_fields_round_trip_with_credentials() -> None:
    fields = mime_request_fields(REQUEST, CREDENTIALS)
    names = [name for name, _ in fields]
    assert names[-1] == "Payload"
    assert {"UserName", "Password", "CORERuleVersion"} <= set(names)
    message, credentials = request_from_fields(dict(fields))
    assert message == REQUEST
    assert credentials == CREDENTIALS


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"payload_id": ""}, "PayloadIDRequired"),
        ({"core_rule_version": "2.1.0"}, "VersionMismatch"),
        ({"payload_type": PAYLOAD_TYPE_271}, "PayloadTypeIllegal"),
        ({"processing_mode": "Batch"}, "ProcessingModeIllegal"),
        ({"payload_id": "42"}, "PayloadIDIllegal"),
        ({"timestamp": "yesterday"}, "TimeStampIllegal"),
    ],
)
def test_envelope_rules_name_the_field(change: dict[str, str], code: str) -> None:
    values = {**REQUEST.__dict__, **change}
    problem = request_problems(CoreMessage(**values), expected_payload=PAYLOAD_TYPE_270)
    assert problem is not None
    assert problem[0] == code
    assert request_problems(REQUEST, expected_payload=PAYLOAD_TYPE_270) is None
