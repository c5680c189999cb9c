"""The engine's low level: one loaded model (libllama) plus its projector (libmtmd), driven
directly through llama-cpp-python's bindings instead of its chat handlers, because the engine
needs what the stock handlers do not give:

- the instruction prompt's KV state is kept between photos (the handlers clear the cache on
  every call), so a photo costs only its image and the short text after it; for a model with
  recurrent layers, whose state cannot be cut back to a position, a saved copy of the
  prefix's state is restored instead (geolocsft/engine_state.py);
- mtmd's image token limits are set from the model's image budget (the handlers leave them at
  the projector's maxima and reserve a large compute buffer);
- the prepared image goes to mtmd as raw RGB pixels: no PNG round trip, and no URL that could
  ever reach a network;
- native log output is routed to Python logging instead of the terminal;
- token counts are true counts (the Qwen handler reports positions, which undercount images).

llama_cpp is imported lazily, inside functions, so the core imports without the app extra.
"""

from __future__ import annotations

import codecs
import collections
import ctypes
import logging
import time
from dataclasses import dataclass, field

from geolocsft import engine_state, families

NATIVE_LOG = logging.getLogger("geolocsft.engine.native")
# Silent unless the application configures logging (no "last resort" printing to stderr).
NATIVE_LOG.addHandler(logging.NullHandler())

SAMPLING_TOP_K = 40
SAMPLING_TOP_P = 0.95
SAMPLING_MIN_P = 0.05


class NativeError(RuntimeError):
    """A libllama/libmtmd call failed; the message carries the last native error line."""


# ---------------------------------------------------------------------------------------------
# Native logs → Python logging


class _NativeLogRouter:
    """One process-wide callback for libllama, ggml and libmtmd. Keeps the last error lines so
    a failed load can say why."""

    # ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (llama-cpp-python's own
    # table predates the reordering and shows INFO lines as warnings).
    _LEVELS = {0: logging.CRITICAL, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING,
               4: logging.ERROR}

    def __init__(self):
        self.installed = False
        self.recent_errors: collections.deque[str] = collections.deque(maxlen=8)
        self._last_level = logging.DEBUG
        self._callback = None  # the ctypes callback must outlive the C side's pointer to it

    def install(self):
        if self.installed:
            return
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd_cpp

        @llama_cpp.llama_log_callback
        def callback(level, text, _user_data):
            try:
                py_level = self._LEVELS.get(level, self._last_level)  # 5 = continue the previous
                self._last_level = py_level
                if py_level >= logging.ERROR or NATIVE_LOG.isEnabledFor(py_level):
                    message = (text or b"").decode("utf-8", "replace").rstrip("\n")
                    if not message.strip():
                        return
                    if py_level >= logging.ERROR:
                        self.recent_errors.append(message.strip())
                    NATIVE_LOG.log(py_level, "%s", message)
            except Exception:  # a log line must never take the process down from C
                pass

        self._callback = callback
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
        mtmd_cpp.mtmd_log_set(callback, ctypes.c_void_p(0))
        mtmd_cpp.mtmd_helper_log_set(callback, ctypes.c_void_p(0))
        self.installed = True

    def last_error(self) -> str:
        return self.recent_errors[-1] if self.recent_errors else ""


LOG_ROUTER = _NativeLogRouter()


def route_native_logs():
    """Send libllama/libmtmd output to the `geolocsft.engine.native` logger (silent unless
    logging is configured), once per process."""
    LOG_ROUTER.install()


# ---------------------------------------------------------------------------------------------
# Prompt rendering


