"""Saved sequence states, for models whose memory cannot be cut back to a position.

A recurrent (linear-attention, SSM) layer keeps one running state per sequence instead of a
cache of per-position cells, so llama.cpp cannot remove "everything after position p" from it
(`llama_memory_seq_rm` on a partial range fails). Where the engine would trim a sequence back
(to the instruction prefix for the next photo, to the end of the prompt for another guess) it
instead restores a copy of the sequence's whole state taken at that point: attention cells and
recurrent state together, as llama.cpp serialises them for one sequence. Restoring into another
sequence id is how parallel photos get the instruction prefix (the recurrent part of
`llama_memory_seq_cp` copies a sequence's latest state, not the state at a position).

llama_cpp is passed in by the caller (imported lazily there), so the core imports without it.
"""

from __future__ import annotations

import ctypes


class SeqState:
    """The serialised state of one sequence at one moment."""

    def __init__(self, data: ctypes.Array, n_tokens: int):
        self.data = data
        self.n_tokens = n_tokens  # positions it covers, for the caller's bookkeeping

    @property
    def nbytes(self) -> int:
        return len(self.data)


def save(llama_cpp, ctx, seq_id: int, n_tokens: int) -> SeqState:
    size = llama_cpp.llama_state_seq_get_size(ctx, seq_id)
    data = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_seq_get_data(ctx, data, size, seq_id)
    if written != size:
        raise RuntimeError(f"llama.cpp saved {written} of {size} bytes of sequence {seq_id}")
    return SeqState(data, n_tokens)


def restore(llama_cpp, ctx, state: SeqState, seq_id: int) -> None:
    """Replace sequence `seq_id` with `state` (from any sequence)."""
    llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), seq_id, -1, -1)
    read = llama_cpp.llama_state_seq_set_data(ctx, state.data, state.nbytes, seq_id)
    if read != state.nbytes:
        raise RuntimeError(f"llama.cpp could not restore sequence {seq_id} "
                           f"({read} of {state.nbytes} bytes read)")
