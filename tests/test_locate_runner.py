"""`LocateRunner`'s own logic with a scripted engine (tests/fixtures/fake_engine.py): resume,
cancel, per-photo errors, the ETA, streaming, and the point it stores. A real store (SQLite)
and real photos; the real engine's side of this contract is tests/test_engine.py."""

from __future__ import annotations

import threading

import pytest
from PIL import Image

from geolocsft.engine import EngineError
from geolocsft.geo import distance_km
from geolocsft.locate import LocateRunner, find_photos
from geolocsft.store import ResultStore, Status
from tests.fixtures.fake_engine import FakeEngine, answer_text


def make_photos(folder, count: int, *, broken: tuple[int, ...] = ()) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"p{i:02d}.jpg"
        if i in broken:
            path.write_bytes(b"\xff\xd8 not really a jpeg")
        else:
            Image.new("RGB", (80 + i, 60), (20 * i % 255, 90, 160)).save(path, format="JPEG")
    items, problems = find_photos([folder])
    assert not problems and len(items) == count
    return items


@pytest.fixture
def store(tmp_path):
    with ResultStore(tmp_path / "results.sqlite") as s:
        yield s


def run(engine, store, items, **kw):
    progress, outcomes = [], []
    runner = LocateRunner(engine, store, places=False, on_outcome=outcomes.append,
                          on_progress=lambda p: progress.append(
                              (p.processed, p.computed, p.skipped, p.eta_s, p.s_per_photo)), **kw)
    return runner.run(items), outcomes, progress


def test_each_photo_once_then_a_rerun_takes_them_from_the_store(tmp_path, store):
    items = make_photos(tmp_path / "photos", 4)
    engine = FakeEngine()
    summary, outcomes, _ = run(engine, store, items)
    assert [o.action for o in outcomes] == ["computed"] * 4 and not summary.cancelled
    assert len(engine.calls) == 4
    assert all(r.status == Status.DONE and (r.latitude, r.longitude) == (48.85, 2.35)
               for r in summary.results)
    again, outcomes, progress = run(engine, store, items)
    assert [o.action for o in outcomes] == ["skipped"] * 4 and len(engine.calls) == 4
    assert progress[-1][:3] == (4, 0, 4)
    assert [r.photo_sha256 for r in again.results] == [r.photo_sha256 for r in summary.results]


def test_eta_counts_only_the_photos_still_to_compute(tmp_path, store):
    items = make_photos(tmp_path / "photos", 5)
    run(FakeEngine(), store, items[:2])  # two are in the store already
    summary, outcomes, progress = run(FakeEngine(seconds_per_photo=0.02), store, items)
    assert [o.action for o in outcomes] == ["skipped"] * 2 + ["computed"] * 3
    assert progress[0][3] is None  # no ETA before a photo has been computed
    # After each computed photo: ETA = seconds per photo x photos left that are not stored.
    computed = [p for p in progress if p[1] > 0]
    for processed, done, skipped, eta, rate in computed:
        assert rate >= 0.02 and eta == pytest.approx(rate * (5 - processed))
    assert computed[-1][3] == 0


def test_a_bad_photo_and_an_engine_failure_are_rows_and_the_batch_goes_on(tmp_path, store):
    items = make_photos(tmp_path / "photos", 4, broken=(1,))

    def script(n, image):  # the third call (photo 3) fails inside the engine
        return EngineError("inference failed: out of memory") if n == 1 else [answer_text(1, 2)]

    summary, outcomes, progress = run(FakeEngine(script=script), store, items)
    assert [o.action for o in outcomes] == ["computed", "error", "error", "computed"]
    assert "p01.jpg" in outcomes[1].message
    assert str(items[2].path) in outcomes[2].message and "out of memory" in outcomes[2].message
    assert outcomes[2].result.status == Status.ERROR
    assert progress[-1][:2] == (4, 2)
    # An engine failure is not "done": the next run tries the photo again.
    summary, outcomes, _ = run(FakeEngine(), store, items)
    assert [o.action for o in outcomes] == ["skipped", "error", "computed", "skipped"]


def test_cancel_mid_photo_stores_nothing_for_it_and_the_rerun_resumes(tmp_path, store):
    items = make_photos(tmp_path / "photos", 3)
    cancel = threading.Event()
    text = answer_text(10.0, 20.0)
    pieces = len(text) // 7 + 1  # FakeEngine streams 7-character pieces
    # 3 pieces into the second photo
    engine = FakeEngine(script=lambda n, image: [text], cancel_after_pieces=pieces + 3)
    streamed = []
    summary, outcomes, _ = run(engine, store, items, cancel=cancel,
                               on_token=lambda item, piece: streamed.append(item.path.name))
    assert summary.cancelled
    assert [o.action for o in outcomes] == ["computed", "cancelled"]
    assert streamed.count("p01.jpg") == 3 and "p02.jpg" not in streamed
    assert len(store.results()) == 1
    summary, outcomes, _ = run(FakeEngine(), store, items)
    assert [o.action for o in outcomes] == ["skipped", "computed", "computed"]


def test_several_guesses_store_the_medoid_and_its_own_fields(tmp_path, store):
    items = make_photos(tmp_path / "photos", 1)
    replies = [answer_text(35.68, 139.69, "Tokyo", "Japan"),
               answer_text(48.85, 2.35, "Paris", "France"),
               "the model rambled and gave no answer",
               answer_text(48.80, 2.30, "Île-de-France", "France")]
    guesses = []
    summary, outcomes, _ = run(FakeEngine(script=lambda n, image: replies), store, items,
                               samples=4, temperature=0.7,
                               on_guess=lambda item, k, samples: guesses.append((k, samples)))
    assert guesses == [(0, 4), (1, 4), (2, 4), (3, 4)]
    row = summary.results[0]
    assert (row.latitude, row.longitude) == (48.85, 2.35)  # the Paris guess: the medoid
    assert (row.consensus_lat, row.consensus_lon) == (48.85, 2.35)
    assert row.region == "Paris" and row.country == "France"
    # The radius: the median distance of the other parsed guesses to the medoid.
    others = [distance_km(48.85, 2.35, 35.68, 139.69), distance_km(48.85, 2.35, 48.80, 2.30)]
    assert row.radius_km == pytest.approx(sum(others) / 2, abs=1e-3)
    assert [o["status"] for o in row.outputs] == ["ok", "ok", "no_answer", "ok"]
    assert row.samples == 4 and row.temperature == 0.7


def test_no_parsable_guess_keeps_the_reason_and_no_point(tmp_path, store):
    items = make_photos(tmp_path / "photos", 1)
    summary, outcomes, _ = run(FakeEngine(script=lambda n, image: ["I cannot tell."]),
                               store, items)
    row = summary.results[0]
    assert outcomes[0].action == "computed" and not row.has_point
    assert row.parse_status == "no_answer" and row.latitude is None
