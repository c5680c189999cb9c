"""The engine's low level: one loaded model (libllama) plus its projector (libmtmd), driven
directly through llama-cpp-python's bindings instead of its chat handlers, because the engine
needs what the stock handlers do not give:

- the instruction prompt's KV state is kept between photos (the handlers clear the cache on
  every call), so a photo costs only its image and the short text after it;
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
from dataclasses import dataclass

NATIVE_LOG = logging.getLogger("geolocsft.engine.native")
# Silent unless the application configures logging (no "last resort" printing to stderr).
NATIVE_LOG.addHandler(logging.NullHandler())

# The text the Hugging Face chat templates put where the image goes, and what the processors
# turn it into at training time; mtmd's marker takes the place of the expanded image, and mtmd
# adds the begin/end-of-image tokens itself (<|vision_start|>…<|vision_end|>,
# <start_of_image>…<end_of_image>), so the token sequence matches what the fine-tune saw.
IMAGE_PLACEHOLDERS = {
    "qwen2.5-vl": ("<|vision_start|><|image_pad|><|vision_end|>", "{marker}"),
    "gemma3": ("<start_of_image>", "\n\n{marker}\n\n"),
}

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
    text = render_guarded(
        env, chat_template, messages=messages, add_generation_prompt=True, bos_token=bos_token,
        eos_token=eos_token,
    )
    placeholder, replacement = IMAGE_PLACEHOLDERS[family]
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


class MtmdModel:
    """A text model and its projector loaded once, evaluating one photo at a time."""

    def __init__(self, gguf: str, mmproj: str, *, family: str, n_ctx: int, n_threads,
                 n_batch: int, n_gpu_layers: int, seed: int, image_min_tokens: int,
                 image_max_tokens: int, swa_full: bool):
        import llama_cpp
        import llama_cpp.mtmd_cpp as mtmd_cpp

        route_native_logs()
        self._llama_cpp, self._mtmd = llama_cpp, mtmd_cpp
        self.family = family
        self.mtmd_ctx = None
        self.llama = None
        LOG_ROUTER.recent_errors.clear()
        try:
            self.llama = llama_cpp.Llama(
                model_path=gguf, n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                n_batch=n_batch, n_ubatch=n_batch, n_gpu_layers=n_gpu_layers, seed=seed,
                swa_full=swa_full, verbose=False,
            )
        except Exception as exc:
            raise NativeError(LOG_ROUTER.last_error() or str(exc)) from None
        self.vocab = llama_cpp.llama_model_get_vocab(self.llama.model)

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
        self._prefix: list[int] | None = None  # instruction tokens whose KV state is kept
        self._prompt_end = 0  # position after the last prompt token of the current photo
        # KV cells the prompt fills: its true token count. With M-RoPE an image takes fewer
        # positions than cells, so positions cannot tell when the context is full.
        self._prompt_cells = 0

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

    # -- prompt ------------------------------------------------------------------------------

    def evaluate_prompt(self, prompt_text: str, rgb_image, *, reuse_prefix: bool,
                        cancel=None) -> PromptStats | None:
        """Tokenize the prompt with the image and bring the KV cache to the end of it.
        Returns None if cancelled on the way."""
        llama, llama_cpp, mtmd = self.llama, self._llama_cpp, self._mtmd
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
            if n_total + 1 > llama.n_ctx():
                raise NativeError(
                    f"the prompt needs {n_total} tokens but the context holds {llama.n_ctx()}: "
                    f"raise n_ctx or lower image_max_tokens"
                )

            t0 = time.perf_counter()
            prefix = parts[0][1]
            if reuse_prefix and self._prefix_is_cached(prefix):
                llama._ctx.kv_cache_seq_rm(0, len(prefix), -1)
                llama.n_tokens = len(prefix)
                stats.prefix_reused = True
            else:
                self._prefix = None
                llama.reset()
                llama._ctx.kv_cache_clear()
                llama.eval(prefix)
                self._prefix = list(prefix) if reuse_prefix else None
            stats.prompt_s += time.perf_counter() - t0
            stats.prompt_tokens += len(prefix)

            for kind, payload in parts[1:]:
                if cancel is not None and cancel.is_set():
                    return None
                if kind == "text":
                    t0 = time.perf_counter()
                    llama.eval(payload)
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
                    self.mtmd_ctx, llama.ctx, payload, embd, llama_cpp.llama_pos(llama.n_tokens),
                    llama_cpp.llama_seq_id(0), llama.n_batch, ctypes.byref(new_n_past),
                    mtmd.mtmd_helper_post_decode_callback(), None,  # no callback (NULL)
                )
                if result != 0:
                    raise NativeError(LOG_ROUTER.last_error() or "the model could not take the image")
                t2 = time.perf_counter()
                # llama-cpp-python counts positions in n_tokens; with M-RoPE an image takes fewer
                # positions than tokens, which is why the true count is kept separately.
                llama.n_tokens = new_n_past.value
                stats.image_encode_s += t1 - t0
                stats.prompt_s += t2 - t1
                stats.image_tokens += n_image
                stats.prompt_tokens += n_image
            self._prompt_end = llama.n_tokens
            self._prompt_cells = stats.prompt_tokens
            return stats
        finally:
            if chunks is not None:
                mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)

    def _prefix_is_cached(self, prefix: list[int]) -> bool:
        if self._prefix is None or self._prefix != list(prefix):
            return False
        llama = self.llama
        if llama.n_tokens < len(prefix) or list(llama.input_ids[: len(prefix)]) != self._prefix:
            return False
        # A sliding-window cache may have dropped early positions; then the prefix is gone.
        memory = self._llama_cpp.llama_get_memory(llama.ctx)
        return self._llama_cpp.llama_memory_seq_pos_min(memory, 0) == 0

    def rewind_to_prompt_end(self) -> float:
        """Drop the generated tokens and recompute the last prompt token's logits, so another
        guess can be sampled from the same prompt without re-encoding the image."""
        llama = self.llama
        t0 = time.perf_counter()
        last = int(llama.input_ids[self._prompt_end - 1])
        llama._ctx.kv_cache_seq_rm(0, self._prompt_end - 1, -1)
        llama.n_tokens = self._prompt_end - 1
        llama.eval([last])
        return time.perf_counter() - t0

    # -- generation --------------------------------------------------------------------------

    def generate(self, *, max_tokens: int, temperature: float, seed: int,
                 grammar: str | None, on_piece=None, cancel=None) -> Generation:
        """Sample up to max_tokens after the prompt, streaming decoded text pieces."""
        from geolocsft.engine_sampling import Sampler

        llama, llama_cpp = self.llama, self._llama_cpp
        try:
            sampler = Sampler(self.vocab, llama.n_vocab(), temperature=temperature, seed=seed,
                              grammar=grammar, top_k=SAMPLING_TOP_K, top_p=SAMPLING_TOP_P,
                              min_p=SAMPLING_MIN_P)
        except ValueError as exc:
            raise NativeError(LOG_ROUTER.last_error() or str(exc)) from None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pieces: list[str] = []
        n_generated, finish = 0, "length"
        room = llama.n_ctx() - self._prompt_cells  # KV cells left for the answer
        t0 = time.perf_counter()
        try:
            while n_generated < max_tokens:
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
                token = sampler.sample(llama.ctx)
                if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                    finish = "stop"
                    break
                n_generated += 1
                piece = decoder.decode(llama.detokenize([token]))
                if piece:
                    pieces.append(piece)
                    if on_piece is not None:
                        on_piece(piece)
                if n_generated >= max_tokens or n_generated >= room:
                    break
                try:
                    llama.eval([token])
                except RuntimeError as exc:  # llama_decode failed (e.g. out of memory)
                    raise NativeError(LOG_ROUTER.last_error() or str(exc)) from None
            tail = decoder.decode(b"", final=True)
            if tail:
                pieces.append(tail)
                if on_piece is not None:
                    on_piece(tail)
        finally:
            sampler.free()
        return Generation("".join(pieces), n_generated, time.perf_counter() - t0, finish,
                          sampler.slow_steps)

    # -- lifetime ----------------------------------------------------------------------------

    def close(self):
        if self.mtmd_ctx is not None:
            self._mtmd.mtmd_free(self.mtmd_ctx)
            self.mtmd_ctx = None
        if self.llama is not None:
            self.llama.close()
            self.llama = None
        self._prefix = None
