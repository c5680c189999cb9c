"""Which continent a country is on, for the curation coverage report.

The grouping is GeoNames' (seven continents; Russia and Turkey in Europe, the Caribbean and
Central America in North America, Pacific islands in Oceania). Keys are ISO 3166-1 alpha-2
codes as `geolocsft.places` returns them.
"""

from __future__ import annotations

_BY_CONTINENT = {
    "Africa": (
        "AO BF BI BJ BW CD CF CG CI CM CV DJ DZ EG EH ER ET GA GH GM GN GQ GW KE KM LR LS LY MA MG "
        "ML MR MU MW MZ NA NE NG RE RW SC SD SH SL SN SO SS ST SZ TD TG TN TZ UG YT ZA ZM ZW"
    ),
    "Antarctica": "AQ BV GS HM TF",
    "Asia": (
        "AE AF AM AZ BD BH BN BT CC CN CX CY GE HK ID IL IN IO IQ IR JO JP KG KH KP KR KW KZ LA LB "
        "LK MM MN MO MV MY NP OM PH PK PS QA SA SG SY TH TJ TL TM TW UZ VN YE"
    ),
    "Europe": (
        "AD AL AT AX BA BE BG BY CH CZ DE DK EE ES FI FO FR GB GG GI GR HR HU IE IM IS IT JE LI LT "
        "LU LV MC MD ME MK MT NL NO PL PT RO RS RU SE SI SJ SK SM TR UA VA XK"
    ),
    "North America": (
        "AG AI AW BB BL BM BQ BS BZ CA CR CU CW DM DO GD GL GP GT HN HT JM KN KY LC MF MQ MS MX NI "
        "PA PM PR SV SX TC TT US VC VG VI"
    ),
    "Oceania": "AS AU CK FJ FM GU KI MH MP NC NF NR NU NZ PF PG PN PW SB TK TO TV UM VU WF WS",
    "South America": "AR BO BR CL CO EC FK GF GY PE PY SR UY VE",
}

CONTINENT_OF: dict[str, str] = {
    code: continent for continent, codes in _BY_CONTINENT.items() for code in codes.split()
}
CONTINENTS = tuple(_BY_CONTINENT)
UNKNOWN = "(unknown)"


def continent_of(country_code: str) -> str:
    """The continent for an ISO alpha-2 code; `UNKNOWN` for sea, blanks and unlisted codes."""
    return CONTINENT_OF.get((country_code or "").upper(), UNKNOWN)
