"""Geodesy and metrics: distances checked against an independent formula and published values,
accuracies against fixtures whose distances are chosen by hand."""

import json
import math

import pytest
from geographiclib.geodesic import Geodesic

from geolocsft.geo import THRESHOLDS_KM, consensus, distance_km, score, to_dms

WGS84_A = 6378137.0
WGS84_F = 1 / 298.257223563


def vincenty_km(lat1, lon1, lat2, lon2):
    """Vincenty's inverse formula, written out independently of geographiclib."""
    a, f = WGS84_A, WGS84_F
    b = a * (1 - f)
    u1 = math.atan((1 - f) * math.tan(math.radians(lat1)))
    u2 = math.atan((1 - f) * math.tan(math.radians(lat2)))
    lon_diff = math.radians(lon2 - lon1)
    lam = lon_diff
    for _ in range(200):
        sin_l, cos_l = math.sin(lam), math.cos(lam)
        sin_sigma = math.hypot(math.cos(u2) * sin_l,
                               math.cos(u1) * math.sin(u2) - math.sin(u1) * math.cos(u2) * cos_l)
        cos_sigma = math.sin(u1) * math.sin(u2) + math.cos(u1) * math.cos(u2) * cos_l
        sigma = math.atan2(sin_sigma, cos_sigma)
        sin_alpha = math.cos(u1) * math.cos(u2) * sin_l / sin_sigma
        cos2_alpha = 1 - sin_alpha**2
        cos_2sm = cos_sigma - 2 * math.sin(u1) * math.sin(u2) / cos2_alpha
        c = f / 16 * cos2_alpha * (4 + f * (4 - 3 * cos2_alpha))
        prev = lam
        lam = lon_diff + (1 - c) * f * sin_alpha * (
            sigma + c * sin_sigma * (cos_2sm + c * cos_sigma * (-1 + 2 * cos_2sm**2)))
        if abs(lam - prev) < 1e-13:
            break
    u_sq = cos2_alpha * (a * a - b * b) / (b * b)
    big_a = 1 + u_sq / 16384 * (4096 + u_sq * (-768 + u_sq * (320 - 175 * u_sq)))
    big_b = u_sq / 1024 * (256 + u_sq * (-128 + u_sq * (74 - 47 * u_sq)))
    delta = big_b * sin_sigma * (cos_2sm + big_b / 4 * (
        cos_sigma * (-1 + 2 * cos_2sm**2)
        - big_b / 6 * cos_2sm * (-3 + 4 * sin_sigma**2) * (-3 + 4 * cos_2sm**2)))
    return b * big_a * (sigma - delta) / 1000


def test_paris_berlin_matches_vincenty_and_is_about_880_km():
    d = distance_km(48.8566, 2.3522, 52.5200, 13.4050)
    assert d == pytest.approx(vincenty_km(48.8566, 2.3522, 52.5200, 13.4050), abs=1e-6)
    assert 879.6 < d < 879.8
    # the spherical (haversine, R = 6371 km) figure is within half a percent
    p1, p2 = math.radians(48.8566), math.radians(52.52)
    dl = math.radians(13.4050 - 2.3522)
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    assert d == pytest.approx(2 * 6371 * math.asin(math.sqrt(h)), rel=5e-3)


def test_known_values():
    # one degree along the equator is pi * a / 180
    assert distance_km(0, 0, 0, 1) == pytest.approx(math.pi * WGS84_A / 180 / 1000, abs=1e-9)
    # GeographicLib's documented example: Wellington to Salamanca, 19959679.267353 m
    assert distance_km(-41.32, 174.81, 40.96, -5.50) == pytest.approx(19959.679267, abs=1e-6)
    assert distance_km(10, 20, 10, 20) == 0.0
    # symmetric, and across the antimeridian the short way
    assert distance_km(0, 179.5, 0, -179.5) == pytest.approx(math.pi * WGS84_A / 180 / 1000)


