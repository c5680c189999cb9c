"""The SFT loss, computed only where it is defined.

The model's own loss projects every position onto the vocabulary (152k rows for Qwen) and then
throws most of it away: only the assistant's answer carries labels. Asking the model for logits
at just the positions whose next token is labelled (transformers' boolean `logits_to_keep`)
gives the same mean cross-entropy (tested against the model's loss) at a fraction of the cost:
the vocabulary projection and its gradient were most of a CPU step.
"""

from __future__ import annotations

from typing import Any

from trainer.collate import IGNORE_INDEX


def next_token_loss(model: Any, batch: dict) -> Any:
    """Mean next-token cross-entropy over the labelled tokens of `batch` (a collated dict with
    `labels`); the same value as `model(**batch).loss`."""
    import torch
    import torch.nn.functional as F

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"]
    targets = labels[:, 1:]
    # Position p predicts token p + 1: keep p where that token is labelled (never the last).
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = targets != IGNORE_INDEX
    if not bool(keep.any()):
        raise ValueError("batch has no labelled token: nothing to learn from")
    logits = model(**inputs, logits_to_keep=keep).logits
    logits = logits.reshape(-1, logits.shape[-1])  # (labelled tokens, vocabulary)
    return F.cross_entropy(logits.float(), targets[targets != IGNORE_INDEX])
