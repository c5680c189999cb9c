"""What a laptop user needs to know: seconds per photo and photos per hour at real size.

Builds (first run: minutes, ~10 GB RAM) or reuses random-weight skeletons of the released models
(convert/skeleton.py: published configs, this project's converter), then times the engine on
synthetic photos of three sizes. Random weights write arbitrary text, so decode is timed on a
fixed, real-looking gls-v1 caption replayed through the engine (grammar and jump-forward on,
the caption's tokens taken instead of the sampled ones), and stock llama-cpp-python (its own
chat handler, same GGUF and photo) decodes the same number of tokens with end-of-turn banned.
Each configuration runs in its own process, so cold numbers are cold and peak RSS is its own.

    python bench/laptop.py                       # Qwen2.5-VL-3B Q4_K_M, all sizes, throughput
    python bench/laptop.py --sizes 640x480 --parallel 1,2 --quants Q4_K_M,Q8_0
    python bench/laptop.py --models qwen2.5-vl-3b-instruct,gemma-3-4b-it

Timings are for random weights (they time like the released weights; see docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from geolocsft import families  # noqa: E402

IM2GPS3K = 2997
# A gls-v1 caption in the teacher's style (~250 tokens with Qwen's tokenizer).
CAPTION = (
    '{"regional_25km":{"terrain":"flat river valley with low wooded hills on the horizon",'
    '"climate":"temperate oceanic, overcast sky, deciduous trees in full leaf",'
    '"development":"dense historic town centre fading into suburbs"},'
    '"micro_1km":{"road":"narrow cobbled street, white dashed centre line, raised kerbs",'
    '"infrastructure":"wall-mounted street lamps, cast-iron bollards, blue enamel street sign",'
    '"vegetation":"plane trees and lime trees, trimmed hedges",'
    '"buildings":"five-storey limestone facades, mansard roofs, wrought-iron balconies",'
    '"vehicles":"small European hatchbacks, right-hand traffic, yellow scooters",'
    '"soil":"not visible"},'
    '"eliminated":[{"region":"Belgium","why":"street signs are French-style blue enamel, not bilingual"},'
    '{"region":"Switzerland","why":"no mountains, plates are long white EU plates"}],'
    '"conclusion":"Haussmann-style street in a large French city, most likely central Paris"}\n'
    '<answer>{"latitude":48.8566,"longitude":2.3522,"region":"Ile-de-France",'
    '"country":"France","confidence":0.35}</answer>'
)
# The fast preset's compact gls-c1 caption of the same photo (about half the tokens).
COMPACT_CAPTION = (
    '{"context_25km":"temperate river valley, dense historic European city",'
    '"cues_1km":"cobbled street, limestone mansard facades, wall lamps, right-hand traffic",'
    '"eliminated":[{"region":"Belgium","why":"no bilingual signs"}],'
    '"conclusion":"central Paris"}\n'
    '<answer>{"latitude":48.8566,"longitude":2.3522,"region":"Ile-de-France",'
    '"country":"France","confidence":0.35}</answer>'
)
SIZES = {"640x480": (640, 480), "1024x768": (1024, 768), "12mp": (4000, 3000)}


def photo(size: tuple[int, int], seed: int, folder: Path) -> Path:
    """A synthetic photo with texture everywhere (JPEG), so decoding costs what a photo's does."""
    from PIL import Image

    path = folder / f"photo-{size[0]}x{size[1]}-{seed}.jpg"
    if not path.exists():
        small = Image.effect_noise((size[0] // 8, size[1] // 8), 40 + seed).convert("RGB")
        small.resize(size, Image.BICUBIC).save(path, quality=90)
    return path


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


# ------------------------------------------------------------------ one measurement (subprocess)

def run_engine(job: dict) -> dict:
    """Cold photo, then warm photos: jump-forward on and off (or `parallel` photos at once)."""
    from geolocsft.engine import Engine, ModelSpec

    spec = ModelSpec.from_folder(job["folder"])
    caption = CAPTION
    if job.get("preset") == "fast":  # the named contract: gls-c1 prompt + 256-token images
        import dataclasses

        from geolocsft.images import preset_budget

        spec = dataclasses.replace(spec, prompt_version="gls-c1",
                                   budget=preset_budget(spec.family, "fast"))
        caption = COMPACT_CAPTION
    folder = Path(job["photos"])
    size = tuple(job["size"])
    out: dict = {}
    t0 = time.perf_counter()
    engine = Engine(spec, n_threads=job["threads"], max_tokens=2048, parallel=job["parallel"],
                    n_gpu_layers=job["gpu_layers"])
    out["load_s"] = time.perf_counter() - t0
    if job["parallel"] == 1:
        cold = engine.replay([photo(size, 0, folder)], caption)[0].timings
        out["cold"] = cold.to_dict()
        for jf in ((False, True) if job.get("compare_jump_forward", True) else (True,)):
            engine.jump_forward = jf
            t = time.perf_counter()
            warm = engine.replay([photo(size, 1 + jf, folder)], caption)[0].timings
            out["warm_jf" if jf else "warm_plain"] = dict(warm.to_dict(), wall_s=time.perf_counter() - t)
    else:
        engine.replay([photo(size, 0, folder)], caption)  # cache the prefix, size buffers
        n = job["photos_per_run"]
        t = time.perf_counter()
        results = engine.replay([photo(size, 10 + i, folder) for i in range(n)], caption)
        out["batch_wall_s"] = time.perf_counter() - t
        out["batch_photos"] = n
        out["batch_tokens"] = sum(r.timings.generated_tokens for r in results)
    out["kv_mib_per_seq"] = kv_mib_per_token(spec.gguf) * engine._model.seq_ctx
    engine.close()
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def kv_mib_per_token(gguf: Path) -> float:
    """f16 K and V for every layer: what one token of context costs."""
    from geolocsft.gguf_header import read_gguf

    info = read_gguf(gguf)
    arch = info.architecture
    layers = int(info.get(f"{arch}.block_count"))
    heads_kv = int(info.get(f"{arch}.attention.head_count_kv"))
    key = int(info.get(f"{arch}.attention.key_length")
              or info.get(f"{arch}.embedding_length") // info.get(f"{arch}.attention.head_count"))
    value = int(info.get(f"{arch}.attention.value_length") or key)
    return layers * heads_kv * (key + value) * 2 / 1024 ** 2


def run_stock(job: dict) -> dict:
    """The same photo through llama-cpp-python's own chat handler, decoding the same number of
    tokens (end of turn banned), no grammar, no prefix cache."""
    import base64

    import llama_cpp

    from convert.families import family_module
    from geolocsft import protocol
    from geolocsft.manifest import read_manifest

    folder = Path(job["folder"])
    manifest = read_manifest(folder)
    handler = family_module(manifest.family).stock_chat_handler(folder / manifest.mmproj_file)
    llm = llama_cpp.Llama(model_path=str(folder / manifest.model_file), chat_handler=handler,
                          n_ctx=4096, n_threads=job["threads"], n_threads_batch=job["threads"],
                          n_batch=512, n_ubatch=512, n_gpu_layers=job["gpu_layers"], verbose=False)
    prompt = protocol.get_prompt()
    path = photo(tuple(job["size"]), 1, Path(job["photos"]))
    uri = "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()
    messages = [{"role": "system", "content": prompt.system},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                             {"type": "text", "text": prompt.question}]}]
    banned = {tok: -1e9 for tok in range(llm.n_vocab())
              if llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), tok)}
    t = time.perf_counter()
    reply = llm.create_chat_completion(messages=messages, max_tokens=job["tokens"],
                                       temperature=0.0, logit_bias=banned)
    wall = time.perf_counter() - t
    return {"wall_s": wall, "completion_tokens": reply["usage"]["completion_tokens"],
            "peak_rss_gb": peak_rss_gb()}


