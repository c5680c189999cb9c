"""What the engine costs on top of llama-cpp-python, what reusing the instruction prompt's KV
state saves, what grammar-constrained decoding costs, and how many vision tokens (and how much
encode time) a photo takes at the default budget. Prints tables; not a test.

    python bench/engine_overhead.py                      # the tiny Qwen2.5-VL test model
    python bench/engine_overhead.py --model models/NAME  # a real model folder
    python bench/engine_overhead.py --photos DIR --rounds 3 --max-tokens 64

"Direct" is llama-cpp-python's own path: `Llama.create_chat_completion` with the stock chat
handler (Qwen25VLChatHandler / MTMDChatHandler) and the prepared photo as a PNG data URI, the
same prompt, greedy, the same max_tokens (a random model rarely stops early; the generated
token counts are printed). The engine is timed on the same prepared photos with the prompt
cache off (the same work as direct) and on (its default).
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from geolocsft import families, images, protocol  # noqa: E402
from geolocsft.engine import Engine, ModelSpec  # noqa: E402

PHOTO_SIZES = [(320, 240), (640, 480), (1280, 960), (2048, 1536), (4032, 3024), (3024, 4032),
               (6000, 1000)]


def synthetic_photo(size, seed) -> Image.Image:
    """A photo-like image (gradients and noise-free blocks) of the given size."""
    width, height = size
    small = Image.new("RGB", (64, 48))
    px = small.load()
    for y in range(48):
        for x in range(64):
            px[x, y] = ((x * 4 + seed * 31) % 256, (y * 5 + seed * 17) % 256, (x * y + seed) % 256)
    return small.resize(size, Image.Resampling.BICUBIC)


def default_model_folder() -> Path:
    """The tiny Qwen2.5-VL model folder the tests use (built once into the cache)."""
    from convert.tiny import tiny_model_folder

    return Path(tiny_model_folder(families.DEFAULT, "Q8_0"))


def load_photos(folder: Path | None, count: int, budget) -> list[Image.Image]:
    if folder:
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        return [images.prepare_image(p, budget) for p in paths[:count]]
    return [images.fit_to_budget(synthetic_photo((640, 480), seed), budget) for seed in range(count)]


def run_direct(spec: ModelSpec, photos, *, max_tokens: int, n_threads: int, n_ctx: int):
    """Per-photo seconds and generated tokens through llama-cpp-python's stock chat handler."""
    import llama_cpp

    from convert.families import family_module
    from geolocsft.engine_mtmd import route_native_logs

    route_native_logs()
    handler = family_module(spec.family).stock_chat_handler(spec.mmproj)
    llm = llama_cpp.Llama(model_path=str(spec.gguf), chat_handler=handler, n_ctx=n_ctx,
                          n_threads=n_threads, n_threads_batch=n_threads, n_gpu_layers=-1,
                          seed=0, verbose=False, swa_full=families.get(spec.family).full_swa_cache)
    prompt = protocol.get_prompt(spec.prompt_version)
    times, tokens = [], []
    try:
        for i, photo in enumerate([photos[0]] + list(photos)):  # the first is a warm-up
            uri = "data:image/png;base64," + base64.b64encode(images.to_png_bytes(photo)).decode()
            messages = [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}},
                                             {"type": "text", "text": prompt.question}]},
            ]
            t0 = time.perf_counter()
            out = llm.create_chat_completion(messages=messages, temperature=0.0,
                                             max_tokens=max_tokens, repeat_penalty=1.0)
            if i:
                times.append(time.perf_counter() - t0)
                tokens.append(out["usage"]["completion_tokens"])
    finally:
        llm.close()
    return times, tokens


def run_engine(spec, photos, *, max_tokens, n_threads, n_ctx, grammar, reuse, **options):
    """Per-photo seconds and each photo's LocateResult through Engine.locate."""
    engine = Engine(spec, n_threads=n_threads, n_ctx=n_ctx, grammar=grammar,
                    max_tokens=max_tokens, reuse_prompt_cache=reuse, **options)
    times, results = [], []
    try:
        engine.locate(photos[0])  # warm-up: the first photo sizes the compute buffers
        for photo in photos:
            t0 = time.perf_counter()
            results.append(engine.locate(photo))
            times.append(time.perf_counter() - t0)
    finally:
        engine.close()
    return times, results


def grammar_check_cost(spec, n_threads) -> float:
    """Seconds per accepted-token grammar check (what a model that already writes the format
    pays per token with grammar on)."""
    from geolocsft.engine_sampling import Sampler

    engine = Engine(spec, n_threads=n_threads, grammar=False, max_tokens=1)
    try:
        model = engine._model
        sampler = Sampler(model.vocab, model.llama.n_vocab(), temperature=0.0, seed=0,
                          grammar=protocol.answer_grammar(spec.prompt_version),
                          top_k=40, top_p=0.95, min_p=0.05)
        # Walk the grammar with the tokens of a real target answer, checking each first.
        target = protocol.format_target(
            {"regional_25km": {"terrain": "rolling hills", "climate": "temperate",
                               "development": "rural"},
             "micro_1km": {"road": "asphalt, white edge lines", "infrastructure": "wooden poles",
                           "vegetation": "oak, pasture", "buildings": "stone farmhouses",
                           "vehicles": "right-hand traffic", "soil": "brown loam"},
             "eliminated": [{"region": "Ireland", "why": "driving side"}],
             "conclusion": "Rural Normandy, France"},
            protocol.Answer(49.1, -0.4, "Normandy", "France", 0.3))
        tokens = model.llama.tokenize(target.encode(), add_bos=False, special=False)
        t0 = time.perf_counter()
        for token in tokens:
            assert sampler._allowed(token), model.llama.detokenize([token])
            model._llama_cpp.llama_sampler_accept(sampler.grammar, token)
        per_token = (time.perf_counter() - t0) / len(tokens)
        sampler.free()
        return per_token
    finally:
        engine.close()


