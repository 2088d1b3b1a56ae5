"""Great-circle distances and bounding boxes for the availability search's radius filter."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import NamedTuple

__all__ = [
    "EARTH_RADIUS_KM",
    "KM_PER_MILE",
    "DistanceUnit",
    "Place",
    "bounding_box",
    "distance_km",
    "haversine_km",
    "km_to_unit",
    "place",
    "to_km",
]

# Mean Earth radius (IUGG); the spherical model is within 0.5% of the ellipsoid, far below
# the precision a "within 10 miles" filter needs.
EARTH_RADIUS_KM = 6371.0088
KM_PER_MILE = 1.609344
# Widens the box by ~0.1 mm so floating-point rounding never drops a point on the circle.
_BOX_PAD_DEGREES = 1e-9


class DistanceUnit(StrEnum):
    """Unit of a search radius and of the distances reported with results."""

    MI = "MI"
    KM = "KM"


def to_km(distance: float, unit: DistanceUnit) -> float:
    """`distance` in `unit`, converted to kilometres."""
    return distance * KM_PER_MILE if unit is DistanceUnit.MI else distance


def km_to_unit(distance_km: float, unit: DistanceUnit) -> float:
    """`distance_km` converted to `unit`."""
    return distance_km / KM_PER_MILE if unit is DistanceUnit.MI else distance_km


class Place(NamedTuple):
    """A point prepared for repeated distance computations: radians and cos(latitude)."""

    phi: float
    lmb: float
    cos_phi: float


def place(lat: float, lon: float) -> Place:
    """Prepare a point given in decimal degrees."""
    phi = math.radians(lat)
    return Place(phi, math.radians(lon), math.cos(phi))


def distance_km(a: Place, b: Place) -> float:
    """Great-circle (haversine) distance in km between two prepared points."""
    h = (
        math.sin((b.phi - a.phi) / 2) ** 2
        + a.cos_phi * b.cos_phi * math.sin((b.lmb - a.lmb) / 2) ** 2
    )
    # min() guards asin against rounding just above 1 for antipodal points.
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two points given in decimal degrees.

    Exactly `distance_km(place(lat1, lon1), place(lat2, lon2))`, so callers that prepare
    points get bit-identical results.
    """
    return distance_km(place(lat1, lon1), place(lat2, lon2))


def bounding_box(lat: float, lon: float, radius_km: float) -> tuple[float, float, float, float]:
    """(min_lat, max_lat, min_lon, max_lon) containing every point within `radius_km`.

    A cheap prefilter before `haversine_km`: it may include points farther than the radius,
    never excludes a closer one. Near the poles, or when the box would cross the
    antimeridian, longitude is left unbounded (-180..180) rather than wrapped.
    """
    dlat = math.degrees(radius_km / EARTH_RADIUS_KM) + _BOX_PAD_DEGREES
    min_lat = lat - dlat
    max_lat = lat + dlat
    if min_lat <= -90.0 or max_lat >= 90.0:
        return max(min_lat, -90.0), min(max_lat, 90.0), -180.0, 180.0
    # The exact half-span is asin(sin r / cos lat); taking the box edge nearest a pole instead
    # of the centre widens it a little more, which keeps the box conservative.
    widest = max(abs(min_lat), abs(max_lat))
    ratio = math.sin(radius_km / EARTH_RADIUS_KM) / math.cos(math.radians(widest))
    if ratio >= 1.0:
        return min_lat, max_lat, -180.0, 180.0
    dlon = math.degrees(math.asin(ratio)) + _BOX_PAD_DEGREES
    min_lon = lon - dlon
    max_lon = lon + dlon
    if min_lon < -180.0 or max_lon > 180.0:
        return min_lat, max_lat, -180.0, 180.0
    return min_lat, max_lat, min_lon, max_lon
