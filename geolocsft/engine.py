"""The inference engine: a model folder (or a GGUF + projector pair) in, coordinates with
reasoning out, offline, through llama-cpp-python.

It uses the core's prompt (`geolocsft.protocol`) and image preparation (`geolocsft.images`), and
the chat template stored in the GGUF, so a fine-tune sees at inference exactly what it saw in
training. Greedy decoding by default (the paper's single pass); `samples=K` with a temperature
gives several guesses fused by a geodesic medoid with a spread radius.

llama_cpp is imported lazily (inside `engine_mtmd`), so `import geolocsft.engine` works without
the app extra; only constructing an `Engine` needs it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from geolocsft import families, geo, images, protocol
from geolocsft.gguf_header import GGUFFormatError, read_gguf
from geolocsft.images import ImageBudget

# Grammar-constrained decoding is on by default: measured on this machine (see
# bench/engine_overhead.py and docs) it costs little per token and makes every answer parse.
DEFAULT_GRAMMAR = True
DEFAULT_N_CTX = 4096
DEFAULT_MAX_TOKENS = 768


class EngineError(Exception):
    """A model that cannot be used or a run that failed; the message names the file and the
    problem."""


# ---------------------------------------------------------------------------------------------
# What is loaded


@dataclass
class ModelSpec:
    gguf: Path
    mmproj: Path
    family: str  # a geolocsft.families name
    budget: ImageBudget
    prompt_version: str
    model_sha256: str
    name: str

    @classmethod
    def from_folder(cls, folder) -> ModelSpec:
        """A model folder as the converter writes it: model-<QUANT>.gguf, mmproj-<type>.gguf
        and manifest.json (family, prompt version, image budget, checksums). The model's
        sha256 is the file's own (cached by size and mtime): a file replaced in place is a
        different model for the results store."""
        from geolocsft.manifest import ManifestError, read_manifest

        folder = Path(folder)
        if not folder.is_dir():
            raise EngineError(f"{folder}: model folder not found")
        try:
            manifest = read_manifest(folder)
        except ManifestError as exc:
            raise EngineError(str(exc)) from None
        source = folder / "manifest.json"
        gguf, mmproj = (_listed_file(folder, manifest.model_file, "model_file"),
                        _listed_file(folder, manifest.mmproj_file, "mmproj_file"))
        try:
            family = families.get(manifest.family).name
            budget = (ImageBudget.from_dict(manifest.image_budget) if manifest.image_budget
                      else images.default_budget(family))
            protocol.get_prompt(manifest.prompt_version)
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineError(f"{source}: {exc}") from None
        return cls(gguf=gguf, mmproj=mmproj, family=family, budget=budget,
                   prompt_version=manifest.prompt_version,
                   model_sha256=file_sha256(gguf),  # as the file is now, not as listed
                   name=manifest.name or folder.name)

    @classmethod
    def from_files(cls, gguf, mmproj, family=None, *, budget: ImageBudget | None = None,
                   prompt_version: str | None = None) -> ModelSpec:
        """An explicit GGUF + projector pair; the family comes from the GGUF's metadata when
        not given, the image budget is the family's default unless given."""
        gguf, mmproj = Path(gguf), Path(mmproj)
        info = _read_checked(gguf)
        if family is None:
            family = family_of(info)
        try:
            family = families.get(family).name
        except families.UnknownFamilyError as exc:
            raise EngineError(str(exc)) from None
        return cls(gguf=gguf, mmproj=mmproj, family=family,
                   budget=budget or images.default_budget(family),
                   prompt_version=prompt_version or protocol.PROMPT_VERSION,
                   model_sha256=file_sha256(gguf), name=gguf.stem)


def _listed_file(folder: Path, name: str, key: str) -> Path:
    if not name or Path(name).name != name:
        raise EngineError(f"{folder / 'manifest.json'}: '{key}' is missing or not a plain file name")
    if not (folder / name).is_file():
        raise EngineError(f"{folder / name}: listed in the manifest but missing")
    return folder / name


def file_sha256(path: Path) -> str:
    from geolocsft.manifest import current_sha256

    try:
        return current_sha256(path)
    except OSError as exc:
        raise EngineError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _read_checked(path: Path):
    try:
        return read_gguf(path)
    except GGUFFormatError as exc:
        raise EngineError(str(exc)) from None


