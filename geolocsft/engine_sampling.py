"""Token sampling for the engine, with grammar checked lazily.

A grammar sampler placed in llama.cpp's sampler chain checks every token of the vocabulary at
every step: with Qwen's 151,936 tokens that measured ~120 ms per token here, about 25x the cost
of the tiny model's whole decode step. Instead (as llama.cpp's own common sampler does) the
token is sampled without the grammar and only checked against it; when the grammar rejects it,
the grammar is applied to the best candidates by logit, and only if none of them is allowed
to the whole vocabulary. Greedy results are the same as applying the grammar first
(the highest-logit allowed token); a fine-tuned model that already writes the format almost
never takes the slow path.

llama_cpp and numpy (the app extra) are imported inside the functions that use them.
"""

from __future__ import annotations

import ctypes
import math

# Best candidates checked against the grammar before falling back to the whole vocabulary.
RESCUE_CANDIDATES = 2048


def _token_data_dtype():
    import llama_cpp
    import numpy as np

    dtype = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
    assert dtype.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)
    return dtype


class Sampler:
    """Greedy (temperature 0) or top-k/top-p/min-p/temperature sampling, optionally under a
    GBNF grammar. One instance per generated answer: the grammar state follows the tokens."""

    def __init__(self, vocab, n_vocab: int, *, temperature: float, seed: int,
                 grammar: str | None, top_k: int, top_p: float, min_p: float):
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.vocab, self.n_vocab = vocab, n_vocab
        self.greedy = temperature <= 0
        params = llama_cpp.llama_sampler_chain_default_params()
        params.no_perf = True
        self.chain = llama_cpp.llama_sampler_chain_init(params)
        add = lambda s: llama_cpp.llama_sampler_chain_add(self.chain, s)  # noqa: E731
        if self.greedy:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            add(llama_cpp.llama_sampler_init_top_k(top_k))
            add(llama_cpp.llama_sampler_init_top_p(top_p, 1))
            add(llama_cpp.llama_sampler_init_min_p(min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(temperature))
            add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        self.grammar = None
        if grammar:
            self.grammar = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            if not self.grammar:
                self.free()
                raise ValueError("llama.cpp rejected the grammar")
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_array = llama_cpp.llama_token_data_array(
            data=ctypes.cast(self._one, llama_cpp.llama_token_data_p), size=1, selected=-1,
            sorted=False)
        self.slow_steps = 0  # grammar applied to the whole vocabulary (for measurements)

    def sample(self, ctx, index: int = -1, *, forced: int | None = None) -> int:
        """The next token from the logits of batch output `index`. `forced` (benchmark replay)
        is taken instead of the sampled token, after the sampling work is done."""
        llama_cpp = self._llama_cpp
        token = llama_cpp.llama_sampler_sample(self.chain, ctx, index)
        if forced is not None:
            if self.grammar is not None and not self._allowed(forced):
                raise RuntimeError(f"replayed token {forced} is not allowed by the grammar here")
            token = forced
        elif self.grammar is not None and not self._allowed(token):
            token = self._sample_under_grammar(ctx, index)
        if self.grammar is not None:
            llama_cpp.llama_sampler_accept(self.grammar, token)
        return token

    def forced_text(self, probe_ids, probe_chars, end_token: int, limit: int = 256) -> str:
        """The text the grammar admits as the only continuation from here, probed one
        character at a time over single-character tokens (`probe_ids`, `probe_chars`) on a
        copy of the grammar state; stops where more than one character, or the end, is
        allowed. Empty without a grammar."""
        if self.grammar is None or not probe_ids:
            return ""
        import numpy as np

        llama_cpp = self._llama_cpp
        ids = np.array(list(probe_ids) + [end_token], dtype=np.int32)
        cand = np.empty(len(ids), dtype=_token_data_dtype())
        array = llama_cpp.llama_token_data_array(
            data=cand.ctypes.data_as(llama_cpp.llama_token_data_p), size=len(ids),
            selected=-1, sorted=False)
        state = llama_cpp.llama_sampler_clone(self.grammar)
        out: list[str] = []
        try:
            while len(out) < limit:
                cand["id"], cand["logit"], cand["p"] = ids, 0.0, 0.0
                array.size, array.selected, array.sorted = len(ids), -1, False
                llama_cpp.llama_sampler_apply(state, ctypes.byref(array))
                allowed = np.flatnonzero(~np.isneginf(cand["logit"]))
                if len(allowed) != 1 or allowed[0] == len(ids) - 1:
                    break
                out.append(probe_chars[allowed[0]])
                llama_cpp.llama_sampler_accept(state, int(ids[allowed[0]]))
        finally:
            llama_cpp.llama_sampler_free(state)
        return "".join(out)

    def _allowed(self, token: int) -> bool:
        llama_cpp = self._llama_cpp
        one = self._one[0]
        one.id, one.logit, one.p = token, 0.0, 0.0
        self._one_array.size, self._one_array.selected, self._one_array.sorted = 1, -1, False
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(self._one_array))
        return not math.isinf(self._one[0].logit)

    def _logits(self, ctx, index: int):
        import numpy as np

        ptr = self._llama_cpp.llama_get_logits_ith(ctx, index)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def _sample_under_grammar(self, ctx, index: int) -> int:
        import numpy as np

        logits = self._logits(ctx, index)
        # The grammar applied to the best candidates only (one C call, cost ~ their number):
        # the answer is exact for greedy as soon as one of them is allowed, and for sampling it
        # differs only in tokens too unlikely for top-k/min-p to keep anyway.
        k = min(RESCUE_CANDIDATES, self.n_vocab)
        top = np.argpartition(-logits, k - 1)[:k] if k < self.n_vocab else np.arange(self.n_vocab)
        token = self._apply_and_pick(top, logits)
        if token is None and k < self.n_vocab:
            self.slow_steps += 1
            token = self._apply_and_pick(np.arange(self.n_vocab), logits)
        if token is None:
            raise RuntimeError("the grammar allows no token here")
        return token

    def _apply_and_pick(self, ids, logits) -> int | None:
        import numpy as np

        llama_cpp = self._llama_cpp
        cand = np.empty(len(ids), dtype=_token_data_dtype())
        cand["id"] = ids
        cand["logit"] = logits[ids]
        cand["p"] = 0.0
        array = llama_cpp.llama_token_data_array(
            data=cand.ctypes.data_as(llama_cpp.llama_token_data_p), size=len(ids),
            selected=-1, sorted=False)
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(array))
        if np.isneginf(cand["logit"]).all():
            return None
        if self.greedy:
            return int(cand["id"][int(np.argmax(cand["logit"]))])
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(array))
        view = np.ctypeslib.as_array(array.data, shape=(array.size,))
        return int(view[array.selected]["id"])

    def free(self):
        llama_cpp = self._llama_cpp
        if self.chain:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None
        if self.grammar:
            llama_cpp.llama_sampler_free(self.grammar)
            self.grammar = None
