"""Peak memory while the app makes thumbnails of a folder of large JPEGs: full decoding
(`open_image` + shrink, as before) against reduced decoding (`open_preview`, JPEG draft).

Generates N photos of W x H pixels (default 50 x 24 MP) in a temporary folder, then runs each
way in its own process with the app's two loader threads and prints peak RSS and time.

    PYTHONPATH=$PWD python bench/preview_memory.py [--count 50] [--width 6000 --height 4000]

Linux only (peak RSS is read from /proc/self/status).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from geolocsft.images import open_image, open_preview

way, folder, size = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])

def full(path):
    image = open_image(path)
    image.thumbnail((size, size))
    return image.size

def reduced(path):
    return open_preview(path, size).size

began = time.perf_counter()
with ThreadPoolExecutor(2) as pool:  # the app's ImageLoader uses two threads
    sizes = list(pool.map(full if way == "full" else reduced, sorted(folder.glob("*.jpg"))))
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent (which made the
# photos); VmHWM belongs to this process's own address space.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds": time.perf_counter() - began, "count": len(sizes),
                  "peak_rss_mb": hwm / 1024}))
"""


def make_photos(folder: Path, count: int, width: int, height: int) -> None:
    from PIL import Image, ImageDraw

    base = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    for i in range(count):
        image = base.copy()
        draw = ImageDraw.Draw(image)
        for k in range(40):  # some structure so the JPEG is photo-sized, not trivially small
            x, y = (i * 7919 + k * 104729) % width, (i * 31 + k * 7907) % height
            draw.rectangle([x, y, x + width // 9, y + height // 11],
                           fill=((i * 40 + k * 13) % 256, (k * 29) % 256, (i * 7) % 256))
        image.save(folder / f"photo-{i:03d}.jpg", "JPEG", quality=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--width", type=int, default=6000)
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument("--size", type=int, default=128, help="thumbnail size (the app's: 128)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="geolocsft-preview-bench-") as tmp:
        folder = Path(tmp)
        began = time.perf_counter()
        make_photos(folder, args.count, args.width, args.height)
        total_mb = sum(p.stat().st_size for p in folder.glob("*.jpg")) / 1e6
        print(f"{args.count} JPEGs of {args.width}x{args.height} "
              f"({args.width * args.height / 1e6:.0f} MP, {total_mb:.0f} MB) made in "
              f"{time.perf_counter() - began:.0f} s; thumbnails of {args.size} px, 2 threads\n")
        print(f"{'decoding':<26}{'peak RSS (MB)':>14}{'time (s)':>10}{'per photo (ms)':>16}")
        for way, label in (("full", "full (open_image)"), ("reduced", "reduced (open_preview)")):
            done = subprocess.run([sys.executable, "-c", CHILD, way, str(folder), str(args.size)],
                                  capture_output=True, text=True, check=True)
            result = json.loads(done.stdout)
            print(f"{label:<26}{result['peak_rss_mb']:>14.0f}{result['seconds']:>10.1f}"
                  f"{1000 * result['seconds'] / max(result['count'], 1):>16.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