def family_of(info) -> str:
    """The family name of a text-model GGUF from its architecture."""
    arch = info.architecture
    if arch == "clip":
        raise EngineError(f"{info.path}: this is a projector (mmproj), not a text model")
    try:
        return families.by_gguf_architecture(arch).name
    except families.UnknownFamilyError as exc:
        raise EngineError(f"{info.path}: unsupported model: {exc}") from None


def check_pair(model_info, projector_info, family: str):
    """Refuse a projector that was not made for this model, before libmtmd sees it."""
    model_path, proj_path = model_info.path, projector_info.path
    if projector_info.architecture != "clip":
        raise EngineError(f"{proj_path}: not a projector (mmproj) file "
                          f"(architecture {projector_info.architecture!r})")
    if not projector_info.get("clip.has_vision_encoder", True):
        raise EngineError(f"{proj_path}: projector has no vision encoder")
    spec = families.get(family)
    if family_of(model_info) != spec.name:
        raise EngineError(f"{model_path}: a {family_of(model_info)} model, "
                          f"but the model spec says {spec.name}")
    ptype = projector_info.get("clip.vision.projector_type") or projector_info.get("clip.projector_type")
    if ptype and ptype not in spec.projector_types:
        raise EngineError(f"{proj_path}: projector type {ptype!r} does not match the "
                          f"{spec.name} model {model_path.name}")
    n_embd = model_info.get(f"{model_info.architecture}.embedding_length")
    proj_dim = projector_info.get("clip.vision.projection_dim")
    if n_embd and proj_dim and int(n_embd) != int(proj_dim):
        raise EngineError(f"{proj_path}: projector outputs {proj_dim}-wide embeddings but "
                          f"{model_path.name} expects {n_embd}: the projector belongs to another model")


# ---------------------------------------------------------------------------------------------
# What comes out


@dataclass
class Timings:
    image_prepare_s: float = 0.0  # open + orient + resize (0 when given a prepared image)
    image_encode_s: float = 0.0  # vision encoder
    prompt_s: float = 0.0  # language-model prefill: text + image embeddings
    generate_s: float = 0.0
    prompt_tokens: int = 0  # true count, image included
    image_tokens: int = 0
    generated_tokens: int = 0
    tokens_per_s: float = 0.0
    prefix_reused: bool = False  # the instruction prompt's KV state came from the cache
    forced_tokens: int = 0  # of generated_tokens, those decoded in a grammar draft batch

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Guess:
    text: str
    parsed: protocol.ParseResult
    timings: Timings
    finish: str = "stop"  # "stop" (end of turn), "length" (max_tokens/context), "cancelled"


@dataclass
class LocateResult:
    guesses: list[Guess] = field(default_factory=list)
    # samples > 1: geo.consensus of the parsed guesses' points (its index is into parsed_guesses)
    consensus: geo.Consensus | None = None
    cancelled: bool = False

    @property
    def parsed_guesses(self) -> list[Guess]:
        return [g for g in self.guesses if g.parsed.ok]

    @property
    def best(self) -> Guess | None:
        """The one place that picks the answer: with several guesses the consensus's medoid
        (one of the guesses), else the first that parsed."""
        parsed = self.parsed_guesses
        if not parsed:
            return None
        return parsed[self.consensus.index] if self.consensus is not None else parsed[0]

    @property
    def point(self) -> tuple[float, float] | None:
        """(lat, lon) of the best guess (with several guesses: the consensus point)."""
        best = self.best
        return (best.parsed.latitude, best.parsed.longitude) if best else None

    @property
    def radius_km(self) -> float | None:
        return self.consensus.radius_km if self.consensus is not None else None

    @property
    def text(self) -> str:
        best = self.best or (self.guesses[0] if self.guesses else None)
        return best.text if best else ""

    @property
    def timings(self) -> Timings:
        """Summed over the guesses (tokens/s recomputed)."""
        total = Timings()
        for guess in self.guesses:
            for name in ("image_prepare_s", "image_encode_s", "prompt_s", "generate_s",
                         "prompt_tokens", "image_tokens", "generated_tokens", "forced_tokens"):
                setattr(total, name, getattr(total, name) + getattr(guess.timings, name))
        total.tokens_per_s = total.generated_tokens / total.generate_s if total.generate_s else 0.0
        total.prefix_reused = bool(self.guesses) and self.guesses[0].timings.prefix_reused
        return total


# ---------------------------------------------------------------------------------------------
# The engine


