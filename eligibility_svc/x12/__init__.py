"""X12 005010X279A1 270/271 codec: tolerant parser, envelope-correct builders, 271 summary.

    parse_270(data) -> Interchange[EligibilityInquiry]
    parse_271(data) -> Interchange[EligibilityResponse]
    parse_x12(data) -> either, by the first ST01
    build_270(interchange, delimiters=DEFAULT_DELIMITERS, *, line_breaks=False) -> str
    build_271(interchange, delimiters=DEFAULT_DELIMITERS, *, line_breaks=False) -> str
    interchange_for(transactions, *, sender_id, receiver_id, control_number, created, ...)
    summarize(response, service_type="30") -> EligibilitySummary
    tokenize(data) -> TokenizedInterchange

Every failure is an `X12Error` (see `errors` for the tree); 4010 input raises
`UnsupportedVersion` with `is_4010` set.
"""

from eligibility_svc.x12.errors import (
    UnsupportedVersion,
    X12BuildError,
    X12ElementError,
    X12EnvelopeError,
    X12Error,
    X12StructureError,
    X12SyntaxError,
)
from eligibility_svc.x12.export import to_jsonable
from eligibility_svc.x12.model import (
    Address,
    Benefit,
    Contact,
    ContactNumber,
    CoverageStatus,
    DatePeriod,
    EligibilityInquiry,
    EligibilityResponse,
    EligibilityStatus,
    Entity,
    FunctionalGroup,
    IndustryCode,
    InformationReceiver,
    Interchange,
    InterchangeHeader,
    Member,
    PatientContext,
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
from eligibility_svc.x12.reader import parse_270, parse_271, parse_x12
from eligibility_svc.x12.summary import (
    EligibilitySummary,
    describe_rejection,
    summarize,
    summarize_patient,
)
from eligibility_svc.x12.tokenizer import Delimiters, Segment, TokenizedInterchange, tokenize
from eligibility_svc.x12.writer import DEFAULT_DELIMITERS, build_270, build_271, interchange_for

__all__ = [
    "DEFAULT_DELIMITERS",
    "Address",
    "Benefit",
    "Contact",
    "ContactNumber",
    "CoverageStatus",
    "DatePeriod",
    "Delimiters",
    "EligibilityInquiry",
    "EligibilityResponse",
    "EligibilityStatus",
    "EligibilitySummary",
    "Entity",
    "FunctionalGroup",
    "IndustryCode",
    "InformationReceiver",
    "Interchange",
    "InterchangeHeader",
    "Member",
    "PatientContext",
    "PatientResponse",
    "ProviderInfo",
    "ReceiverLoop",
    "Reference",
    "Rejection",
    "RelatedEntity",
    "Relationship",
    "Segment",
    "ServiceDelivery",
    "ServiceInquiry",
    "SourceLoop",
    "TokenizedInterchange",
    "TraceNumber",
    "UnsupportedVersion",
    "X12BuildError",
    "X12ElementError",
    "X12EnvelopeError",
    "X12Error",
    "X12StructureError",
    "X12SyntaxError",
    "build_270",
    "build_271",
    "describe_rejection",
    "interchange_for",
    "parse_270",
    "parse_271",
    "parse_x12",
    "summarize",
    "summarize_patient",
    "to_jsonable",
    "tokenize",
]
