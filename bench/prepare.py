"""Per-photo preparation cost of `LocateRunner` (issue 15, "one read per photo"): content hash,
decode + orient + resize to the model's budget, EXIF GPS, for photos the store has not seen.
Prints a table: time per photo and bytes read per photo (from /proc/self/io, Linux).

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/prepare.py [PHOTOS] [REPEATS]

No model: the runner is given a stand-in engine (only `spec` and `settings()` are used by the
preparation step), so this times exactly the code between "next photo" and "pixels ready"."""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from PIL import Image

from geolocsft import families
from geolocsft.images import default_budget
from geolocsft.locate import LocateRunner, find_photos
from geolocsft.store import ResultStore

SIZE = (4032, 3024)  # a 12 MP phone photo


def rchar() -> int:
    """Bytes this process has read through read() so far (page cache included)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def make_photos(folder: Path, count: int) -> list:
    from geolocsft.export_xmp import exif_gps_fields

    try:
        import pyexiv2
    except ImportError:
        pyexiv2 = None
    base = Image.effect_mandelbrot(SIZE, (-2.0, -1.2, 1.0, 1.2), 60).convert("RGB")
    noise = Image.effect_noise(SIZE, 24).convert("RGB")
    for i in range(count):
        path = folder / f"p{i:02d}.jpg"
        Image.blend(base, noise, 0.15 + 0.02 * i).save(path, quality=90)
        if pyexiv2 is not None:  # a camera's GPS block, as real photos carry
            with pyexiv2.Image(str(path)) as image:
                image.modify_exif(exif_gps_fields(48.85 + i * 0.01, 2.35))
    items, problems = find_photos([folder])
    assert not problems, problems
    return items


class StandIn:
    """What the preparation step reads from an engine."""

    def __init__(self):
        family = families.DEFAULT
        self.spec = SimpleNamespace(model_sha256="0" * 64, prompt_version="bench", name="bench",
                                    budget=default_budget(family))

    def settings(self, *, samples: int = 1, temperature: float = 0.0) -> dict:
        return {"bench": True, "samples": samples, "temperature": temperature}


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    folder = Path(tempfile.mkdtemp(prefix="geolocsft-bench-prepare-"))
    items = make_photos(folder, count)
    mb = sum(item.path.stat().st_size for item in items) / count / 1e6
    times, cpu, reads = [], [], []
    for repeat in range(repeats):
        # A fresh store each time: no cached hashes, every photo is new to it.
        with ResultStore(folder / f"store-{repeat}.sqlite") as store:
            runner = LocateRunner(StandIn(), store, places=False)
            for item in items:
                before_read, started, cpu0 = rchar(), time.perf_counter(), time.process_time()
                prepared = runner._prepare(item)
                times.append(time.perf_counter() - started)
                cpu.append(time.process_time() - cpu0)
                reads.append(rchar() - before_read)
                assert not prepared.error, prepared.error
                assert prepared.image is not None and prepared.truth is not None
    print(f"{count} photos of {SIZE[0]}x{SIZE[1]} JPEG ({mb:.1f} MB each, EXIF GPS), "
          f"{repeats} passes, budget {default_budget(families.DEFAULT).max_pixels:,} px")
    print(f"{'step':<34}{'mean ms':>9}{'median ms':>11}{'CPU ms':>8}{'MB read/photo':>15}")
    print(f"{'LocateRunner._prepare (new photo)':<34}{1000 * statistics.mean(times):>9.1f}"
          f"{1000 * statistics.median(times):>11.1f}{1000 * statistics.mean(cpu):>8.1f}"
          f"{statistics.mean(reads) / 1e6:>15.1f}")


if __name__ == "__main__":
    main()