@pytest.mark.parametrize("bad", [(91, 0, 0, 0), (0, 181, 0, 0), (0, 0, float("nan"), 0)])
def test_distance_rejects_bad_coordinates(bad):
    with pytest.raises(ValueError):
        distance_km(*bad)


def point_at(lat, lon, km, azimuth=90.0):
    """The point `km` from (lat, lon) along `azimuth`."""
    out = Geodesic.WGS84.Direct(lat, lon, azimuth, km * 1000)
    return out["lat2"], out["lon2"]


# Ten rows at chosen distances (km); None is an unparsed prediction.
FIXTURE_KM = [0.5, 3, 10, 30, 100, 300, 1000, 2000, 5000, None]
TRUTHS = [(45.0, 7.0), (-33.9, 18.4), (35.7, 139.7), (40.7, -74.0), (51.5, -0.1),
          (-22.9, -43.2), (55.8, 37.6), (1.3, 103.8), (19.4, -99.1), (0.0, 10.0)]


def fixture_rows():
    rows = []
    for (lat, lon), km in zip(TRUTHS, FIXTURE_KM):
        if km is None:
            rows.append((None, None, lat, lon))
        else:
            rows.append((*point_at(lat, lon, km, azimuth=30.0), lat, lon))
    return rows


def test_known_accuracies_on_fixture():
    s = score(fixture_rows(), bootstrap=0)
    assert (s.n, s.parsed) == (10, 9)
    # hits: @1 {0.5}, @25 {+3, 10}, @200 {+30, 100}, @750 {+300}, @2500 {+1000, 2000}
    assert s.acc == pytest.approx({1: 0.1, 25: 0.3, 200: 0.5, 750: 0.6, 2500: 0.8})
    parsed = [km for km in FIXTURE_KM if km is not None]
    assert s.median_km == pytest.approx(100, abs=1e-6)  # the 5th of 9 sorted distances
    assert s.mean_km == pytest.approx(sum(parsed) / 9, abs=1e-6)
    assert s.intervals is None
    assert s.parse_failure_rate == pytest.approx(0.1)


def test_origin_mode_scores_unparsed_at_null_island():
    s = score(fixture_rows(), unparsed="origin", bootstrap=0)
    # the unparsed row's truth (0, 10) is 10 equatorial degrees from (0, 0): ~1113 km
    origin_km = 10 * math.pi * WGS84_A / 180 / 1000
    assert s.parsed == 9  # still reports how many really parsed
    assert s.acc[2500] == pytest.approx(0.9) and s.acc[750] == pytest.approx(0.6)
    all_km = sorted([km for km in FIXTURE_KM if km is not None] + [origin_km])
    assert s.median_km == pytest.approx((all_km[4] + all_km[5]) / 2, abs=1e-6)
    assert s.mean_km == pytest.approx(sum(all_km) / 10, abs=1e-6)
    assert s.to_dict()["unparsed"] == "origin"


def exact_boundary_row(km):
    """A prediction on the equator whose computed distance is exactly `km`."""
    d = km * 1000 / WGS84_A * 180 / math.pi
    for _ in range(1000):
        got = distance_km(0.0, 0.0, 0.0, d)
        if got == km:
            return (0.0, d, 0.0, 0.0)
        d = math.nextafter(d, math.inf if got < km else -math.inf)
    pytest.fail(f"no float longitude gives exactly {km} km")


def test_strict_versus_inclusive_at_the_boundary():
    rows = [exact_boundary_row(25.0), exact_boundary_row(200.0)]
    inclusive = score(rows, bootstrap=0)
    strict = score(rows, strict=True, bootstrap=0)
    assert inclusive.acc[25] == 0.5 and strict.acc[25] == 0.0
    assert inclusive.acc[200] == 1.0 and strict.acc[200] == 0.5
    assert inclusive.acc[1] == strict.acc[1] == 0.0


