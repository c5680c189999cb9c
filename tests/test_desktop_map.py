"""The desktop map: the shipped basemap, its build script, the projection, the MapView (levels
of detail, markers, geodesic error line, guesses and circle, keyboard/mouse navigation) and
the MBTiles raster layer. Offscreen Qt; screenshots go to artifacts/screenshots/."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest

pytest.importorskip("PySide6")

from PIL import Image
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QColor, QMouseEvent, QWheelEvent
from PySide6.QtWidgets import QApplication

from desktop import projection
from desktop.basemap import DEFAULT_BASEMAP, Basemap, BasemapError
from desktop.map_view import ADMIN1_ZOOM, LAND, OCEAN, MapView
from desktop.mbtiles import MBTiles, MBTilesError
from geolocsft.geo import distance_km

SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"


def save_screenshot(widget, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    widget.grab().save(str(path))
    return path


@pytest.fixture(scope="module")
def basemap():
    return Basemap()


@pytest.fixture
def view(qtbot, basemap):
    widget = MapView(basemap, background=False)
    qtbot.addWidget(widget)
    widget.resize(1000, 700)
    widget.show()
    qtbot.waitExposed(widget)
    widget.show_world()
    return widget


def pixel(view, lat, lon) -> QColor:
    image = view.grab().toImage()
    point = view.mapFromScene(view.scene_pos(lat, lon))
    return QColor(image.pixel(point.x(), point.y()))


# ------------------------------------------------------------------ the shipped basemap

def test_shipped_basemap_is_compact_with_three_levels(basemap):
    assert DEFAULT_BASEMAP.stat().st_size < 3_000_000
    assert basemap.levels == [0, 1, 2]
    assert "Natural Earth" in basemap.provenance
    assert set(basemap.layer_names(0)) == {"countries"}
    assert {"land", "lakes", "borders", "admin1"} <= set(basemap.layer_names(2))
    coarse, fine = basemap.layer("land", 1), basemap.layer("land", 2)
    assert fine.n_points > 2 * coarse.n_points  # detail grows with the level
    countries = basemap.layer("countries", 0)
    assert countries.n_paths > 150
    assert -180 <= countries.lon.min() and countries.lon.max() <= 180
    assert abs(countries.lat).max() <= 85.06  # clipped to Web Mercator


def test_damaged_basemap_names_the_file(tmp_path):
    bad = tmp_path / "basemap.glsfmap"
    bad.write_bytes(b"not a map")
    with pytest.raises(BasemapError, match="basemap.glsfmap.*bad magic"):
        Basemap(bad)
    good = DEFAULT_BASEMAP.read_bytes()
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(good[: len(good) // 2])
    damaged = Basemap(truncated)
    with pytest.raises(BasemapError, match="truncated.bin: layer .* damaged"):
        for level in damaged.levels:
            for name in damaged.layer_names(level):
                damaged.layer(name, level)
    with pytest.raises(BasemapError, match="missing.bin"):
        Basemap(tmp_path / "missing.bin")


def _write_shapes(folder: Path, name: str, kind: int, shapes: list):
    import shapefile  # pyshp

    folder.mkdir(parents=True, exist_ok=True)
    with shapefile.Writer(str(folder / name), shapeType=kind) as writer:
        writer.field("NAME", "C")
        for parts in shapes:
            if kind == shapefile.POLYGON:
                writer.poly(parts)
            else:
                writer.line(parts)
            writer.record("x")


def test_build_script_splits_at_180_and_quantizes(tmp_path):
    import importlib.util

    shapefile = pytest.importorskip("shapefile")  # pyshp: the dev extra

    spec = importlib.util.spec_from_file_location(
        "build_basemap", Path(__file__).resolve().parent.parent / "scripts" / "build_basemap.py")
    build_basemap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_basemap)

    src = tmp_path / "ne"
    # An island ring that crosses 180° (175°E → 175°W), clockwise as shapefiles store outer rings.
    island = [[(175.0, -15.0), (-175.0, -15.0), (-175.0, -20.0), (175.0, -20.0), (175.0, -15.0)]]
    square = [[(10.0, 40.0), (12.0, 40.0), (12.0, 38.0), (10.0, 38.0), (10.0, 40.0)]]
    line_across = [[(170.0, 60.0), (179.5, 61.0), (-179.5, 61.5), (-170.0, 62.0)]]
    wiggly = [[(0.0, 0.0)] + [(i * 0.001, 0.0000001 * (i % 2)) for i in range(1, 500)] + [(1.0, 0.0)]]
    polygons = [island, square]
    _write_shapes(src / "natural_earth_110m", "ne_110m_admin_0_countries", shapefile.POLYGON, polygons)
    for name in ("ne_10m_land", "ne_10m_lakes"):
        _write_shapes(src / "natural_earth_10m", name, shapefile.POLYGON, polygons)
    for name in ("ne_10m_admin_0_boundary_lines_land", "ne_10m_admin_1_states_provinces_lines"):
        _write_shapes(src / "natural_earth_10m", name, shapefile.POLYLINE, [line_across, wiggly])
    out = tmp_path / "map.bin"
    build_basemap.build(src, out)

    result = Basemap(out)
    borders = result.layer("borders", 2)
    # The line crossing 180° becomes two lines, none spanning more than half the world.
    offsets = borders.ring_offsets
    spans = [borders.lon[a:b].max() - borders.lon[a:b].min() for a, b in zip(offsets[:-1], offsets[1:])]
    assert len(spans) == 3 and max(spans) < 180
    # The almost-straight line is simplified to its two ends; points sit on the quantum grid.
    assert min(b - a for a, b in zip(offsets[:-1], offsets[1:])) == 2
    q = borders.quantum_deg
    assert all(abs(v / q - round(v / q)) < 1e-6 for v in borders.lon.tolist())
    # The island is cut at 180°: land on both sides of the antimeridian, nothing beyond ±180.
    land = result.layer("countries", 0)
    assert land.lon.min() >= -180 and land.lon.max() <= 180
    island_lons = land.lon[land.lat < -10]
    assert island_lons.min() == pytest.approx(-180) and island_lons.max() == pytest.approx(180)
    assert set(island_lons.round(2).tolist()) >= {175.0, -175.0}
    # Outlines drop the cut edges along 180°.
    lon, lat, line_offsets = land.outlines()
    for a, b in zip(line_offsets[:-1], line_offsets[1:]):
        edges = list(zip(lon[a:b - 1], lon[a + 1:b]))
        assert not any(x0 == x1 and abs(x0) == 180 for x0, x1 in edges)


# ------------------------------------------------------------------ projection

@pytest.mark.parametrize("lat, lon", [(0, 0), (48.8584, 2.2945), (-33.857, 151.215),
                                      (64.1466, -21.9426), (-54.8, -68.3), (85.0, 179.999)])
def test_projection_round_trip(lat, lon):
    x, y = projection.project(lat, lon)
    assert 0 <= x <= projection.WORLD and 0 <= y <= projection.WORLD
    back = projection.unproject(x, y)
    assert back == pytest.approx((lat, lon), abs=1e-9)


def test_geodesic_circle_points_are_at_the_radius():
    parts = projection.geodesic_circle(35.0, 139.0, 300.0, samples=72)
    points = [p for part in parts for p in part]
    assert len(points) >= 72
    for lat, lon in points:
        assert distance_km(35.0, 139.0, lat, lon) == pytest.approx(300.0, rel=1e-6)


def test_geodesic_line_crossing_180_is_split():
    km, parts = projection.geodesic_line(-17.7, 178.0, -18.1, -178.5)
    assert km == pytest.approx(distance_km(-17.7, 178.0, -18.1, -178.5), rel=1e-9)
    assert len(parts) == 2
    assert parts[0][-1][1] == 180.0 and parts[1][0][1] == -180.0


# ------------------------------------------------------------------ the map view

def test_map_draws_the_world_and_detail_follows_zoom(view, qtbot):
    assert view.level == 0
    assert len(view.basemap_items()) > 50
    # Land and ocean in their colours at world scale (Sahara; mid-Atlantic).
    assert pixel(view, 23.0, 15.0) == LAND
    assert pixel(view, 30.0, -40.0) == OCEAN
    save_screenshot(view, "map-world")

    levels = []
    view.levelChanged.connect(levels.append)
    view.center_on(46.5, 8.0, zoom=4.0)
    assert view.level == 1
    admin = [i for i in view.basemap_items() if i.data(0) == "admin1"]
    assert admin and not admin[0].isVisible()  # state lines wait for more zoom
    view.set_zoom(ADMIN1_ZOOM + 0.2)
    assert admin[0].isVisible()
    view.set_zoom(7.0)
    assert view.level == 2
    assert levels == [1, 2]
    save_screenshot(view, "map-detail")
    names = {item.data(0) for item in view.basemap_items()}
    assert {"land-fill", "land", "borders", "admin1"} <= names
    # Level 2 is finer: more points in the visible lines than level 1 drew for the same area.
    assert len(view.basemap_items(2)) > len(view.basemap_items(1))
    view.set_zoom(2.0)
    assert view.level == 0 and not view.basemap_items(2)[0].isVisible()


def test_finer_levels_are_prepared_off_the_gui_thread(qtbot, basemap):
    widget = MapView(basemap)  # background=True, as in the app
    qtbot.addWidget(widget)
    widget.resize(800, 600)
    widget.show()
    widget.set_zoom(7.0)
    # Until level 2 is ready the finest level at hand shows; then it takes over by itself.
    qtbot.waitUntil(lambda: widget.level == 2, timeout=30_000)
    assert widget.basemap_items(2)


def test_marker_sits_at_the_coordinates(view):
    lat, lon = -33.8568, 151.2153
    view.set_prediction(lat, lon)
    marker = view.overlay_items("prediction")[0]
    assert view.lat_lon_at(marker.scenePos()) == pytest.approx((lat, lon), abs=1e-9)
    view.center_on(lat, lon, zoom=10)
    centre = view.mapFromScene(marker.scenePos())
    middle = view.viewport().rect().center()
    assert abs(centre.x() - middle.x()) <= 1 and abs(centre.y() - middle.y()) <= 1
    # The pixel at the centre is the marker's colour, drawn on top of the map.
    image = view.viewport().grab().toImage()
    assert QColor(image.pixel(middle)).red() > 180


def test_error_line_is_a_geodesic_with_its_distance(view, qtbot):
    paris, new_york = (48.8566, 2.3522), (40.7128, -74.0060)
    view.set_prediction(*paris)
    view.set_truth(*new_york)
    expected = distance_km(*new_york, *paris)
    assert view.error_km == pytest.approx(expected, rel=1e-6)
    label = view.error_label.text.text()
    assert f"{expected:,.0f} km" in label
    line = [i for i in view.overlay_items("error") if i is not view.error_label][0]
    path = line.path()
    assert path.elementCount() > 50  # sampled, not a straight segment
    # A great circle from New York to Paris bows north of the straight Mercator line.
    mid = path.elementAt(path.elementCount() // 2)
    mid_lat, _ = view.lat_lon_at(QPointF(mid.x, mid.y))
    assert mid_lat > 50.0  # the straight line in the projection passes near 45°N
    view.fit_points([paris, new_york])
    save_screenshot(view, "map-error-line")
    view.set_truth(None, None)
    assert view.error_km is None and not view.overlay_items("error")


def test_guesses_and_confidence_circle(view):
    guesses = [(41.9, 12.5), (43.77, 11.25), (45.46, 9.19)]
    view.set_guesses(guesses, center=(43.77, 11.25), radius_km=250.0)
    assert len(view.overlay_items("guesses")) == 3
    circle = view.overlay_items("circle")[0].path()
    for i in range(0, circle.elementCount(), 10):
        e = circle.elementAt(i)
        lat, lon = view.lat_lon_at(QPointF(e.x, e.y))
        assert distance_km(43.77, 11.25, lat, lon) == pytest.approx(250.0, rel=1e-6)
    view.set_prediction(43.77, 11.25)
    view.set_truth(45.07, 7.69)
    view.fit_points(guesses + [(45.07, 7.69)], min_span_km=600)
    save_screenshot(view, "map-guesses")
    view.set_results([(48.1, 11.6, "munich", True), (50.1, 8.7, "frankfurt", False)])
    assert len(view.overlay_items("results")) == 2
    view.clear_photo()
    assert not view.overlay_items("guesses") and not view.overlay_items("circle")


def test_keyboard_zoom_pan_and_home(view, qtbot):
    view.center_on(40.0, 0.0, zoom=4.0)
    qtbot.keyClick(view, Qt.Key.Key_Plus)
    assert view.zoom == pytest.approx(5.0)
    qtbot.keyClick(view, Qt.Key.Key_Minus)
    qtbot.keyClick(view, Qt.Key.Key_Minus)
    assert view.zoom == pytest.approx(3.0)
    lat0, lon0 = view.center()
    qtbot.keyClick(view, Qt.Key.Key_Right)
    assert view.center()[1] > lon0 + 1
    qtbot.keyClick(view, Qt.Key.Key_Up)
    assert view.center()[0] > lat0 + 1
    qtbot.keyClick(view, Qt.Key.Key_Home)
    assert view.level == 0 and view.zoom < 3


def test_wheel_zooms_about_the_cursor_and_drag_pans(view, qtbot):
    view.center_on(45.0, 10.0, zoom=4.0)
    spot = QPoint(300, 200)
    before = view.lat_lon_at(view.mapToScene(spot))
    event = QWheelEvent(QPointF(spot), QPointF(view.viewport().mapToGlobal(spot)), QPoint(0, 0),
                        QPoint(0, 240), Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier,
                        Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(view.viewport(), event)
    assert view.zoom == pytest.approx(5.0)
    after = view.lat_lon_at(view.mapToScene(spot))
    assert after == pytest.approx(before, abs=0.05)

    centre_before = view.center()
    viewport = view.viewport()

    def mouse(kind, pos, buttons):
        e = QMouseEvent(kind, QPointF(pos), QPointF(viewport.mapToGlobal(pos)),
                        Qt.MouseButton.LeftButton, buttons, Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(viewport, e)

    mouse(QEvent.Type.MouseButtonPress, QPoint(500, 350), Qt.MouseButton.LeftButton)
    for x in range(500, 301, -20):
        mouse(QEvent.Type.MouseMove, QPoint(x, 350), Qt.MouseButton.LeftButton)
    mouse(QEvent.Type.MouseButtonRelease, QPoint(300, 350), Qt.MouseButton.NoButton)
    # Dragging the map left shows what lies east.
    assert view.center()[1] > centre_before[1] + 3


# ------------------------------------------------------------------ MBTiles

def _tile_png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), color).save(buffer, "PNG")
    return buffer.getvalue()


def make_mbtiles(path: Path) -> dict:
    """Zoom 1 (2×2 tiles), each its own colour, rows stored TMS-style (row 0 = south)."""
    colours = {(0, 0): (200, 30, 30), (1, 0): (30, 200, 30), (0, 1): (30, 30, 200),
               (1, 1): (200, 200, 30)}  # (x, y) in XYZ, y = 0 north
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE metadata (name TEXT, value TEXT)")
    db.execute("CREATE TABLE tiles (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER,"
               " tile_data BLOB)")
    db.executemany("INSERT INTO metadata VALUES (?, ?)",
                   [("name", "test tiles"), ("format", "png"), ("minzoom", "1"), ("maxzoom", "1")])
    for (x, y), colour in colours.items():
        db.execute("INSERT INTO tiles VALUES (1, ?, ?, ?)", (x, (1 << 1) - 1 - y, _tile_png(colour)))
    db.commit()
    db.close()
    return colours


def test_mbtiles_raster_layer_with_tms_rows(view, tmp_path):
    path = tmp_path / "tiles.mbtiles"
    colours = make_mbtiles(path)
    tiles = MBTiles(path)
    assert (tiles.min_zoom, tiles.max_zoom, tiles.name) == (1, 1, "test tiles")
    assert tiles.tile(1, 0, 0) == _tile_png(colours[(0, 0)])
    assert tiles.tile(1, 5, 5) is None
    tiles.close()

    view.set_mbtiles(path)
    view.show_world()
    assert view.tile_keys == [(1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)]
    # Open sea away from any line: the tile's colour shows. North-west tile is XYZ (0, 0).
    assert pixel(view, 30.0, -40.0).getRgb()[:3] == colours[(0, 0)]
    assert pixel(view, -30.0, -20.0).getRgb()[:3] == colours[(0, 1)]
    assert pixel(view, -40.0, 90.0).getRgb()[:3] == colours[(1, 1)]
    view.set_mbtiles(None)
    assert view.tile_keys == [] and pixel(view, 30.0, -40.0) == OCEAN


def test_unusable_mbtiles_names_the_file(tmp_path):
    not_sqlite = tmp_path / "bad.mbtiles"
    not_sqlite.write_bytes(b"hello" * 100)
    with pytest.raises(MBTilesError, match="bad.mbtiles"):
        MBTiles(not_sqlite)
    empty = tmp_path / "empty.mbtiles"
    sqlite3.connect(empty).execute("CREATE TABLE other (x)").connection.close()
    with pytest.raises(MBTilesError, match="empty.mbtiles: not an MBTiles file"):
        MBTiles(empty)
    with pytest.raises(MBTilesError, match="missing.mbtiles: no such file"):
        MBTiles(tmp_path / "missing.mbtiles")
