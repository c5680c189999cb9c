"""Throughput of `locate --ray` on this machine (issue 13): a Ray pool of 1 and of 2 actors
(1 llama.cpp thread each) against single-process `locate` with 2 threads on the same photos.
Prints photos/s, the ratios the issue asks for (2 actors >= 1.8x one actor; Ray within 10 % of
single-process at equal total threads) and the driver's own time per photo (store writes).

    PYTHONPATH=$PWD python bench/cluster_throughput.py [PHOTOS] [MAX_TOKENS]

Wall times include starting each actor pool (loading the model in every actor), as a real run
does; Ray itself is started once, before the timed runs."""

import os
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

import ray
from cluster.backend import ClusterEngine, ClusterOptions
from cluster.runner import RayLocateRunner
from convert.tiny import tiny_model_folder
from geolocsft import families
from geolocsft.engine import Engine, ModelSpec
from geolocsft.locate import LocateRunner, find_photos
from geolocsft.store import ResultStore

n = int(sys.argv[1]) if len(sys.argv) > 1 else 24
max_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 96
size = (640, 480)
tmp = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
(tmp / "photos").mkdir()
for i in range(n):
    Image.effect_noise(size, 30 + i).convert("RGB").save(tmp / "photos" / f"p{i:03d}.jpg", quality=90)
items, _ = find_photos([tmp / "photos"])
spec = ModelSpec.from_folder(tiny_model_folder(families.DEFAULT, "Q8_0"))
engine_kwargs = {"grammar": False, "max_tokens": max_tokens}
rows = []

REPEATS = 2  # the machine is shared: each row is the best of REPEATS runs


def single_process(threads: int) -> float:
    """Wall s of `locate --threads T` on the photos, model load included like the Ray rows."""
    start = time.perf_counter()
    with Engine(spec, n_threads=threads, **engine_kwargs) as engine, \
            ResultStore(tmp / f"one-{time.monotonic_ns()}.sqlite") as store:
        summary = LocateRunner(engine, store, places=False).run(items)
    assert summary.count("computed") == n, summary.count("error")
    return time.perf_counter() - start


load_before = os.getloadavg()[0]
for threads in (2, 1):
    rows.append((f"locate, 1 process x {threads} thread{'s' * (threads > 1)}",
                 min(single_process(threads) for _ in range(REPEATS)), None))

os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
         log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}})


def ray_pool(actors: int) -> tuple[float, float]:
    """Wall s (settings probe and every actor's model load included) and driver ms/photo."""
    start = time.perf_counter()
    engine = ClusterEngine(spec, ClusterOptions(actors=actors, threads_per_actor=1), engine_kwargs)
    try:
        with ResultStore(tmp / f"ray-{time.monotonic_ns()}.sqlite") as store:
            summary = RayLocateRunner(engine, store, places=False).run(items)
    finally:
        engine.close()  # not owned: the pool's actors go when their dataset ends
    wall = time.perf_counter() - start
    assert summary.count("computed") == n, [o.message for o in summary.outcomes if o.message][:3]
    return wall, 1000 * engine.stats.driver_s / max(engine.stats.rows, 1)


try:  # Ray started here must stop here, also on Ctrl-C
    for actors in (1, 2):
        wall, driver_ms = min(ray_pool(actors) for _ in range(REPEATS))
        rows.append((f"--ray, {actors} actor{'s' * (actors > 1)} x 1 thread", wall, driver_ms))
finally:
    ray.shutdown()

print(f"{n} photos {size[0]}x{size[1]} JPEG, tiny Qwen2.5-VL Q8_0, no grammar, {max_tokens} tokens "
      f"per photo, {os.cpu_count()} CPUs shared with other work (load average "
      f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after), best of {REPEATS}")
print(f"{'run':<34}{'wall s':>8}{'photos/s':>10}{'driver ms/photo':>17}")
rate = {}
for name, wall, driver_ms in rows:
    rate[name] = n / wall
    print(f"{name:<34}{wall:8.2f}{n / wall:10.3f}{'' if driver_ms is None else f'{driver_ms:.1f}':>17}")
local, one, two = (rate[r[0]] for r in (rows[0], rows[2], rows[3]))
print(f"2 actors / 1 actor: {two / one:.2f}x (goal >= 1.8x); "
      f"2 actors / single process (2 threads): {two / local:.2f} (goal >= 0.90)")
