"""Plain JSON-ready dicts of the model, with code meanings added for human readers."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from datetime import date, time
from decimal import Decimal
from typing import Any

from eligibility_svc.x12 import codes
from eligibility_svc.x12.model import Benefit, DatePeriod, InterchangeHeader, Rejection

_REDACTED = "***"


def _rejection_extras(value: Any) -> dict[str, object]:
    return {"reason": value.reason, "follow_up": value.follow_up}


def _benefit_extras(value: Any) -> dict[str, object]:
    coverage = value.coverage
    return {
        "meaning": value.meaning,
        "coverage": None if coverage is None else coverage.value,
        "service_type_names": [codes.SERVICE_TYPES.get(s) for s in value.service_types],
        "coverage_level_meaning": codes.COVERAGE_LEVELS.get(value.coverage_level or ""),
        "time_period_meaning": codes.TIME_PERIODS.get(value.time_period or ""),
        "in_network": value.in_network,
    }


def _date_extras(value: Any) -> dict[str, object]:
    return {"meaning": value.meaning}


# Derived, human-readable fields added next to the codes they explain.
_EXTRAS: Mapping[type, Callable[[Any], dict[str, object]]] = {
    Rejection: _rejection_extras,
    Benefit: _benefit_extras,
    DatePeriod: _date_extras,
}
# ISA02/ISA04 may hold passwords agreed with the trading partner: never print them.
_SECRET_FIELDS = frozenset({(InterchangeHeader, "authorization"), (InterchangeHeader, "security")})


def to_jsonable(value: object) -> object:
    """Dataclasses to dicts, tuples to lists, dates/times to ISO text, Decimals to strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        result: dict[str, object] = {}
        for item in dataclasses.fields(value):
            child = getattr(value, item.name)
            if (type(value), item.name) in _SECRET_FIELDS and child:
                result[item.name] = _REDACTED
            else:
                result[item.name] = to_jsonable(child)
        extras = _EXTRAS.get(type(value))
        if extras is not None:
            result.update(extras(value))
        return result
    if isinstance(value, tuple | list):
        return [to_jsonable(item) for item in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        # A string keeps the exact amount; JSON numbers would round-trip through floats.
        return format(value, "f")
    return value
