"""CAQH CORE Phase II real-time envelopes (CORE rule 270, version 2.2.0): SOAP 1.2 and MIME.

One real-time exchange is one HTTP POST carrying the envelope fields

    PayloadType      X12_270_Request_005010X279A1 (request), X12_271_Response_005010X279A1
    ProcessingMode   RealTime
    PayloadID        a UUID naming this payload
    TimeStamp        xsd:dateTime, e.g. 2026-03-01T09:30:00Z
    SenderID         who sends (agreed with the trading partner)
    ReceiverID       who receives
    CORERuleVersion  2.2.0
    Payload          the X12 interchange
    ErrorCode        responses only: Success, or why the envelope was refused
    ErrorMessage     responses only: free text for the error

and credentials: in SOAP a WS-Security UsernameToken (PasswordText) in the header, the fields
as children of `COREEnvelopeRealTimeRequest`/`Response` (namespace of the CORE XSD, children
unqualified); in MIME `multipart/form-data` parts with those names plus `UserName` and
`Password`. Envelope problems are answered with an ErrorCode named after the field
(`<Field>Required`, `<Field>Illegal`); SOAP-level problems (bad XML, failed authentication)
with a SOAP 1.2 Fault.

XML from the network is parsed without DTDs: a document declaring one (the vehicle of entity
expansion attacks) is refused before any entity is read.
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NoReturn
from xml.parsers import expat

PAYLOAD_TYPE_270 = "X12_270_Request_005010X279A1"
PAYLOAD_TYPE_271 = "X12_271_Response_005010X279A1"
PAYLOAD_TYPE_999 = "X12_999_Response_005010X231A1"
PAYLOAD_TYPE_TA1 = "X12_TA1_Response_00501X231A1"
PROCESSING_MODE_REAL_TIME = "RealTime"
CORE_RULE_VERSION = "2.2.0"

SOAP_NS = "http://www.w3.org/2003/05/soap-envelope"
CORE_NS = "http://www.caqh.org/SOAP/WSDL/CORERule2.2.0.xsd"
WSSE_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
# The WS-Security token type URI of clear-text passwords (not a password itself).
_USERNAME_PROFILE_NS = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
)
PASSWORD_TEXT = f"{_USERNAME_PROFILE_NS}#PasswordText"
XML_NS = "http://www.w3.org/XML/1998/namespace"
SOAP_ACTION = "RealTimeTransaction"
SOAP_CONTENT_TYPE = f'application/soap+xml; charset=UTF-8; action="{SOAP_ACTION}"'

REQUEST_ELEMENT = "COREEnvelopeRealTimeRequest"
RESPONSE_ELEMENT = "COREEnvelopeRealTimeResponse"

SUCCESS = "Success"
UNAUTHORIZED = "UnAuthorized"
VERSION_MISMATCH = "VersionMismatch"

# Order of the fields in the schema; also the order of the MIME parts.
REQUEST_FIELDS = (
    "PayloadType",
    "ProcessingMode",
    "PayloadID",
    "TimeStamp",
    "SenderID",
    "ReceiverID",
    "CORERuleVersion",
    "Payload",
)
RESPONSE_FIELDS = (*REQUEST_FIELDS, "ErrorCode", "ErrorMessage")
MIME_USERNAME = "UserName"
MIME_PASSWORD = "Password"  # noqa: S105 (a field name, not a password)

_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?")
_UUID = re.compile(r"[0-9A-Fa-f]{8}-([0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}")


class EnvelopeError(ValueError):
    """An envelope cannot be read; the message names the part, never a value (PHI, secrets)."""


@dataclass(frozen=True)
class Credentials:
    """A CORE user name and password (WS-Security UsernameToken or MIME fields)."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class CoreMessage:
    """The envelope fields of a request or response (ErrorCode/ErrorMessage: responses)."""

    payload_type: str
    payload_id: str
    timestamp: str
    sender_id: str
    receiver_id: str
    payload: str = field(repr=False)
    processing_mode: str = PROCESSING_MODE_REAL_TIME
    core_rule_version: str = CORE_RULE_VERSION
    error_code: str = ""
    error_message: str = ""

    def fields(self, names: Iterable[str]) -> list[tuple[str, str]]:
        values = {
            "PayloadType": self.payload_type,
            "ProcessingMode": self.processing_mode,
            "PayloadID": self.payload_id,
            "TimeStamp": self.timestamp,
            "SenderID": self.sender_id,
            "ReceiverID": self.receiver_id,
            "CORERuleVersion": self.core_rule_version,
            "Payload": self.payload,
            "ErrorCode": self.error_code,
            "ErrorMessage": self.error_message,
        }
        return [(name, values[name]) for name in names]


