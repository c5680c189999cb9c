"""Batch throughput of LocateRunner vs the sum of model-only times (issue 5 perf goal >= 0.97):
the runner decodes + resizes the next photo on a worker thread while the model works."""
import sys, tempfile, time
from pathlib import Path
from PIL import Image
from convert.tiny import tiny_model_folder
from geolocsft import families
from geolocsft.engine import Engine, ModelSpec
from geolocsft.images import prepare_image
from geolocsft.locate import LocateRunner, find_photos
from geolocsft.store import ResultStore

n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
size = (4000, 3000)
tmp = Path(tempfile.mkdtemp())
for i in range(n):
    Image.effect_noise(size, 30 + i).convert("RGB").resize(size).save(tmp / f"p{i:02d}.jpg", quality=90)
items, _ = find_photos([tmp])
spec = ModelSpec.from_folder(tiny_model_folder(families.DEFAULT, "Q8_0"))
engine = Engine(spec, n_threads=1, grammar=False, max_tokens=int(sys.argv[2]) if len(sys.argv) > 2 else 48)
engine.locate(items[0].path)  # warm-up

def model_only(r):
    return (r.image_encode_s or 0) + (r.prompt_s or 0) + (r.generate_s or 0)

# Sequential baseline: prepare, then locate, on one thread.
t0 = time.perf_counter(); seq_model = 0.0; seq_prep = 0.0
for it in items:
    a = time.perf_counter(); img = prepare_image(it.path, spec.budget); seq_prep += time.perf_counter() - a
    res = engine.locate(img)
    g = res.guesses[0].timings; seq_model += g.image_encode_s + g.prompt_s + g.generate_s
seq_wall = time.perf_counter() - t0

store = ResultStore(tmp / "s.sqlite")
runner = LocateRunner(engine, store, places=True)
t0 = time.perf_counter(); summary = runner.run(items); wall = time.perf_counter() - t0
results = summary.results
model = sum(model_only(r) for r in results)
prep = sum(r.image_prepare_s or 0 for r in results)
print(f"photos {n} of {size[0]}x{size[1]} JPEG, tiny Qwen2.5-VL Q8_0, 1 thread, {engine.max_tokens} tokens")
print(f"{'mode':<34}{'wall s':>8}{'model-only s':>14}{'prepare s':>11}{'model/wall':>12}")
print(f"{'sequential prepare+locate':<34}{seq_wall:8.2f}{seq_model:14.2f}{seq_prep:11.2f}{seq_model/seq_wall:12.3f}")
print(f"{'LocateRunner (prefetch+store)':<34}{wall:8.2f}{model:14.2f}{prep:11.2f}{model/wall:12.3f}")
