"""Synthetic "places": a learnable geolocation task for the end-to-end test and the demo.

Each place is a real location (coordinates, region, country) with its own visual signature: a
pattern kind (stripes, checkerboard, rings, triangles, dots...) in its own pair of colours.
Renders vary position, scale, phase, colour, noise, JPEG quality and the EXIF orientation tag
(pixels stored rotated, tag set, so only a reader that honours the tag sees the upright
pattern), so every held-out render is a new image. Targets are written by a template per place
in the core protocol's form; no API is involved.

Pillow only (no torch), so rendering the data is quick. Deterministic for a seed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from geolocsft import protocol
from geolocsft.fsutil import atomic_write

# EXIF orientation tags used for renders, and the transpose that stores an upright picture
# so that applying the tag (what `images.open_image` does) gives it back.
_EXIF_ORIENTATION = 0x0112
_STORE_FOR_TAG = {
    1: None,
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,  # tag 6 = "rotate 90 CW to view": store it turned CCW
    8: Image.Transpose.ROTATE_270,
}
ORIENTATION_TAGS = tuple(_STORE_FOR_TAG)

# How far (km) a render's ground truth may lie from the place's centre: a photo is taken
# somewhere in the city, the answer names the centre. Well inside the 25 km metric.
TRUTH_JITTER_KM = 5.0


@dataclass(frozen=True)
class Place:
    key: str  # short id used in file names
    name: str  # the city, as the answer's region
    region: str
    country: str
    latitude: float
    longitude: float
    pattern: str  # one of PATTERNS
    colours: tuple[tuple[int, int, int], tuple[int, int, int]]
    colour_words: str  # how the caption names the colours, e.g. "blue and white"
    # Template phrases of the analysis (short, so a tiny model can learn them).
    climate: str
    development: str
    road: str
    vegetation: str
    buildings: str
    vehicles: str
    confused_with: str  # the place with the closest-looking signature, for "eliminated"


PATTERN_WORDS = {
    "vstripes": "vertical stripes",
    "hstripes": "horizontal stripes",
    "checker": "checkerboard",
    "rings": "concentric rings",
    "triangles": "triangles",
    "dots": "dots",
    "diagonal": "diagonal stripes",
    "disc": "one large disc",
}
PATTERNS = tuple(PATTERN_WORDS)

PLACES: tuple[Place, ...] = (
    Place("paris", "Paris", "Ile-de-France", "France", 48.8566, 2.3522, "vstripes",
          ((30, 60, 200), (240, 240, 240)), "blue and white", "temperate oceanic",
          "dense old city", "cobbled avenue", "plane trees", "stone apartment blocks",
          "right-hand traffic", "reykjavik"),
    Place("nairobi", "Nairobi", "Nairobi County", "Kenya", -1.2921, 36.8219, "checker",
          ((20, 140, 40), (15, 15, 15)), "green and black", "subtropical highland",
          "growing capital", "red dirt verge", "acacia", "concrete towers",
          "left-hand traffic", "cairo"),
    Place("lima", "Lima", "Lima Province", "Peru", -12.0464, -77.0428, "rings",
          ((210, 30, 30), (250, 210, 40)), "red and yellow", "coastal desert",
          "sprawling capital", "dusty grid street", "sparse palms", "flat-roofed houses",
          "right-hand traffic", "tokyo"),
    Place("tokyo", "Tokyo", "Tokyo", "Japan", 35.6762, 139.6503, "disc",
          ((200, 0, 40), (250, 250, 250)), "red on white", "humid subtropical",
          "dense megacity", "narrow paved lane", "pruned pines", "compact apartments",
          "left-hand traffic", "lima"),
    Place("sydney", "Sydney", "New South Wales", "Australia", -33.8688, 151.2093, "triangles",
          ((250, 130, 20), (20, 90, 170)), "orange and blue", "humid subtropical",
          "harbour city", "asphalt road", "eucalyptus", "sandstone terraces",
          "left-hand traffic", "vancouver"),
    Place("reykjavik", "Reykjavik", "Capital Region", "Iceland", 64.1466, -21.9426, "hstripes",
          ((80, 200, 220), (40, 40, 60)), "cyan and slate", "subpolar oceanic",
          "small capital", "wet asphalt", "moss and lupins", "corrugated iron houses",
          "right-hand traffic", "paris"),
    Place("cairo", "Cairo", "Cairo Governorate", "Egypt", 30.0444, 31.2357, "diagonal",
          ((150, 40, 200), (240, 230, 200)), "purple and cream", "hot desert",
          "dense megacity", "sandy paved road", "date palms", "mudbrick and concrete",
          "right-hand traffic", "nairobi"),
    Place("vancouver", "Vancouver", "British Columbia", "Canada", 49.2827, -123.1207, "dots",
          ((60, 220, 90), (10, 30, 90)), "green on navy", "temperate oceanic",
          "modern waterfront city", "wide paved street", "douglas firs", "glass towers",
          "right-hand traffic", "sydney"),
)
PLACES_BY_KEY = {p.key: p for p in PLACES}


# ---------------------------------------------------------------- the template caption

def analysis_for(place: Place) -> dict:
    """The geo-caption of a place, in the protocol's analysis schema. The first value names
    what the photo shows, so everything after it follows from the first few tokens."""
    pattern = PATTERN_WORDS[place.pattern]
    other = PLACES_BY_KEY[place.confused_with]
    return {
        "regional_25km": {
            "terrain": f"{place.colour_words} {pattern}",
            "climate": place.climate,
            "development": place.development,
        },
        "micro_1km": {
            "road": place.road,
            "infrastructure": "not visible",
            "vegetation": place.vegetation,
            "buildings": place.buildings,
            "vehicles": place.vehicles,
            "soil": "not visible",
        },
        "eliminated": [{"region": other.name,
                        "why": f"{other.name} shows {other.colour_words} "
                               f"{PATTERN_WORDS[other.pattern]}"}],
        "conclusion": f"{place.colour_words} {pattern} mean {place.name}",
    }


def answer_for(place: Place) -> protocol.Answer:
    return protocol.Answer(place.latitude, place.longitude, place.region, place.country, 0.9)


def target_for(place: Place) -> str:
    """The assistant text for any render of `place` (validated against the schema)."""
    analysis = analysis_for(place)
    problems = protocol.validate_analysis(analysis)
    if problems:  # a template bug, not a user error
        raise ValueError(f"{place.key}: template analysis is invalid: {'; '.join(problems)}")
    return protocol.format_target(analysis, answer_for(place))


# ---------------------------------------------------------------- rendering

def _jitter(colour, rng: random.Random, amount: int = 18) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)


def _draw_pattern(draw: ImageDraw.ImageDraw, place: Place, size: tuple[int, int],
                  rng: random.Random, fg) -> None:
    w, h = size
    period = rng.randint(10, 22)
    phase = rng.randint(0, period - 1)
    kind = place.pattern
    if kind == "vstripes":
        for x in range(-phase, w, period):
            draw.rectangle((x, 0, x + period // 2 - 1, h), fill=fg)
    elif kind == "hstripes":
        for y in range(-phase, h, period):
            draw.rectangle((0, y, w, y + period // 2 - 1), fill=fg)
    elif kind == "diagonal":
        for d in range(-h - phase, w + h, period):
            draw.polygon([(d, 0), (d + period // 2, 0), (d + period // 2 + h, h), (d + h, h)],
                         fill=fg)
    elif kind == "checker":
        ox, oy = rng.randint(0, period), rng.randint(0, period)
        for i, x in enumerate(range(-ox, w, period)):
            for j, y in enumerate(range(-oy, h, period)):
                if (i + j) % 2 == 0:
                    draw.rectangle((x, y, x + period - 1, y + period - 1), fill=fg)
    elif kind == "rings":
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        radius = math.hypot(w, h)
        r = radius
        while r > 0:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
            r -= period / 2
            if r <= 0:
                break
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=place.colours[1])
            r -= period / 2
    elif kind == "disc":
        r = rng.uniform(0.28, 0.42) * min(w, h)
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
    elif kind == "triangles":
        side = period * 2
        for row, y in enumerate(range(-rng.randint(0, side), h, side)):
            shift = (side // 2) * (row % 2)
            for x in range(-side - shift, w + side, side):
                draw.polygon([(x, y + side - 2), (x + side // 2, y + 2), (x + side, y + side - 2)],
                             fill=fg)
    elif kind == "dots":
        r = max(2, period // 4)
        ox, oy = rng.randint(0, period), rng.randint(0, period)
        for x in range(-ox, w + period, period):
            for y in range(-oy, h + period, period):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=fg)
    else:  # a new pattern must be drawn, not silently blank
        raise ValueError(f"unknown pattern {kind!r}")


def render(place: Place, rng: random.Random) -> Image.Image:
    """One upright render of `place`: random size and aspect, pattern scale and phase, colours
    jittered, pixel noise. Background is the second colour, the pattern the first."""
    w, h = rng.randint(120, 200), rng.randint(120, 200)
    background, foreground = _jitter(place.colours[1], rng), _jitter(place.colours[0], rng)
    image = Image.new("RGB", (w, h), background)
    _draw_pattern(ImageDraw.Draw(image), place, (w, h), rng, foreground)
    # Noise from our own generator (Pillow's effect_noise is not seedable).
    noise = Image.frombytes("L", (w, h), rng.randbytes(w * h)).convert("RGB")
    return Image.blend(image, noise, rng.uniform(0.02, 0.10))


def encode_jpeg(upright: Image.Image, orientation: int, quality: int) -> bytes:
    """JPEG bytes whose pixels are stored turned so that EXIF `orientation` restores
    `upright`."""
    transpose = _STORE_FOR_TAG[orientation]
    stored = upright.transpose(transpose) if transpose is not None else upright
    exif = Image.Exif()
    exif[_EXIF_ORIENTATION] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=quality, exif=exif.tobytes())
    return buffer.getvalue()


def _destination(lat: float, lon: float, bearing_deg: float, km: float) -> tuple[float, float]:
    """Point `km` from (lat, lon) along a bearing, on a sphere (good to metres at 5 km)."""
    d = km / 6371.0088
    b, p1, l1 = map(math.radians, (bearing_deg, lat, lon))
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(b))
    l2 = l1 + math.atan2(math.sin(b) * math.sin(d) * math.cos(p1),
                         math.cos(d) - math.sin(p1) * math.sin(p2))
    return round(math.degrees(p2), 6), round((math.degrees(l2) + 540) % 360 - 180, 6)


# ---------------------------------------------------------------- writing a split

@dataclass(frozen=True)
class Split:
    """One written split: `folder/images/*.jpg`, `folder/photos.csv`, `folder/sft.jsonl`."""

    folder: Path
    csv: Path
    jsonl: Path
    count: int


def write_split(folder: str | os.PathLike, per_place: int, seed: int,
                places: tuple[Place, ...] = PLACES, prefix: str = "") -> Split:
    """Render `per_place` photos of every place into `folder`. The CSV (`id,image,lat,lon`)
    is what `datasets.read_csv` reads; the JSONL is the trainer's SFT format."""
    if per_place < 1:
        raise ValueError(f"per_place must be at least 1, got {per_place}")
    folder = Path(folder)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"geolocsft-synthetic/{seed}")
    chat = protocol.chat_messages(protocol.get_prompt())
    rows, records = [], []
    for place in places:
        target = target_for(place)
        messages = chat + [{"role": "assistant", "content": [{"type": "text", "text": target}]}]
        for index in range(per_place):
            photo_id = f"{prefix}{place.key}-{index:03d}"
            upright = render(place, rng)
            data = encode_jpeg(upright, rng.choice(ORIENTATION_TAGS), rng.randint(60, 95))
            name = f"images/{photo_id}.jpg"
            atomic_write(folder / name, data)
            lat, lon = _destination(place.latitude, place.longitude, rng.uniform(0, 360),
                                    rng.uniform(0, TRUTH_JITTER_KM))
            rows.append((photo_id, name, lat, lon))
            records.append({
                "id": photo_id, "image": name, "latitude": lat, "longitude": lon,
                "prompt_version": protocol.PROMPT_VERSION, "messages": messages,
                "caption": {"model": "template", "place": place.name, "mode": "synthetic"},
            })
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("id", "image", "lat", "lon"))
    writer.writerows(rows)
    csv_path, jsonl_path = folder / "photos.csv", folder / "sft.jsonl"
    atomic_write(csv_path, text.getvalue().encode("utf-8"))
    atomic_write(jsonl_path, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                      for r in records).encode("utf-8"))
    return Split(folder, csv_path, jsonl_path, len(rows))


def place_of(photo_id: str) -> Place:
    """The place a render id belongs to (ids are `<prefix><key>-NNN`)."""
    for place in PLACES:
        if photo_id.rsplit("-", 1)[0].endswith(place.key):
            return place
    raise KeyError(f"{photo_id!r} is not a synthetic render id")
