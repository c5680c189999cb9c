"""End-of-run evaluation on the held-out split, with the core's parser and metrics.

Greedy decoding with Hugging Face `generate` (the paper's single-pass inference), the answer read
by `geolocsft.protocol.parse_output` and scored by `geolocsft.geo.score`: the same numbers the
benchmark reports for a GGUF build, so a drop after conversion is visible.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from geolocsft import families, geo, protocol
from geolocsft.images import ImageError, prepare_image
from trainer.jsonl import write_bytes_atomic, write_json_atomic


def generate_text(model: Any, processor: Any, prompt_messages: list, image: Any,
                  max_new_tokens: int, template_kwargs: dict | None = None) -> str:
    """One greedy answer for one photo (batch of one: no left-padding subtleties).
    template_kwargs: the family's chat-template variables (as training rendered them)."""
    import torch

    text = processor.apply_chat_template(prompt_messages, tokenize=False,
                                         add_generation_prompt=True, **(template_kwargs or {}))
    inputs = processor(text=[text], images=[[image]], return_tensors="pt",
                       add_special_tokens=False)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    inputs = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device))
              for k, v in inputs.items() if hasattr(v, "to")}
    with torch.no_grad():
        # Training loads the model with use_cache=False (gradient checkpointing); generation
        # needs the KV cache or every token recomputes the whole sequence.
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                use_cache=True)
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    return processor.tokenizer.decode(new_tokens, skip_special_tokens=True)


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    write_bytes_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())


def evaluate(model: Any, processor: Any, records: list, budget: Any, out_dir: Path,
             max_new_tokens: int = 768, bootstrap: int = 1000) -> dict:
    """Generate, parse and score every held-out record; writes predictions.jsonl and
    scores.json into `out_dir` and returns the scores (Scores.to_dict())."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    template_kwargs = dict(families.get(budget.family).chat_template_kwargs)
    was_training = model.training
    model.eval()
    predictions, rows = [], []
    try:
        for record in records:
            row = {"id": record.id, "latitude": record.latitude, "longitude": record.longitude}
            try:
                image = prepare_image(record.image, budget)
            except ImageError as exc:  # checked at load time; a file changed since
                row.update(status="image_error", reason=str(exc), output="")
                predictions.append(row)
                rows.append((None, None, record.latitude, record.longitude))
                continue
            text = generate_text(model, processor, record.prompt_messages, image,
                                 max_new_tokens, template_kwargs)
            parsed = protocol.parse_output(text)
            row.update(status=parsed.status.value, reason=parsed.reason,
                       pred_latitude=parsed.latitude, pred_longitude=parsed.longitude,
                       output=text)
            if parsed.ok:
                row["distance_km"] = geo.distance_km(parsed.latitude, parsed.longitude,
                                                     record.latitude, record.longitude)
            predictions.append(row)
            rows.append((parsed.latitude if parsed.ok else None,
                         parsed.longitude if parsed.ok else None,
                         record.latitude, record.longitude))
    finally:
        model.train(was_training)
    scores = geo.score(rows, bootstrap=bootstrap).to_dict()
    write_jsonl_atomic(out_dir / "predictions.jsonl", predictions)
    write_json_atomic(out_dir / "scores.json", scores)
    return scores
