"""Code lists of the 005010X279A1 TR3 used to validate and explain 270/271 elements."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType


def _frozen(table: dict[str, str]) -> Mapping[str, str]:
    return MappingProxyType(table)


# EB01 Eligibility or Benefit Information Code. 1-5 say the coverage is active, 6-8 inactive.
ELIGIBILITY_CODES: Mapping[str, str] = _frozen(
    {
        "1": "Active Coverage",
        "2": "Active - Full Risk Capitation",
        "3": "Active - Services Capitated",
        "4": "Active - Services Capitated to Primary Care Physician",
        "5": "Active - Pending Investigation",
        "6": "Inactive",
        "7": "Inactive - Pending Eligibility Update",
        "8": "Inactive - Pending Investigation",
        "A": "Co-Insurance",
        "B": "Co-Payment",
        "C": "Deductible",
        "CB": "Coverage Basis",
        "D": "Benefit Description",
        "E": "Exclusions",
        "F": "Limitations",
        "G": "Out of Pocket (Stop Loss)",
        "H": "Unlimited",
        "I": "Non-Covered",
        "J": "Cost Containment",
        "K": "Reserve",
        "L": "Primary Care Provider",
        "M": "Pre-existing Condition",
        "MC": "Managed Care Coordinator",
        "N": "Services Restricted to Following Provider",
        "O": "Not Deemed a Medical Necessity",
        "P": "Benefit Disclaimer",
        "Q": "Second Surgical Opinion Required",
        "R": "Other or Additional Payor",
        "S": "Prior Year(s) History",
        "T": "Card(s) Reported Lost/Stolen",
        "U": "Contact Following Entity for Eligibility or Benefit Information",
        "V": "Cannot Process",
        "W": "Other Source of Data",
        "X": "Health Care Facility",
        "Y": "Spend Down",
    }
)
ACTIVE_CODES = frozenset({"1", "2", "3", "4", "5"})
INACTIVE_CODES = frozenset({"6", "7", "8"})

# EB01 codes the normalized result exposes as cost-sharing amounts.
COPAY = "B"
COINSURANCE = "A"
DEDUCTIBLE = "C"
OUT_OF_POCKET = "G"
NON_COVERED = "I"

# EB02 / EQ03 Coverage Level Code.
COVERAGE_LEVELS: Mapping[str, str] = _frozen(
    {
        "CHD": "Children Only",
        "DEP": "Dependents Only",
        "ECH": "Employee and Children",
        "EMP": "Employee Only",
        "ESP": "Employee and Spouse",
        "FAM": "Family",
        "IND": "Individual",
        "SPC": "Spouse and Children",
        "SPO": "Spouse Only",
    }
)

# EB06 Time Period Qualifier.
TIME_PERIODS: Mapping[str, str] = _frozen(
    {
        "6": "Hour",
        "7": "Day",
        "13": "24 Hours",
        "21": "Years",
        "22": "Service Year",
        "23": "Calendar Year",
        "24": "Year to Date",
        "25": "Contract",
        "26": "Episode",
        "27": "Visit",
        "28": "Outlier",
        "29": "Remaining",
        "30": "Exceeded",
        "31": "Not Exceeded",
        "32": "Lifetime",
        "33": "Lifetime Remaining",
        "34": "Month",
        "35": "Week",
        "36": "Admission",
    }
)

# EB12 In Plan Network Indicator (W: the benefit applies in and out of network alike).
NETWORK_INDICATORS: Mapping[str, str] = _frozen(
    {"Y": "In Network", "N": "Out of Network", "U": "Unknown", "W": "Not Applicable"}
)
YES_NO_UNKNOWN: Mapping[str, str] = _frozen({"Y": "Yes", "N": "No", "U": "Unknown"})

# AAA03 Reject Reason Code, as used across the 271 loops (2000A/2100A/2100B/2100C/2100D/2110).
REJECT_REASONS: Mapping[str, str] = _frozen(
    {
        "04": "Authorized Quantity Exceeded",
        "15": "Required application data missing",
        "33": "Input Errors",
        "35": "Out of Network",
        "41": "Authorization/Access Restrictions",
        "42": "Unable to Respond at Current Time",
        "43": "Invalid/Missing Provider Identification",
        "44": "Invalid/Missing Provider Name",
        "45": "Invalid/Missing Provider Specialty",
        "46": "Invalid/Missing Provider Phone Number",
        "47": "Invalid/Missing Provider State",
        "48": "Invalid/Missing Referring Provider Identification Number",
        "49": "Provider is Not Primary Care Physician",
        "50": "Provider Ineligible for Inquiries",
        "51": "Provider Not on File",
        "52": "Service Dates Not Within Provider Plan Enrollment",
        "53": "Inquired Benefit Inconsistent with Provider Type",
        "54": "Inappropriate Product/Service ID Qualifier",
        "55": "Inappropriate Product/Service ID",
        "56": "Inappropriate Date",
        "57": "Invalid/Missing Date(s) of Service",
        "58": "Invalid/Missing Date-of-Birth",
        "60": "Date of Birth Follows Date(s) of Service",
        "61": "Date of Death Precedes Date(s) of Service",
        "62": "Date of Service Not Within Allowable Inquiry Period",
        "63": "Date of Service in Future",
        "64": "Invalid/Missing Patient ID",
        "65": "Invalid/Missing Patient Name",
        "66": "Invalid/Missing Patient Gender Code",
        "67": "Patient Not Found",
        "68": "Duplicate Patient ID Number",
        "69": "Inconsistent with Patient's Age",
        "70": "Inconsistent with Patient's Gender",
        "71": "Patient Birth Date Does Not Match That for the Patient on the Database",
        "72": "Invalid/Missing Subscriber/Insured ID",
        "73": "Invalid/Missing Subscriber/Insured Name",
        "74": "Invalid/Missing Subscriber/Insured Gender Code",
        "75": "Subscriber/Insured Not Found",
        "76": "Duplicate Subscriber/Insured ID Number",
        "77": "Subscriber Found, Patient Not Found",
        "78": "Subscriber/Insured Not in Group/Plan Identified",
        "79": "Invalid Participant Identification",
        "80": "No Response received - Transaction Terminated",
        "97": "Invalid or Missing Provider Address",
        "98": "Experimental Service or Procedure",
        "AA": "Authorization Number Not Found",
        "AE": "Requires Primary Care Physician Authorization",
        "AF": "Invalid/Missing Diagnosis Code(s)",
        "AG": "Invalid/Missing Procedure Code(s)",
        "AO": "Additional Patient Condition Information Required",
        "CI": "Certification Information Does Not Match Patient",
        "E8": "Requires Medical Review",
        "IA": "Invalid Authorization Number Format",
        "MA": "Missing Authorization",
        "T4": "Payer Name or Identifier Missing",
    }
)

# Reject reasons that mean "the payer could not match the patient from the identifiers sent"
# (member id, name, birth date, gender): the summary reports these as NOT_FOUND, because the
# fix is to correct the patient's demographics, not to retry or call the payer.
PATIENT_IDENTITY_REJECTIONS = frozenset(
    {"58", "64", "65", "66", "67", "68", "71", "72", "73", "74", "75", "76", "77", "78"}
)

# AAA04 Follow-up Action Code.
FOLLOW_UP_ACTIONS: Mapping[str, str] = _frozen(
    {
        "C": "Please Correct and Resubmit",
        "N": "Resubmission Not Allowed",
        "P": "Please Resubmit Original Transaction",
        "R": "Resubmission Allowed",
        "S": "Do Not Resubmit; Inquiry Initiated to a Third Party",
        "W": "Please Wait 30 Days and Resubmit",
        "X": "Please Wait 10 Days and Resubmit",
        "Y": "Do Not Resubmit; We Will Hold Your Request and Respond Again Shortly",
    }
)

# DTP01 Date/Time Qualifier values seen in 270/271 loops.
DATE_QUALIFIERS: Mapping[str, str] = _frozen(
    {
        "096": "Discharge",
        "102": "Issue",
        "152": "Effective Date of Change",
        "193": "Period Start",
        "194": "Period End",
        "198": "Completion",
        "290": "Coordination of Benefits",
        "291": "Plan",
        "292": "Benefit",
        "295": "Primary Care Provider",
        "304": "Latest Visit or Consultation",
        "307": "Eligibility",
        "318": "Added",
        "340": "COBRA Begin",
        "341": "COBRA End",
        "342": "Premium Paid to Date Begin",
        "343": "Premium Paid to Date End",
        "346": "Plan Begin",
        "347": "Plan End",
        "348": "Benefit Begin",
        "349": "Benefit End",
        "356": "Eligibility Begin",
        "357": "Eligibility End",
        "382": "Enrollment",
        "435": "Admission",
        "442": "Date of Death",
        "458": "Certification",
        "472": "Service",
        "539": "Policy Effective",
        "540": "Policy Expiration",
        "636": "Date of Last Update",
        "771": "Status",
    }
)
COVERAGE_BEGIN_QUALIFIERS = ("346", "356", "348")
COVERAGE_END_QUALIFIERS = ("347", "357", "349")
# 291 (Plan) and 307 (Eligibility) may carry the whole coverage period as one RD8 range.
COVERAGE_PERIOD_QUALIFIERS = ("291", "307", "292")

# REF01 qualifiers that carry the plan's group (or group-or-policy) number, best first.
GROUP_NUMBER_QUALIFIERS = ("6P", "1L", "IG")
PLAN_NUMBER_QUALIFIER = "18"

# EB03 / EQ01 Service Type Code: the common ones, for display. Unknown codes are accepted.
SERVICE_TYPES: Mapping[str, str] = _frozen(
    {
        "1": "Medical Care",
        "2": "Surgical",
        "3": "Consultation",
        "4": "Diagnostic X-Ray",
        "5": "Diagnostic Lab",
        "6": "Radiation Therapy",
        "7": "Anesthesia",
        "12": "Durable Medical Equipment Purchase",
        "18": "Durable Medical Equipment Rental",
        "30": "Health Benefit Plan Coverage",
        "33": "Chiropractic",
        "35": "Dental Care",
        "42": "Home Health Care",
        "45": "Hospice",
        "47": "Hospital",
        "48": "Hospital - Inpatient",
        "50": "Hospital - Outpatient",
        "51": "Hospital - Emergency Accident",
        "52": "Hospital - Emergency Medical",
        "53": "Hospital - Ambulatory Surgical",
        "54": "Long Term Care",
        "56": "Medically Related Transportation",
        "62": "MRI/CAT Scan",
        "65": "Newborn Care",
        "68": "Well Baby Care",
        "69": "Maternity",
        "73": "Diagnostic Medical",
        "76": "Dialysis",
        "78": "Chemotherapy",
        "80": "Immunizations",
        "81": "Routine Physical",
        "82": "Family Planning",
        "86": "Emergency Services",
        "88": "Pharmacy",
        "93": "Podiatry",
        "96": "Professional (Physician)",
        "98": "Professional (Physician) Visit - Office",
        "99": "Professional (Physician) Visit - Inpatient",
        "A0": "Professional (Physician) Visit - Outpatient",
        "A4": "Psychiatric",
        "A6": "Psychotherapy",
        "A7": "Psychiatric - Inpatient",
        "A8": "Psychiatric - Outpatient",
        "AD": "Occupational Therapy",
        "AE": "Physical Medicine",
        "AF": "Speech Therapy",
        "AG": "Skilled Nursing Care",
        "AI": "Substance Abuse",
        "AL": "Vision (Optometry)",
        "DM": "Durable Medical Equipment",
        "MH": "Mental Health",
        "PT": "Physical Therapy",
        "UC": "Urgent Care",
    }
)
HEALTH_BENEFIT_PLAN_COVERAGE = "30"

# NM101 Entity Identifier Codes allowed per loop.
SOURCE_ENTITIES = frozenset({"2B", "36", "GP", "P5", "PR"})
RECEIVER_ENTITIES = frozenset({"1P", "2B", "36", "80", "FA", "GP", "P5", "PR"})
SUBSCRIBER_ENTITY = "IL"
DEPENDENT_ENTITY = "03"

# HL03 Hierarchical Level Code.
LEVEL_SOURCE = "20"
LEVEL_RECEIVER = "21"
LEVEL_SUBSCRIBER = "22"
LEVEL_DEPENDENT = "23"
LEVEL_NAMES: Mapping[str, str] = _frozen(
    {
        LEVEL_SOURCE: "information source",
        LEVEL_RECEIVER: "information receiver",
        LEVEL_SUBSCRIBER: "subscriber",
        LEVEL_DEPENDENT: "dependent",
    }
)
PARENT_LEVEL: Mapping[str, str] = _frozen(
    {
        LEVEL_RECEIVER: LEVEL_SOURCE,
        LEVEL_SUBSCRIBER: LEVEL_RECEIVER,
        LEVEL_DEPENDENT: LEVEL_SUBSCRIBER,
    }
)

# Implementation convention references (GS08 / ST03).
VERSION_5010 = "005010X279A1"
ACCEPTED_5010_VERSIONS = frozenset({"005010X279A1", "005010X279"})
VERSION_4010_PREFIX = "004010"

GENDERS: Mapping[str, str] = _frozen({"F": "Female", "M": "Male", "U": "Unknown"})
