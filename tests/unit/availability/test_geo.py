"""Great-circle distances, unit conversion and the radius prefilter box."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from availability_svc.geo import (
    DistanceUnit,
    bounding_box,
    haversine_km,
    km_to_unit,
    to_km,
)


def test_known_distances() -> None:
    # One degree of latitude on the mean sphere, and New York to Los Angeles.
    assert haversine_km(40.0, -75.0, 41.0, -75.0) == pytest.approx(111.195, abs=0.01)
    assert haversine_km(40.7128, -74.0060, 34.0522, -118.2437) == pytest.approx(3936, rel=0.005)
    assert haversine_km(10.0, 20.0, 10.0, 20.0) == 0.0


def test_units_convert_both_ways() -> None:
    assert to_km(10.0, DistanceUnit.MI) == pytest.approx(16.09344)
    assert to_km(10.0, DistanceUnit.KM) == 10.0
    assert km_to_unit(16.09344, DistanceUnit.MI) == pytest.approx(10.0)


@given(
    lat=st.floats(min_value=-80, max_value=80),
    lon=st.floats(min_value=-179, max_value=179),
    radius_km=st.floats(min_value=0.1, max_value=500),
    bearing=st.floats(min_value=0, max_value=2 * math.pi),
)
def test_box_contains_every_point_on_the_circle(
    lat: float, lon: float, radius_km: float, bearing: float
) -> None:
    # Destination point at `radius_km` along `bearing` (spherical formula).
    delta = radius_km / 6371.0088
    phi1, lmb1 = math.radians(lat), math.radians(lon)
    phi2 = math.asin(
        math.sin(phi1) * math.cos(delta) + math.cos(phi1) * math.sin(delta) * math.cos(bearing)
    )
    lmb2 = lmb1 + math.atan2(
        math.sin(bearing) * math.sin(delta) * math.cos(phi1),
        math.cos(delta) - math.sin(phi1) * math.sin(phi2),
    )
    point_lat, point_lon = math.degrees(phi2), math.degrees(lmb2)
    min_lat, max_lat, min_lon, max_lon = bounding_box(lat, lon, radius_km)
    assert min_lat <= point_lat <= max_lat
    if min_lon > -180 or max_lon < 180:
        assert min_lon <= point_lon <= max_lon


def test_box_near_the_antimeridian_is_unbounded_in_longitude() -> None:
    assert bounding_box(0.0, 179.9, 50.0)[2:] == (-180.0, 180.0)