def in_subprocess(kind: str, job: dict) -> dict | None:
    """Run one measurement in a fresh process; a failed stock baseline is reported and left
    out (the engine's own rows must work)."""
    cmd = [sys.executable, __file__, "--job", kind, json.dumps(job)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    if done.returncode != 0:
        if kind == "stock":
            print(f"# stock baseline failed: {done.stderr.strip().splitlines()[-1:]}",
                  file=sys.stderr)
            return None
        raise SystemExit(f"{kind} job failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ the tables

def caption_tokens(folder: str) -> int:
    from geolocsft.manifest import read_manifest
    import llama_cpp

    manifest = read_manifest(Path(folder))
    llm = llama_cpp.Llama(model_path=str(Path(folder) / manifest.model_file), vocab_only=True,
                          verbose=False)
    return len(llm.tokenize(CAPTION.encode(), add_bos=False, special=False))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=next(iter(families.get(families.DEFAULT).skeletons)),
                        help="skeletons, comma-separated, of: " + ", ".join(families.all_skeletons()))
    parser.add_argument("--quants", default="Q4_K_M")
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"of {', '.join(SIZES)}")
    parser.add_argument("--parallel", default="1,2,4",
                        help="throughput mode: photos decoded together (640x480)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--gpu-layers", type=int, default=0)
    parser.add_argument("--no-stock", action="store_true", help="skip the stock baseline")
    parser.add_argument("--no-fast", action="store_true", help="skip the fast preset's row")
    parser.add_argument("--job", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        kind, job = args.job[0], json.loads(args.job[1])
        print(json.dumps(run_engine(job) if kind == "engine" else run_stock(job)))
        return 0

    from convert.skeleton import skeleton_folder

    photos = Path(tempfile.mkdtemp(prefix="geolocsft-laptop-"))
    sizes = [s for s in args.sizes.split(",") if s]
    parallels = [int(p) for p in args.parallel.split(",") if p]
    rows, batch_rows = [], []
    for model in args.models.split(","):
        for quant in args.quants.split(","):
            print(f"# {model} {quant}: building or reusing the skeleton ...", file=sys.stderr, flush=True)
            folder = str(skeleton_folder(model, quant, progress=lambda m: print(m, file=sys.stderr)))
            n_caption = caption_tokens(folder)
            base = dict(folder=folder, photos=str(photos), threads=args.threads,
                        gpu_layers=args.gpu_layers, parallel=1, photos_per_run=1)
            for size in sizes:
                job = dict(base, size=SIZES[size], compare_jump_forward=size == sizes[0])
                print(f"# {model} {quant} {size} ...", file=sys.stderr, flush=True)
                engine = in_subprocess("engine", job)
                stock = (None if args.no_stock or size != sizes[0]
                         else in_subprocess("stock", dict(job, tokens=n_caption)))
                rows.append((model, quant, size, n_caption, engine, stock))
                if not args.no_fast and size == sizes[0]:
                    print(f"# {model} {quant} {size} fast preset ...", file=sys.stderr, flush=True)
                    fast = in_subprocess("engine", dict(job, preset="fast"))
                    rows.append((model, quant, f"{size} fast", n_caption, fast, None))
            if parallels:
                size = "640x480" if "640x480" in sizes else sizes[0]
                for p in parallels:
                    measured = [r[4] for r in rows if r[:3] == (model, quant, size)]
                    if p == 1 and measured:  # the per-photo row measured it
                        batch_rows.append((model, quant, size, 1, measured[0]))
                        continue
                    print(f"# {model} {quant} parallel {p} ...", file=sys.stderr, flush=True)
                    job = dict(base, size=SIZES[size], parallel=p, photos_per_run=max(p, 2) * 2)
                    batch_rows.append((model, quant, size, p, in_subprocess("engine", job)))
    print_tables(rows, batch_rows, args)
    return 0


def print_tables(rows, batch_rows, args) -> None:
    print(f"\nPer photo ({args.threads} threads, gpu layers {args.gpu_layers}; random weights; "
          f"decode = the {rows[0][3] if rows else 0}-token reference caption)\n")
    head = ("model", "quant", "photo", "img tok", "encode s", "cold prefill", "warm prefill",
            "decode tok/s (jump-fwd)", "s/photo plain", "s/photo jump-fwd", "forced", "stock s", "vs stock",
            "peak RSS GB", "Im2GPS3k h")
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for model, quant, size, n_caption, engine, stock in rows:
        cold, jf = engine["cold"], engine["warm_jf"]
        plain = engine.get("warm_plain")

        def per_photo(t):
            return t["image_prepare_s"] + t["image_encode_s"] + t["prompt_s"] + t["generate_s"]

        plain_s, jf_s = (per_photo(plain) if plain else None), per_photo(jf)
        stock_s = stock["wall_s"] if stock else None
        cells = [model, quant, size, str(jf["image_tokens"]), f"{jf['image_encode_s']:.1f}",
                 f"{cold['prompt_tokens']} tok {cold['prompt_s']:.1f} s",
                 f"{jf['prompt_tokens']} tok {jf['prompt_s']:.1f} s",
                 f"{jf['generated_tokens'] / jf['generate_s']:.1f}",
                 f"{plain_s:.1f}" if plain_s else "-", f"{jf_s:.1f}",
                 f"{jf['forced_tokens']}/{jf['generated_tokens']}",
                 f"{stock_s:.1f}" if stock_s else "-",
                 f"{stock_s / jf_s:.2f}x" if stock_s else "-",
                 f"{engine['peak_rss_gb']:.2f}", f"{jf_s * IM2GPS3K / 3600:.1f}"]
        print(" | ".join(cells))
    if not batch_rows:
        return
    print("\nThroughput mode (photos decoded together in one context, jump-forward on)\n")
    head = ("model", "quant", "photo", "parallel", "photos", "wall s", "s/photo", "photos/h",
            "vs parallel 1", "KV MiB/seq", "peak RSS GB", "Im2GPS3k h")
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    first: dict = {}
    for model, quant, size, p, engine in batch_rows:
        if p == 1:
            per = (engine["warm_jf"]["image_prepare_s"] + engine["warm_jf"]["image_encode_s"]
                   + engine["warm_jf"]["prompt_s"] + engine["warm_jf"]["generate_s"])
            n, wall = 1, per
        else:
            n, wall = engine["batch_photos"], engine["batch_wall_s"]
            per = wall / n
        base = first.setdefault((model, quant), per)
        print(" | ".join([model, quant, size, str(p), str(n), f"{wall:.1f}", f"{per:.1f}",
                          f"{3600 / per:.0f}", f"{base / per:.2f}x",
                          f"{engine['kv_mib_per_seq']:.0f}", f"{engine['peak_rss_gb']:.2f}",
                          f"{per * IM2GPS3K / 3600:.1f}"]))


if __name__ == "__main__":
    raise SystemExit(main())