def median_ms(values) -> float:
    return statistics.median(values) * 1000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model folder (default: the tiny Qwen test model)")
    parser.add_argument("--photos", type=Path, help="folder of photos (default: synthetic 640x480)")
    parser.add_argument("--count", type=int, default=6, help="photos per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--n-ctx", type=int, default=4096)
    args = parser.parse_args(argv)

    folder = args.model or default_model_folder()
    spec = ModelSpec.from_folder(folder)
    photos = load_photos(args.photos, args.count, spec.budget)
    print(f"model: {folder}\nfamily: {spec.family}  photos: {len(photos)} x {args.rounds} "
          f"rounds  max_tokens: {args.max_tokens}  threads: {args.threads}")

    # 1. Engine vs direct on the same prepared photos, grammar off (the stock path has none):
    #    the prompt cache off is the same work as direct, on is the engine's default.
    common = dict(max_tokens=args.max_tokens, n_threads=args.threads, n_ctx=args.n_ctx)
    direct, direct_tokens, same, same_res, cached, cached_res = [], [], [], [], [], []
    for _ in range(args.rounds):  # interleaved, so drift in machine load hits all paths alike
        t, n = run_direct(spec, photos, **common)
        direct += t
        direct_tokens += n
        t, r = run_engine(spec, photos, grammar=False, reuse=False, **common)
        same += t
        same_res += r
        t, r = run_engine(spec, photos, grammar=False, reuse=True, **common)
        cached += t
        cached_res += r
    engine_tokens = [r.guesses[0].timings.generated_tokens for r in same_res]
    base = statistics.median(direct)
    print("\nPer-photo time, median over all photos and rounds")
    print(f"{'path':56} {'ms':>8} {'vs direct':>10} {'gen tokens':>11}")
    rows = [("llama-cpp-python direct (stock handler, PNG data URI)", direct, direct_tokens),
            ("Engine.locate, prompt cache off (same work as direct)", same, engine_tokens),
            ("Engine.locate, prompt cache on (default)", cached, engine_tokens)]
    for label, values, toks in rows:
        print(f"{label:56} {median_ms(values):8.1f} "
              f"{100 * (statistics.median(values) / base - 1):+9.1f}% {statistics.median(toks):11.0f}")

    off = [r.guesses[0].timings for r in same_res]
    on = [r.guesses[0].timings for r in cached_res]
    print("\nInstruction prompt KV reuse (language-model prefill per photo, median)")
    print(f"  without reuse {median_ms([t.prompt_s for t in off]):.1f} ms, with reuse "
          f"{median_ms([t.prompt_s for t in on]):.1f} ms: saves "
          f"{median_ms([t.prompt_s for t in off]) - median_ms([t.prompt_s for t in on]):.1f} ms "
          f"per photo; prompt {on[0].prompt_tokens} tokens, {on[0].image_tokens} of them image")

    # 2. Grammar: per-token cost for a model that writes the format (every token checked and
    #    accepted) and, as the worst case, the random model (most tokens rejected).
    check = grammar_check_cost(spec, args.threads)
    t, gram = run_engine(spec, photos[:2], grammar=True, reuse=True, n_threads=args.threads,
                         n_ctx=max(args.n_ctx, 2048), max_tokens=1500, max_value_chars=40)
    g_tim = [r.guesses[0].timings for r in gram]
    per_tok_off = statistics.median([x.generate_s / max(1, x.generated_tokens) for x in on])
    per_tok_on = statistics.median([x.generate_s / max(1, x.generated_tokens) for x in g_tim])
    print("\nGrammar-constrained decoding")
    print(f"  check of an accepted token: {check * 1e6:.0f} us/token "
          f"({100 * check / per_tok_off:.1f}% of this model's {per_tok_off * 1000:.2f} ms/token decode step)")
    print(f"  random model (worst case, most tokens rejected): {per_tok_on * 1000:.2f} ms/token vs "
          f"{per_tok_off * 1000:.2f} without grammar; parsed {sum(r.guesses[0].parsed.ok for r in gram)}"
          f"/{len(gram)} with grammar, {sum(r.guesses[0].parsed.ok for r in cached_res)}/{len(cached_res)} without")

    # 3. Vision tokens and encode time vs photo size at the family's default budget.
    budget = images.default_budget(spec.family)
    print(f"\nVision tokens and time vs photo size at the default budget {budget.to_dict()}")
    print(f"{'photo':>11} {'prepared':>11} {'tokens':>7} {'prepare ms':>11} {'encode ms':>10} {'prefill ms':>11}")
    engine = Engine(ModelSpec(**{**spec.__dict__, "budget": budget}), n_threads=args.threads,
                    n_ctx=args.n_ctx, grammar=False, max_tokens=1)
    try:
        for i, size in enumerate(PHOTO_SIZES):
            raw = synthetic_photo(size, i)
            t0 = time.perf_counter()
            prepared = images.fit_to_budget(raw, budget)
            prep = time.perf_counter() - t0
            engine.locate(prepared)  # warm-up for this size
            t = engine.locate(prepared).guesses[0].timings
            print(f"{size[0]:>5}x{size[1]:<5} {prepared.width:>5}x{prepared.height:<5} "
                  f"{t.image_tokens:>7} {prep * 1000:>11.1f} {t.image_encode_s * 1000:>10.1f} "
                  f"{t.prompt_s * 1000:>11.1f}")
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