def render_prompt(chat_template: str, messages: list[dict], family: str, marker: str,
                  bos_token: str, eos_token: str) -> str:
    """Render the conversation with the model's own chat template (as transformers does at
    training time), then put mtmd's media marker where the processor would expand the image."""
    import jinja2
    import jinja2.ext

    import json

    from geolocsft.template_guard import guarded_environment, render_guarded

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    # Untrusted code from the model file: sandboxed and bounded in time, memory and size.
    env = guarded_environment(trim_blocks=True, lstrip_blocks=True,
                              extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    spec = families.get(family)
    text = render_guarded(
        env, chat_template, messages=messages, add_generation_prompt=True, bos_token=bos_token,
        eos_token=eos_token, **dict(spec.chat_template_kwargs),
    )
    # The text the HF chat template puts where the image goes (the processor expands it at
    # training time); mtmd's marker takes its place, and mtmd adds the begin/end-of-image
    # tokens itself, so the token sequence matches what the fine-tune saw.
    placeholder, replacement = spec.image_placeholder, spec.placeholder_wrap
    count = text.count(placeholder)
    if count != 1:
        raise ValueError(
            f"the chat template rendered {count} image placeholders {placeholder!r} (expected 1)"
        )
    return text.replace(placeholder, replacement.format(marker=marker))


# ---------------------------------------------------------------------------------------------
# The loaded model


@dataclass
class PromptStats:
    prompt_tokens: int = 0  # true token count: text + image
    image_tokens: int = 0
    image_encode_s: float = 0.0
    prompt_s: float = 0.0
    prefix_reused: bool = False


@dataclass
class Generation:
    text: str
    generated_tokens: int
    generate_s: float
    finish: str  # "stop", "length", "cancelled"
    grammar_slow_steps: int = 0  # steps where the grammar had to scan the whole vocabulary
    forced_tokens: int = 0  # tokens taken from a grammar draft (batched, not decoded one by one)
    tokens: list[int] = field(default_factory=list)


# The longest grammar draft appended in one step (a JSON key run is ~10 tokens).
MAX_DRAFT_TOKENS = 48


@dataclass
class _Sequence:
    """One photo's place in the KV cache. Sequence 0 also holds the instruction prefix, which
    other sequences share (copied cells, not recomputed)."""

    seq_id: int
    prompt_end: int = 0  # position of the last prompt token
    last_prompt_token: int = -1  # decoded with the first generation step, so its logits are fresh
    prompt_cells: int = 0  # KV cells of the prompt without that last token
    # Recurrent memory: the prompt's saved state, restored before another guess (None: not kept).
    prompt_state: object = None
    generated: bool = False  # a guess has run since the prompt was evaluated


@dataclass
class _Stream:
    """A sequence being generated: its sampler, tokens waiting to be decoded, text so far."""

    seq: _Sequence
    sampler: object
    index: int  # which of the generate_many sequences (for on_piece)
    pending: list[int]
    pos: int
    cells: int
    replay: list[int] | None
    decoder: object
    pieces: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    forced: int = 0
    finish: str | None = None
    first: int = 0  # index of its first token in the current batch


class MtmdModel:
    """A text model and its projector loaded once. Photos are evaluated in sequences of one
    KV cache: one at a time (`n_seq=1`), or several decoded together (`n_seq>1`, throughput)."""

    def __init__(self, gguf: str, mmproj: str, *, family: str, n_ctx: int, n_threads,
                 n_batch: int, n_gpu_layers: int, seed: int, image_min_tokens: int,
                 image_max_tokens: int, swa_full: bool, n_seq: int = 1, recurrent: bool = False):
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd_cpp

        route_native_logs()
        self._llama_cpp, self._mtmd = llama_cpp, mtmd_cpp
        self.family = family
        # Part of the model is recurrent (families.FamilySpec.recurrent): sequences are never
        # trimmed back, saved states are restored instead, and nothing is drafted.
        self.recurrent = bool(recurrent)
        self.mtmd_ctx = None
        self.llama = None
        self.n_seq = max(1, int(n_seq))
        self.seq_ctx = int(n_ctx)  # KV cells each sequence may use
        LOG_ROUTER.recent_errors.clear()
        try:
            self.llama = llama_cpp.Llama(
                model_path=gguf, n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                n_batch=n_batch, n_ubatch=n_batch, n_gpu_layers=n_gpu_layers, seed=seed,
                swa_full=swa_full, verbose=False,
            )
            if self.n_seq > 1:
                self._multi_sequence_context()
        except Exception as exc:
            raise NativeError(LOG_ROUTER.last_error() or str(exc)) from None
        self.vocab = llama_cpp.llama_model_get_vocab(self.llama.model)
        self.n_vocab = self.llama.n_vocab()

        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = n_gpu_layers != 0
        params.print_timings = False
        params.n_threads = self.llama.n_threads
        # No warm-up: it would size the vision compute buffer for the projector's largest image
        # (1288x1288 for Qwen, whatever the token limit); the first photo sizes it instead.
        params.warmup = False
        params.image_min_tokens = int(image_min_tokens)
        params.image_max_tokens = int(image_max_tokens)
        # Flash attention where the backend has it: the vision tower's attention matrix is the
        # largest buffer otherwise.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        LOG_ROUTER.recent_errors.clear()
        ctx = mtmd_cpp.mtmd_init_from_file(mmproj.encode(), self.llama.model, params)
        if not ctx:
            reason = LOG_ROUTER.last_error() or "libmtmd could not load it"
            self.close()
            raise NativeError(reason)
        self.mtmd_ctx = ctx
        if not mtmd_cpp.mtmd_support_vision(ctx):
            self.close()
            raise NativeError("the projector has no vision encoder")
        self.marker = mtmd_cpp.mtmd_default_marker().decode("utf-8")
        self.bos_text, self.eos_text = self.bos_eos()
        self._prefix: list[int] | None = None  # instruction tokens whose KV state seq 0 keeps
        self._prefix_state = None  # recurrent models: the saved state of that prefix
        self._seqs: dict[int, _Sequence] = {}
        self._probe = None  # single-character tokens for grammar drafts (built on first use)

    def _multi_sequence_context(self):
        """Replace the context with one holding n_seq sequences in one unified KV cache, so the
        sequences share the instruction prefix's cells and decode in one batch."""
        from llama_cpp import _internals

        llama = self.llama
        params = llama.context_params
        params.n_seq_max = self.n_seq
        params.kv_unified = True
        params.n_ctx = self.seq_ctx * self.n_seq
        new_ctx = _internals.LlamaContext(model=llama._model, params=params, verbose=False)
        old, llama._ctx = llama._ctx, new_ctx
        old.close()
        llama._stack.callback(new_ctx.close)

    # -- metadata ----------------------------------------------------------------------------

    def metadata(self) -> dict:
        return dict(self.llama.metadata)

    def token_text(self, token: int) -> str:
        if token is None or token < 0:
            return ""
        return self.llama.detokenize([token], special=True).decode("utf-8", "replace")

    def bos_eos(self) -> tuple[str, str]:
        return self.token_text(self.llama.token_bos()), self.token_text(self.llama.token_eos())

    def n_ctx(self) -> int:
        return self.llama.n_ctx()

    def check_grammar(self, grammar: str):
        """Raise NativeError if llama.cpp cannot parse the grammar."""
        llama_cpp = self._llama_cpp
        LOG_ROUTER.recent_errors.clear()
        sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        if not sampler:
            raise NativeError(LOG_ROUTER.last_error() or "llama.cpp rejected the grammar")
        llama_cpp.llama_sampler_free(sampler)

    def tokenize(self, text: str) -> list[int]:
        """Plain text to tokens, no BOS, special markers not parsed (grammar drafts, replay)."""
        return self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    # -- the KV cache ------------------------------------------------------------------------

    def _memory(self):
        return self._llama_cpp.llama_get_memory(self.llama.ctx)

    def _seq_rm(self, seq_id: int, p0: int, p1: int = -1):
        self._llama_cpp.llama_memory_seq_rm(self._memory(), seq_id, p0, p1)

    def _decode(self, entries: list[tuple[int, int, int, bool]]):
        """Decode (token, position, sequence, wants logits) entries in one llama_decode call
        (the caller keeps them within n_batch)."""
        llama = self.llama
        batch = llama._batch.batch
        for i, (token, pos, seq_id, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.seq_id[i][0] = seq_id
            batch.n_seq_id[i] = 1
            batch.logits[i] = logits
        batch.n_tokens = len(entries)
        code = self._llama_cpp.llama_decode(llama.ctx, batch)
        if code != 0:
            raise NativeError(LOG_ROUTER.last_error() or f"llama_decode failed (code {code})")

    def _decode_text(self, tokens: list[int], seq_id: int, pos: int) -> int:
        """Prefill text tokens of one sequence from `pos`, in n_batch chunks; returns the next
        position."""
        step = self.llama.n_batch
        for i in range(0, len(tokens), step):
            chunk = tokens[i:i + step]
            self._decode([(t, pos + j, seq_id, False) for j, t in enumerate(chunk)])
            pos += len(chunk)
        return pos

    # -- prompt ------------------------------------------------------------------------------

    def evaluate_prompt(self, prompt_text: str, rgb_image, *, reuse_prefix: bool,
                        cancel=None, seq_id: int = 0,
                        keep_prompt_state: bool = False) -> PromptStats | None:
        """Tokenize the prompt with the image and fill sequence `seq_id` of the KV cache up to
        (not including) the last prompt token. Returns None if cancelled on the way. Sequence 0
        keeps the instruction prefix between photos; other sequences copy its cells.
        keep_prompt_state: a recurrent model saves the prompt's state so that `generate` can
        run more than once (another guess starts from it)."""
        mtmd, llama_cpp = self._mtmd, self._llama_cpp
        stats = PromptStats()
        width, height = rgb_image.size
        pixels = rgb_image.tobytes()
        bitmap = mtmd.mtmd_bitmap_init(width, height,
                                       (ctypes.c_uint8 * len(pixels)).from_buffer_copy(pixels))
        if not bitmap:
            raise NativeError("libmtmd could not take the image")
        chunks = None
        try:
            text_bytes = prompt_text.encode("utf-8")
            bos_text = self.bos_text
            input_text = mtmd.mtmd_input_text()
            input_text.text = text_bytes
            input_text.text_len = len(text_bytes)
            # A template that writes the BOS token itself must not get a second one.
            input_text.add_special = not (bos_text and prompt_text.startswith(bos_text))
            input_text.parse_special = True
            chunks = mtmd.mtmd_input_chunks_init()
            bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
            result = mtmd.mtmd_tokenize(self.mtmd_ctx, chunks, ctypes.byref(input_text), bitmaps, 1)
            if result != 0:
                raise NativeError(f"libmtmd could not tokenize the prompt (code {result})")
            parts = []
            for i in range(mtmd.mtmd_input_chunks_size(chunks)):
                chunk = mtmd.mtmd_input_chunks_get(chunks, i)
                kind = mtmd.mtmd_input_chunk_get_type(chunk)
                if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    n = ctypes.c_size_t()
                    ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    parts.append(("text", [ptr[j] for j in range(n.value)]))
                else:
                    parts.append(("image", chunk))
            if not parts or parts[-1][0] != "text" or parts[0][0] != "text":
                raise NativeError("the prompt must start and end with text around the image")

            n_total = sum(len(payload) if kind == "text" else mtmd.mtmd_input_chunk_get_n_tokens(payload)
                          for kind, payload in parts)
            if n_total + 1 > self.seq_ctx:
                raise NativeError(
                    f"the prompt needs {n_total} tokens but the context holds {self.seq_ctx}: "
                    f"raise n_ctx or lower image_max_tokens"
                )

            t0 = time.perf_counter()
            prefix = parts[0][1]
            stats.prefix_reused = self._place_prefix(prefix, seq_id, reuse_prefix)
            stats.prompt_s += time.perf_counter() - t0
            stats.prompt_tokens += len(prefix)
            pos = len(prefix)
            last_part = len(parts) - 1
            for index, (kind, payload) in enumerate(parts[1:], start=1):
                if cancel is not None and cancel.is_set():
                    return None
                if kind == "text":
                    tokens = payload[:-1] if index == last_part else payload
                    t0 = time.perf_counter()
                    pos = self._decode_text(tokens, seq_id, pos)
                    stats.prompt_s += time.perf_counter() - t0
                    stats.prompt_tokens += len(payload)
                    continue
                n_image = mtmd.mtmd_input_chunk_get_n_tokens(payload)
                t0 = time.perf_counter()
                if mtmd.mtmd_encode_chunk(self.mtmd_ctx, payload) != 0:
                    raise NativeError(LOG_ROUTER.last_error() or "libmtmd could not encode the image")
                t1 = time.perf_counter()
                embd = mtmd.mtmd_get_output_embd(self.mtmd_ctx)
                new_n_past = llama_cpp.llama_pos(0)
                result = mtmd.mtmd_helper_decode_image_chunk(
                    self.mtmd_ctx, self.llama.ctx, payload, embd, llama_cpp.llama_pos(pos),
                    llama_cpp.llama_seq_id(seq_id), self.llama.n_batch, ctypes.byref(new_n_past),
                    mtmd.mtmd_helper_post_decode_callback(), None,  # no callback (NULL)
                )
                if result != 0:
                    raise NativeError(LOG_ROUTER.last_error() or "the model could not take the image")
                t2 = time.perf_counter()
                # With M-RoPE an image takes fewer positions than tokens; cells are counted apart.
                pos = new_n_past.value
                stats.image_encode_s += t1 - t0
                stats.prompt_s += t2 - t1
                stats.image_tokens += n_image
                stats.prompt_tokens += n_image
            state = None
            if self.recurrent and keep_prompt_state:
                state = engine_state.save(llama_cpp, self.llama.ctx, seq_id, pos)
            self._seqs[seq_id] = _Sequence(seq_id, prompt_end=pos, last_prompt_token=parts[-1][1][-1],
                                           prompt_cells=stats.prompt_tokens - 1,
                                           prompt_state=state)
            return stats
        finally:
            if chunks is not None:
                mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)

    def _place_prefix(self, prefix: list[int], seq_id: int, reuse: bool) -> bool:
        """Bring sequence `seq_id` to the end of the instruction prefix; True if it came from
        the cache. The prefix lives in sequence 0; others copy its cells."""
        if self.recurrent:
            return self._place_saved_prefix(prefix, seq_id, reuse)
        llama_cpp, memory = self._llama_cpp, self._memory()
        cached = reuse and self._prefix is not None and self._prefix == list(prefix)
        if cached:
            # A sliding-window cache may have dropped early positions; then the prefix is gone.
            cached = (llama_cpp.llama_memory_seq_pos_min(memory, 0) == 0
                      and llama_cpp.llama_memory_seq_pos_max(memory, 0) >= len(prefix) - 1)
        if seq_id == 0 or not cached:
            if not cached:
                if seq_id != 0 and 0 in self._seqs:
                    raise NativeError("the instruction prefix is not cached for a parallel sequence")
                llama_cpp.llama_memory_clear(memory, True)
                self._seqs.clear()
                self._decode_text(list(prefix), 0, 0)
                self._prefix = list(prefix) if reuse else None
            else:
                self._seq_rm(0, len(prefix), -1)
        if seq_id != 0:
            self._seq_rm(seq_id, -1, -1)
            llama_cpp.llama_memory_seq_cp(memory, 0, seq_id, 0, len(prefix))
        return cached

    def _place_saved_prefix(self, prefix: list[int], seq_id: int, reuse: bool) -> bool:
        """_place_prefix for recurrent memory: the prefix is evaluated once into sequence 0 and
        its state saved; every later photo (and every parallel sequence) restores that copy."""
        llama_cpp = self._llama_cpp
        ctx = self.llama.ctx
        cached = reuse and self._prefix_state is not None and self._prefix == list(prefix)
        if not cached:
            if seq_id != 0 and 0 in self._seqs:
                raise NativeError("the instruction prefix is not cached for a parallel sequence")
            llama_cpp.llama_memory_clear(self._memory(), True)
            self._seqs.clear()
            self._decode_text(list(prefix), 0, 0)
            keep = reuse or seq_id != 0
            self._prefix = list(prefix) if keep else None
            self._prefix_state = (engine_state.save(llama_cpp, ctx, 0, len(prefix))
                                  if keep else None)
            if seq_id == 0:
                return False
        engine_state.restore(llama_cpp, ctx, self._prefix_state, seq_id)
        return cached

    def release(self, seq_id: int):
        """Forget a finished parallel sequence (sequence 0 keeps the prefix)."""
        if seq_id != 0:
            self._seq_rm(seq_id, -1, -1)
        self._seqs.pop(seq_id, None)

    # -- generation --------------------------------------------------------------------------

    def generate(self, *, max_tokens: int, temperature: float, seed: int,
                 grammar: str | None, on_piece=None, cancel=None, seq_id: int = 0,
                 jump_forward: bool = True, replay: list[int] | None = None) -> Generation:
        """Sample up to max_tokens after the prompt of sequence `seq_id`, streaming decoded
        text pieces. Called again, it starts over from the prompt (another guess)."""
        piece_cb = (lambda _i, piece: on_piece(piece)) if on_piece is not None else None
        return self.generate_many([seq_id], max_tokens=max_tokens, temperature=temperature,
                                  seeds=[seed], grammar=grammar, on_piece=piece_cb,
                                  cancel=cancel, jump_forward=jump_forward,
                                  replays=[replay] if replay is not None else None)[0]

    def generate_many(self, seq_ids: list[int], *, max_tokens: int, temperature: float,
                      seeds: list[int], grammar: str | None, on_piece=None, cancel=None,
                      jump_forward: bool = True, replays=None) -> list[Generation]:
        """Generate for several prepared sequences at once: each step decodes one token of
        every unfinished sequence in one batch (decode is memory-bound, so a step of several
        costs little more than one). With `jump_forward` and a grammar, a run of text the
        grammar forces is drafted and decoded in the same batch, then checked: the model's own
        choice at each drafted position must equal the draft, else the rest is dropped. So the
        tokens are the ones plain one-by-one decoding picks (verified on tiny models in tests).
        on_piece(i, piece) streams sequence i's text. `replays` (benchmarks only): per sequence
        the tokens to take instead of the sampled ones, so random weights can time a real
        caption's decode."""
        from geolocsft.engine_sampling import Sampler

        streams: list[_Stream] = []
        try:
            for i, seq_id in enumerate(seq_ids):
                seq = self._seqs[seq_id]
                if not self.recurrent:
                    self._seq_rm(seq_id, seq.prompt_end, -1)  # a previous guess, if any
                elif seq.generated:  # a recurrent state cannot be cut back: restore the prompt's
                    if seq.prompt_state is None:
                        raise NativeError("another guess needs the prompt's saved state "
                                          "(evaluate_prompt(keep_prompt_state=True))")
                    engine_state.restore(self._llama_cpp, self.llama.ctx, seq.prompt_state,
                                         seq_id)
                seq.generated = True
                try:
                    sampler = Sampler(self.vocab, self.n_vocab, temperature=temperature,
                                      seed=seeds[i], grammar=grammar, top_k=SAMPLING_TOP_K,
                                      top_p=SAMPLING_TOP_P, min_p=SAMPLING_MIN_P)
                except ValueError as exc:
                    raise NativeError(LOG_ROUTER.last_error() or str(exc)) from None
                streams.append(_Stream(
                    seq=seq, sampler=sampler, index=i, pending=[seq.last_prompt_token],
                    pos=seq.prompt_end, cells=seq.prompt_cells,
                    replay=replays[i] if replays else None,
                    decoder=codecs.getincrementaldecoder("utf-8")(errors="replace")))
            t0 = time.perf_counter()
            # Drafts are checked by dropping what the model rejects: not possible in a recurrent
            # state, so those models decode one token at a time.
            drafting = jump_forward and grammar is not None and not self.recurrent
            self._run(streams, max_tokens, drafting, on_piece, cancel)
            elapsed = time.perf_counter() - t0
            out = []
            for st in streams:
                tail = st.decoder.decode(b"", final=True)
                if tail:
                    st.pieces.append(tail)
                    if on_piece is not None:
                        on_piece(st.index, tail)
                out.append(Generation("".join(st.pieces), len(st.tokens), elapsed,
                                      st.finish or "length", st.sampler.slow_steps, st.forced,
                                      st.tokens))
            return out
        finally:
            for st in streams:
                st.sampler.free()

    def _run(self, streams: list[_Stream], max_tokens: int, jump_forward: bool, on_piece, cancel):
        eog = self._llama_cpp.llama_vocab_is_eog
        while True:
            live = [st for st in streams if st.finish is None]
            if not live:
                return
            if cancel is not None and cancel.is_set():
                for st in live:
                    st.finish = "cancelled"
                return
            entries = []
            for st in live:
                st.first = len(entries)
                entries += [(t, st.pos + j, st.seq.seq_id, True) for j, t in enumerate(st.pending)]
            self._decode(entries)
            for st in live:
                n_pending = len(st.pending)
                st.cells += n_pending
                for j in range(n_pending):
                    want = (st.replay[len(st.tokens)] if st.replay is not None
                            and len(st.tokens) < len(st.replay) else None)
                    token = st.sampler.sample(self.llama.ctx, st.first + j, forced=want)
                    drafted = j + 1 < n_pending
                    if drafted and token == st.pending[j + 1]:
                        st.forced += 1
                        self._emit(st, token, on_piece)
                        if len(st.tokens) >= max_tokens:
                            st.finish = "length"
                            break
                        continue
                    if drafted:  # the model parts from the draft here: drop the rest
                        self._seq_rm(st.seq.seq_id, st.pos + j + 1, -1)
                        st.cells -= n_pending - (j + 1)
                    st.pos += j + 1
                    if eog(self.vocab, token):
                        st.finish = "stop"
                        break
                    self._emit(st, token, on_piece)
                    room = self.seq_ctx - st.cells - 1
                    if len(st.tokens) >= max_tokens or room <= 0:
                        st.finish = "length"
                        break
                    draft = []
                    if jump_forward:
                        limit = min(MAX_DRAFT_TOKENS, max_tokens - len(st.tokens) - 1, room - 1,
                                    self.llama.n_batch // max(1, len(streams)) - 1)
                        if limit > 0:
                            draft = self._draft(st.sampler, token)[:limit]
                    st.pending = [token] + draft
                    break

    def _emit(self, st: _Stream, token: int, on_piece):
        st.tokens.append(token)
        piece = st.decoder.decode(self.llama.detokenize([token]))
        if piece:
            st.pieces.append(piece)
            if on_piece is not None:
                on_piece(st.index, piece)

    def _draft(self, sampler, token: int) -> list[int]:
        """Tokens for the text the grammar forces after `token` (already accepted by it)."""
        if self._probe is None:
            self._probe = self._single_char_tokens()
        text = sampler.forced_text(*self._probe)
        return self.tokenize(text) if text else []

    def _single_char_tokens(self):
        """(token ids, their characters, an end-of-generation token) for printable ASCII and
        newline: the alphabet in which the grammar's forced text is probed."""
        ids, chars = [], []
        for code in [10] + list(range(32, 127)):
            char = chr(code)
            tokens = self.tokenize(char)
            if len(tokens) == 1 and self.llama.detokenize(tokens) == char.encode():
                ids.append(tokens[0])
                chars.append(char)
        return ids, chars, self.llama.token_eos()

    # -- lifetime ----------------------------------------------------------------------------

    def close(self):
        if self.mtmd_ctx is not None:
            self._mtmd.mtmd_free(self.mtmd_ctx)
            self.mtmd_ctx = None
        if self.llama is not None:
            self.llama.close()
            self.llama = None
        self._prefix = None