@dataclass(frozen=True)
class SoapFault:
    """A SOAP 1.2 Fault: `Sender` or `Receiver`, an optional subcode and the reason text."""

    code: str
    reason: str
    subcode: str = ""


def new_payload_id() -> str:
    return str(uuid.uuid4())


def timestamp(moment: datetime) -> str:
    """xsd:dateTime in UTC with seconds, as CORE examples write it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def request_problems(message: CoreMessage, *, expected_payload: str) -> tuple[str, str] | None:
    """The first envelope problem of a request as (ErrorCode, ErrorMessage), or None.

    Used by the payer simulator to answer exactly as a CORE-certified receiver would.
    """
    required = (
        ("PayloadType", message.payload_type),
        ("ProcessingMode", message.processing_mode),
        ("PayloadID", message.payload_id),
        ("TimeStamp", message.timestamp),
        ("SenderID", message.sender_id),
        ("ReceiverID", message.receiver_id),
        ("CORERuleVersion", message.core_rule_version),
        ("Payload", message.payload),
    )
    for name, value in required:
        if not value:
            return f"{name}Required", f"{name} is required"
    if message.core_rule_version != CORE_RULE_VERSION:
        return VERSION_MISMATCH, f"CORERuleVersion must be {CORE_RULE_VERSION}"
    if message.payload_type != expected_payload:
        return "PayloadTypeIllegal", f"PayloadType must be {expected_payload}"
    if message.processing_mode != PROCESSING_MODE_REAL_TIME:
        return "ProcessingModeIllegal", f"ProcessingMode must be {PROCESSING_MODE_REAL_TIME}"
    if not _UUID.fullmatch(message.payload_id):
        return "PayloadIDIllegal", "PayloadID must be a UUID"
    if not _TIMESTAMP.fullmatch(message.timestamp):
        return "TimeStampIllegal", "TimeStamp must be an xsd:dateTime"
    return None


# --- SOAP ------------------------------------------------------------------------------------


def soap_request(message: CoreMessage, credentials: Credentials) -> bytes:
    """A SOAP 1.2 envelope with the UsernameToken header and the CORE request body."""
    envelope = ET.Element(f"{{{SOAP_NS}}}Envelope")
    header = ET.SubElement(envelope, f"{{{SOAP_NS}}}Header")
    security = ET.SubElement(
        header, f"{{{WSSE_NS}}}Security", {f"{{{SOAP_NS}}}mustUnderstand": "true"}
    )
    token = ET.SubElement(security, f"{{{WSSE_NS}}}UsernameToken")
    ET.SubElement(token, f"{{{WSSE_NS}}}Username").text = credentials.username
    ET.SubElement(
        token, f"{{{WSSE_NS}}}Password", {"Type": PASSWORD_TEXT}
    ).text = credentials.password
    body = ET.SubElement(envelope, f"{{{SOAP_NS}}}Body")
    _core_element(body, REQUEST_ELEMENT, message.fields(REQUEST_FIELDS))
    return _serialize(envelope)


def soap_response(message: CoreMessage) -> bytes:
    """A SOAP 1.2 envelope carrying a CORE response."""
    envelope = ET.Element(f"{{{SOAP_NS}}}Envelope")
    body = ET.SubElement(envelope, f"{{{SOAP_NS}}}Body")
    _core_element(body, RESPONSE_ELEMENT, message.fields(RESPONSE_FIELDS))
    return _serialize(envelope)


def soap_fault(fault: SoapFault) -> bytes:
    """A SOAP 1.2 Fault envelope."""
    envelope = ET.Element(f"{{{SOAP_NS}}}Envelope")
    body = ET.SubElement(envelope, f"{{{SOAP_NS}}}Body")
    element = ET.SubElement(body, f"{{{SOAP_NS}}}Fault")
    code = ET.SubElement(element, f"{{{SOAP_NS}}}Code")
    ET.SubElement(code, f"{{{SOAP_NS}}}Value").text = f"env:{fault.code}"
    if fault.subcode:
        sub = ET.SubElement(code, f"{{{SOAP_NS}}}Subcode")
        ET.SubElement(sub, f"{{{SOAP_NS}}}Value").text = fault.subcode
    reason = ET.SubElement(element, f"{{{SOAP_NS}}}Reason")
    text = ET.SubElement(reason, f"{{{SOAP_NS}}}Text", {f"{{{XML_NS}}}lang": "en"})
    text.text = fault.reason
    return _serialize(envelope)


def parse_soap_request(data: bytes) -> tuple[CoreMessage, Credentials | None]:
    """The CORE request and the UsernameToken (None when absent) of a SOAP envelope."""
    envelope = _envelope(data)
    body = _child(envelope, SOAP_NS, "Body", "the SOAP Body")
    request = _core_child(body, REQUEST_ELEMENT)
    return _message(request, REQUEST_FIELDS), _username_token(envelope)


def parse_soap_response(data: bytes) -> CoreMessage | SoapFault:
    """The CORE response of a SOAP envelope, or the Fault it carries."""
    envelope = _envelope(data)
    body = _child(envelope, SOAP_NS, "Body", "the SOAP Body")
    fault = _optional_child(body, SOAP_NS, "Fault")
    if fault is not None:
        return _fault(fault)
    response = _core_child(body, RESPONSE_ELEMENT)
    return _message(response, RESPONSE_FIELDS)


def _core_element(parent: ET.Element, name: str, values: list[tuple[str, str]]) -> None:
    element = ET.SubElement(parent, f"{{{CORE_NS}}}{name}")
    for tag, value in values:
        # The CORE schema leaves its children unqualified.
        ET.SubElement(element, tag).text = value


def _serialize(envelope: ET.Element) -> bytes:
    ET.register_namespace("soapenv", SOAP_NS)
    ET.register_namespace("wsse", WSSE_NS)
    ET.register_namespace("cor", CORE_NS)
    text: bytes = ET.tostring(envelope, encoding="utf-8", xml_declaration=True)
    return text


def _envelope(data: bytes) -> ET.Element:
    root = _parse_xml(data)
    if root.tag != f"{{{SOAP_NS}}}Envelope":
        raise EnvelopeError("the document is not a SOAP 1.2 Envelope")
    return root


def _child(parent: ET.Element, namespace: str, name: str, what: str) -> ET.Element:
    found = _optional_child(parent, namespace, name)
    if found is None:
        raise EnvelopeError(f"{what} is missing")
    return found


def _optional_child(parent: ET.Element, namespace: str, name: str) -> ET.Element | None:
    return parent.find(f"{{{namespace}}}{name}")


def _core_child(body: ET.Element, name: str) -> ET.Element:
    # Some partners qualify the CORE element with another prefix or none: match the local name.
    for child in body:
        if _local(child.tag) == name:
            return child
    raise EnvelopeError(f"the SOAP Body holds no {name}")


def _message(element: ET.Element, names: tuple[str, ...]) -> CoreMessage:
    values = {name: "" for name in names}
    for child in element:
        local = _local(child.tag)
        if local in values:
            values[local] = (child.text or "").strip()
    return _from_values(values)


def _from_values(values: Mapping[str, str]) -> CoreMessage:
    return CoreMessage(
        payload_type=values.get("PayloadType", ""),
        processing_mode=values.get("ProcessingMode", ""),
        payload_id=values.get("PayloadID", ""),
        timestamp=values.get("TimeStamp", ""),
        sender_id=values.get("SenderID", ""),
        receiver_id=values.get("ReceiverID", ""),
        core_rule_version=values.get("CORERuleVersion", ""),
        payload=values.get("Payload", ""),
        error_code=values.get("ErrorCode", ""),
        error_message=values.get("ErrorMessage", ""),
    )


def _username_token(envelope: ET.Element) -> Credentials | None:
    token = envelope.find(f"{{{SOAP_NS}}}Header/{{{WSSE_NS}}}Security/{{{WSSE_NS}}}UsernameToken")
    if token is None:
        return None
    username = token.find(f"{{{WSSE_NS}}}Username")
    password = token.find(f"{{{WSSE_NS}}}Password")
    if username is None or password is None:
        return None
    password_type = password.get("Type", PASSWORD_TEXT)
    if password_type != PASSWORD_TEXT:
        # Digest passwords need a nonce store; CORE 2.2.0 only requires PasswordText.
        raise EnvelopeError("only PasswordText UsernameTokens are supported")
    return Credentials((username.text or "").strip(), password.text or "")


def _fault(element: ET.Element) -> SoapFault:
    code = element.findtext(f"{{{SOAP_NS}}}Code/{{{SOAP_NS}}}Value", default="")
    subcode = element.findtext(
        f"{{{SOAP_NS}}}Code/{{{SOAP_NS}}}Subcode/{{{SOAP_NS}}}Value", default=""
    )
    reason = element.findtext(f"{{{SOAP_NS}}}Reason/{{{SOAP_NS}}}Text", default="")
    return SoapFault(code=code.rpartition(":")[2], reason=reason.strip(), subcode=subcode.strip())


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _refuse_dtd(*_: object) -> NoReturn:
    raise EnvelopeError("XML with a document type declaration is refused")


def _parse_xml(data: bytes) -> ET.Element:
    """An element tree from `data` via expat, refusing DTDs and entity declarations."""
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")

    def qualified(name: str) -> str:
        return "{" + name if "}" in name else name

    def start(name: str, attributes: dict[str, str]) -> None:
        builder.start(qualified(name), {qualified(k): v for k, v in attributes.items()})

    def end(name: str) -> None:
        builder.end(qualified(name))

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.buffer_text = True
    try:
        parser.Parse(data, True)
        return builder.close()
    except expat.ExpatError as e:
        raise EnvelopeError(f"not well-formed XML (line {e.lineno}, column {e.offset})") from None
    except AssertionError:
        raise EnvelopeError("not well-formed XML") from None


# --- MIME ------------------------------------------------------------------------------------


def mime_request_fields(message: CoreMessage, credentials: Credentials) -> list[tuple[str, str]]:
    """The form fields of a CORE MIME multipart request, in schema order."""
    return [
        *message.fields(REQUEST_FIELDS[:-1]),
        (MIME_USERNAME, credentials.username),
        (MIME_PASSWORD, credentials.password),
        ("Payload", message.payload),
    ]


def mime_response_fields(message: CoreMessage) -> list[tuple[str, str]]:
    """The form fields of a CORE MIME multipart response."""
    return message.fields(RESPONSE_FIELDS)


def request_from_fields(values: Mapping[str, str]) -> tuple[CoreMessage, Credentials | None]:
    """The CORE request and credentials from MIME form fields (names as in CORE)."""
    username, password = values.get(MIME_USERNAME), values.get(MIME_PASSWORD)
    credentials = None if username is None or password is None else Credentials(username, password)
    return _from_values({k: v.strip() for k, v in values.items()}), credentials


def response_from_fields(values: Mapping[str, str]) -> CoreMessage:
    """The CORE response from MIME form fields."""
    return _from_values({k: v.strip() for k, v in values.items()})