class Engine:
    """One loaded model. `locate` is serialised by a lock; load once, locate many photos."""

    def __init__(self, spec: ModelSpec, *, n_threads: int | None = None,
                 n_ctx: int = DEFAULT_N_CTX, image_max_tokens: int | None = None,
                 grammar: bool = DEFAULT_GRAMMAR, max_tokens: int = DEFAULT_MAX_TOKENS,
                 seed: int = 0, n_batch: int = 512, n_gpu_layers: int = -1,
                 reuse_prompt_cache: bool = True, max_value_chars: int | None = None,
                 jump_forward: bool = True, parallel: int = 1):
        """n_gpu_layers: layers offloaded when llama.cpp was built with a GPU backend (-1 all).
        reuse_prompt_cache: keep the instruction prompt's KV state between photos (False only
        to measure what it saves; the output is identical either way).
        max_value_chars: with grammar on, the longest string value the model may write
        (default: the protocol's MAX_VALUE_CHARS).
        jump_forward: with grammar on, decode the text the grammar forces (JSON keys,
        punctuation) as one verified batch instead of token by token; same tokens.
        parallel: photos `locate_many` decodes together in one context (throughput mode);
        n_ctx is per photo."""
        from geolocsft.engine_mtmd import MtmdModel, NativeError, render_prompt

        self.spec = spec
        self.grammar_enabled = bool(grammar)
        self.max_tokens = int(max_tokens)
        self.seed = int(seed)
        self.reuse_prompt_cache = bool(reuse_prompt_cache)
        self.max_value_chars = int(max_value_chars or protocol.MAX_VALUE_CHARS)
        self.jump_forward = bool(jump_forward)
        self.parallel = int(parallel)
        if self.parallel < 1:
            raise EngineError(f"parallel must be at least 1, got {parallel}")
        if self.max_tokens < 1:
            raise EngineError(f"max_tokens must be at least 1, got {max_tokens}")
        self.prompt = protocol.get_prompt(spec.prompt_version)
        model_info = _read_checked(Path(spec.gguf))
        projector_info = _read_checked(Path(spec.mmproj))
        family = families.get(spec.family)
        check_pair(model_info, projector_info, family.name)
        self.image_min_tokens, default_max = _image_token_limits(spec.budget)
        self.image_max_tokens = int(image_max_tokens or default_max)
        self._lock = threading.Lock()
        try:
            self._model = MtmdModel(
                str(spec.gguf), str(spec.mmproj), family=family.name,
                n_ctx=int(n_ctx), n_threads=n_threads, n_batch=int(n_batch),
                n_gpu_layers=int(n_gpu_layers), seed=self.seed,
                image_min_tokens=min(self.image_min_tokens, self.image_max_tokens),
                image_max_tokens=self.image_max_tokens,
                # Sliding-window layers would otherwise drop the instruction prompt.
                swa_full=family.full_swa_cache, n_seq=self.parallel,
                recurrent=family.recurrent,
            )
        except NativeError as exc:
            raise EngineError(f"{spec.gguf} + {spec.mmproj}: cannot load: {exc}") from None
        try:
            metadata = self._model.metadata()
            template = metadata.get("tokenizer.chat_template")
            if not template:
                raise EngineError(f"{spec.gguf}: no chat template in the GGUF metadata")
            bos, eos = self._model.bos_eos()
            messages = protocol.chat_messages(self.prompt)
            try:
                self._prompt_text = render_prompt(template, messages, family.name,
                                                  self._model.marker, bos, eos)
            except Exception as exc:
                raise EngineError(f"{spec.gguf}: cannot render the chat template: {exc}") from None
            self._grammar_text = (protocol.answer_grammar(spec.prompt_version, self.max_value_chars)
                                  if grammar else None)
            if self._grammar_text:
                try:
                    self._model.check_grammar(self._grammar_text)
                except NativeError as exc:
                    raise EngineError(f"answer grammar for {spec.prompt_version}: {exc}") from None
        except BaseException:
            self._model.close()
            raise

    # -- description -------------------------------------------------------------------------

    def settings(self, *, samples: int = 1, temperature: float = 0.0) -> dict:
        """Everything that changes the output, for result-store keys. Pass the locate call's
        samples/temperature to include them (threads and context size do not change output)."""
        import importlib.metadata

        try:
            runtime = importlib.metadata.version("llama-cpp-python")
        except importlib.metadata.PackageNotFoundError:
            runtime = "unknown"
        out = {
            "model_sha256": self.spec.model_sha256,
            "family": families.get(self.spec.family).name,
            "prompt_version": self.spec.prompt_version,
            "image_budget": self.spec.budget.to_dict(),
            "image_max_tokens": self.image_max_tokens,
            "grammar": self.grammar_enabled,
            "max_value_chars": self.max_value_chars if self.grammar_enabled else None,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "samples": int(samples),
            "temperature": float(temperature),
            "runtime": f"llama-cpp-python {runtime}",
        }
        if temperature > 0:
            from geolocsft.engine_mtmd import SAMPLING_MIN_P, SAMPLING_TOP_K, SAMPLING_TOP_P

            out["sampling"] = {"top_k": SAMPLING_TOP_K, "top_p": SAMPLING_TOP_P,
                               "min_p": SAMPLING_MIN_P}
        return out

    @property
    def prompt_text(self) -> str:
        """The rendered conversation with mtmd's image marker (for inspection and tests)."""
        return self._prompt_text

    # -- the work ----------------------------------------------------------------------------

    def locate(self, image, *, on_token=None, on_guess=None,
               cancel: threading.Event | None = None, samples: int = 1,
               temperature: float = 0.0) -> LocateResult:
        """Geolocate one photo. `image` is a path (prepared here with the model's budget) or a
        PIL image already prepared with `images.prepare_image(path, spec.budget)`.
        on_token(piece) receives the text as it is generated; guesses stream one after another
        and on_guess(k) is called before guess k (0-based) starts. cancel: a threading.Event
        checked before each token; when set, returns promptly with cancelled=True and what was
        generated so far."""
        from geolocsft.engine_mtmd import NativeError

        if samples < 1:
            raise EngineError(f"samples must be at least 1, got {samples}")
        if temperature < 0:
            raise EngineError(f"temperature must be >= 0, got {temperature}")
        if self._model is None:
            raise EngineError(f"{self.spec.gguf}: the engine is closed")
        result = LocateResult()
        if cancel is not None and cancel.is_set():
            result.cancelled = True
            return result
        t0 = time.perf_counter()
        rgb = self._prepare(image)
        prepare_s = time.perf_counter() - t0
        with self._lock:
            if self._model is None:
                raise EngineError(f"{self.spec.gguf}: the engine is closed")
            try:
                stats = self._model.evaluate_prompt(
                    self._prompt_text, rgb, reuse_prefix=self.reuse_prompt_cache, cancel=cancel,
                    keep_prompt_state=samples > 1)
                if stats is None:
                    result.cancelled = True
                    return result
                for k in range(samples):
                    if on_guess is not None:
                        on_guess(k)
                    timings = Timings()
                    if k == 0:
                        timings.image_prepare_s = prepare_s
                        timings.image_encode_s = stats.image_encode_s
                        timings.prompt_s = stats.prompt_s
                    timings.prefix_reused = stats.prefix_reused or k > 0
                    timings.prompt_tokens, timings.image_tokens = stats.prompt_tokens, stats.image_tokens
                    gen = self._model.generate(
                        max_tokens=self.max_tokens, temperature=temperature,
                        seed=self.seed + k, grammar=self._grammar_text, on_piece=on_token,
                        cancel=cancel, jump_forward=self.jump_forward)
                    guess = _guess(gen, timings)
                    result.guesses.append(guess)
                    if gen.finish == "cancelled":
                        result.cancelled = True
                        return result
            except (NativeError, RuntimeError) as exc:  # RuntimeError: llama_decode failed
                raise EngineError(f"{_label(image)}: inference failed: {exc}") from None
        points = [(g.parsed.latitude, g.parsed.longitude) for g in result.parsed_guesses]
        if samples > 1 and points:
            result.consensus = geo.consensus(points)
        return result

    def replay(self, images, caption: str) -> list[LocateResult]:
        """Benchmarks: run each photo's prompt as `locate_many` does, then decode `caption`'s
        tokens as if the model had sampled them (grammar, jump-forward and batching as set).
        Random-weight models write arbitrary text; this times a real caption's decode."""
        tokens = self._model.tokenize(caption)
        return self.locate_many(images, _replay=tokens)

    def locate_many(self, images, *, on_token=None, cancel: threading.Event | None = None,
                    temperature: float = 0.0, _replay: list[int] | None = None) -> list[LocateResult]:
        """Geolocate several photos together (throughput mode): each is prefilled into its own
        sequence, sharing the cached instruction prefix, then all are decoded in one batch per
        step. At most `parallel` at a time (more are done in groups). Greedy results equal
        `locate`'s, photo by photo. on_token(i, piece) streams photo i's text. One guess each."""
        if self._model is None:
            raise EngineError(f"{self.spec.gguf}: the engine is closed")
        images = list(images)
        results: list[LocateResult] = []
        for start in range(0, len(images), self.parallel):
            group = images[start:start + self.parallel]
            offset = start
            stream = (None if on_token is None
                      else lambda i, piece, _o=offset: on_token(_o + i, piece))
            results += self._locate_group(group, stream, cancel, temperature, _replay)
        return results

    def _locate_group(self, group, on_token, cancel, temperature, replay):
        from geolocsft.engine_mtmd import NativeError

        results = [LocateResult() for _ in group]
        if cancel is not None and cancel.is_set():
            for r in results:
                r.cancelled = True
            return results
        prepared = []
        for image in group:
            t0 = time.perf_counter()
            prepared.append((self._prepare(image), time.perf_counter() - t0))
        with self._lock:
            if self._model is None:
                raise EngineError(f"{self.spec.gguf}: the engine is closed")
            stats = []
            try:
                for slot, (rgb, _) in enumerate(prepared):
                    try:
                        got = self._model.evaluate_prompt(self._prompt_text, rgb, reuse_prefix=True,
                                                          cancel=cancel, seq_id=slot)
                    except (NativeError, RuntimeError) as exc:
                        raise EngineError(f"{_label(group[slot])}: inference failed: {exc}") from None
                    if got is None:
                        for r in results:
                            r.cancelled = True
                        return results
                    stats.append(got)
                try:
                    gens = self._model.generate_many(
                        list(range(len(group))), max_tokens=self.max_tokens,
                        temperature=temperature, seeds=[self.seed] * len(group),
                        grammar=self._grammar_text, on_piece=on_token, cancel=cancel,
                        jump_forward=self.jump_forward,
                        replays=[replay] * len(group) if replay is not None else None)
                except (NativeError, RuntimeError) as exc:
                    raise EngineError(f"{_label(group[0])} and {len(group) - 1} more: "
                                      f"inference failed: {exc}") from None
            finally:
                for slot in range(1, len(group)):
                    self._model.release(slot)
        for result, (_, prepare_s), st, gen in zip(results, prepared, stats, gens):
            timings = Timings(image_prepare_s=prepare_s, image_encode_s=st.image_encode_s,
                              prompt_s=st.prompt_s, prompt_tokens=st.prompt_tokens,
                              image_tokens=st.image_tokens, prefix_reused=st.prefix_reused)
            result.guesses.append(_guess(gen, timings))
            result.cancelled = gen.finish == "cancelled"
        return results

    def _prepare(self, image):
        from PIL import Image

        if isinstance(image, Image.Image):
            # Already prepared by the caller (e.g. on another thread); fit_to_budget keeps the
            # size of an image that already fits and only converts what is not RGB.
            return images.fit_to_budget(image, self.spec.budget)
        return images.prepare_image(image, self.spec.budget)

    def close(self):
        with self._lock:
            if self._model is not None:
                self._model.close()
                self._model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _image_token_limits(budget: ImageBudget) -> tuple[int, int]:
    """mtmd's (min, max) image tokens matching the budget, so the projector keeps the size the
    image was prepared at instead of resizing it again."""
    resize = budget.spec.image.resize
    if resize == "square":
        return -1, -1  # a fixed square, a fixed count: mtmd's own values apply
    per_token = budget.factor * budget.factor
    low = budget.min_pixels // per_token if resize == "smart" else 1
    return max(1, low), max(1, budget.max_pixels // per_token)


def _guess(gen, timings: Timings) -> Guess:
    timings.generate_s = gen.generate_s
    timings.generated_tokens = gen.generated_tokens
    timings.forced_tokens = gen.forced_tokens
    timings.tokens_per_s = gen.generated_tokens / gen.generate_s if gen.generate_s > 0 else 0.0
    return Guess(gen.text, protocol.parse_output(gen.text), timings, gen.finish)


def _label(image) -> str:
    return str(image) if isinstance(image, (str, Path)) else "<image>"