def test_to_json_is_exactly_the_official_object():
    s = score(fixture_rows(), bootstrap=200)
    out = s.to_json()
    assert list(out) == ["n", "parsed", "acc", "median_km", "mean_km"]
    assert list(out["acc"]) == ["1", "25", "200", "750", "2500"]
    assert isinstance(out["n"], int) and isinstance(out["parsed"], int)
    assert all(0.0 <= v <= 1.0 for v in out["acc"].values())
    assert json.loads(json.dumps(out)) == out
    rich = s.to_dict()
    assert set(rich["intervals"]) == {"1", "25", "200", "750", "2500"}


def test_nothing_parsed_gives_null_errors():
    s = score([(None, None, 10.0, 10.0), (None, None, -5.0, 3.0)], bootstrap=50)
    out = s.to_json()
    assert out["parsed"] == 0 and out["median_km"] is None and out["mean_km"] is None
    assert all(v == 0.0 for v in out["acc"].values())
    assert "nothing parsed" in s.format_table()


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rows = fixture_rows() * 5
    a = score(rows, bootstrap=300, seed=7)
    b = score(rows, bootstrap=300, seed=7)
    c = score(rows, bootstrap=300, seed=8)
    assert a.intervals == b.intervals
    assert a.intervals != c.intervals
    for r in THRESHOLDS_KM:
        lo, hi = a.intervals[r]
        assert 0.0 <= lo <= a.acc[r] <= hi <= 1.0
    assert a.intervals[1][1] > a.intervals[1][0]  # real spread, not a point
    perfect = score([(1.0, 1.0, 1.0, 1.0)] * 20, bootstrap=100)
    assert perfect.intervals[1] == (1.0, 1.0)


def test_score_rejects_bad_input():
    with pytest.raises(ValueError, match="no rows"):
        score([])
    with pytest.raises(ValueError, match="row 0"):
        score([(0.0, 0.0, 95.0, 0.0)])
    with pytest.raises(ValueError, match="unparsed"):
        score([(0.0, 0.0, 1.0, 1.0)], unparsed="zero")


def test_out_of_range_or_nan_prediction_is_unparsed():
    s = score([(91.0, 0.0, 1.0, 1.0), (float("nan"), 0.0, 1.0, 1.0), (1.0, 1.0, 1.0, 1.0)],
              bootstrap=0)
    assert s.parsed == 1 and s.acc[1] == pytest.approx(1 / 3)


def test_consensus_picks_the_medoid():
    paris = [(48.8566, 2.3522), (48.86, 2.34), (48.85, 2.36)]
    tokyo = (35.68, 139.69)
    index, lat, lon, radius = consensus([tokyo, *paris])
    # the medoid is the middle Paris guess; the spread is the median of its distances
    sums = {p: sum(distance_km(*p, *q) for q in [tokyo, *paris]) for p in paris}
    best = min(sums, key=sums.get)
    assert (lat, lon) == best and [tokyo, *paris][index] == best
    others = sorted(distance_km(*best, *q) for q in [tokyo, *paris] if q != best)
    assert radius == pytest.approx(others[1])
    assert consensus([(10.0, 20.0)]) == (0, 10.0, 20.0, 0.0)
    # two guesses tie: the first wins
    assert consensus([(1.0, 1.0), (2.0, 2.0)]).index == 0
    with pytest.raises(ValueError):
        consensus([])


def test_to_dms():
    assert to_dms(48.8566, 2.3522) == "48°51'23.8\"N 2°21'07.9\"E"
    assert to_dms(-33.8688, 151.2093) == "33°52'07.7\"S 151°12'33.5\"E"
    assert to_dms(40.7128, -74.006) == "40°42'46.1\"N 74°00'21.6\"W"
    # rounding carries into minutes and degrees
    assert to_dms(10.999999, -0.0000001) == "11°00'00.0\"N 0°00'00.0\"E"
