"""Check a converted model: read its metadata back, load it with llama-cpp-python and answer one
image prompt, and compare the GGUF's text logits with the Hugging Face model's on a fixed prompt
(top-token agreement over positions and the largest absolute logit difference)."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

from convert.errors import ConvertError

# A fixed text prompt for the logit comparison: long enough for a meaningful agreement rate.
LOGIT_PROMPT = (
    "Where was this photo taken? Look at the road markings, the script on the shop signs, the "
    "vegetation, the architecture and the direction of the traffic, then give the country, the "
    "region and the coordinates of the most likely place, with your confidence."
)
IMAGE_QUESTION = "Where was this photo taken?"


@dataclass
class LogitReport:
    positions: int
    agreement: float  # share of positions where both models rank the same token first
    max_abs_diff: float  # largest |logit_hf - logit_gguf| over positions and vocabulary

    def summary(self) -> str:
        return (f"top-token agreement {self.agreement:.3f} over {self.positions} positions, "
                f"max |logit difference| {self.max_abs_diff:.4f}")


def read_metadata(path: str | Path) -> dict:
    """The GGUF's metadata (long arrays such as the vocabulary shown as ArrayInfo(type, length))
    plus "tensors" (the tensor count). See geolocsft.gguf_header for why not gguf.GGUFReader."""
    from geolocsft.gguf_header import GGUFFormatError, read_gguf

    try:
        header = read_gguf(path)
    except GGUFFormatError as exc:
        raise ConvertError(str(exc)) from None
    return {**header.metadata, "tensors": header.n_tensors}


def _png_data_uri(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_image():
    """A small deterministic picture (sky, ground, a red square) for the smoke answer."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (96, 72), (120, 170, 230))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 44, 95, 71], fill=(60, 130, 60))
    draw.rectangle([36, 24, 60, 48], fill=(200, 40, 40))
    return image


def _chat_handler(family: str, mmproj: Path):
    """llama-cpp-python's own handler for the family (from its converter family module)."""
    from convert.families import UnsupportedModelError, family_module

    try:
        return family_module(family).stock_chat_handler(mmproj)
    except UnsupportedModelError as exc:
        raise ConvertError(f"no image chat handler: {exc}") from None


def answer_image(model: Path, mmproj: Path, family: str, image=None, *, max_tokens: int = 8,
                 question: str = IMAGE_QUESTION) -> dict:
    """Load the pair with llama-cpp-python and answer one image prompt greedily. Returns the
    completion's text and token usage; raises ConvertError if the model cannot be loaded or
    the image is not consumed."""
    import llama_cpp

    from llama_cpp._utils import suppress_stdout_stderr

    image = image if image is not None else test_image()
    # mtmd prints its progress to stdout even when not verbose.
    with suppress_stdout_stderr(disable=False):
        try:
            handler = _chat_handler(family, Path(mmproj))
            llm = llama_cpp.Llama(str(model), chat_handler=handler, n_ctx=1024, n_threads=1,
                                  verbose=False, seed=0)
        except ValueError as exc:
            raise ConvertError(f"{model}: llama-cpp-python cannot load it with {mmproj} ({exc})") from None
        try:
            result = llm.create_chat_completion(
                messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": _png_data_uri(image)}},
                    {"type": "text", "text": question},
                ]}],
                max_tokens=max_tokens, temperature=0.0,
            )
        finally:
            llm.close()
    choice = result["choices"][0]
    return {"text": choice["message"]["content"] or "", "finish_reason": choice["finish_reason"],
            "prompt_tokens": result["usage"]["prompt_tokens"],
            "completion_tokens": result["usage"]["completion_tokens"]}


def hf_logits(ckpt_dir: Path, token_ids: list[int], dtype: str = "float32"):
    """Logits [positions, vocab] of the Hugging Face model for a text-only prompt, computed in
    `dtype` (fp32 by default; bfloat16 halves the memory, e.g. for a full-size model)."""
    import torch
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(ckpt_dir, dtype=getattr(torch, dtype)).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([token_ids]))
    return out.logits[0].float().numpy()


def gguf_logits(model: Path, token_ids: list[int]):
    """Logits [positions, vocab] of the GGUF for the same token ids, with llama-cpp-python."""
    import numpy as np
    import llama_cpp

    llm = llama_cpp.Llama(str(model), n_ctx=max(256, len(token_ids) + 8), logits_all=True,
                          n_threads=1, n_batch=512, verbose=False, seed=0)
    try:
        llm.eval(token_ids)
        return np.array(llm.scores[: len(token_ids)], dtype=np.float32)
    finally:
        llm.close()


def compare_logits(ckpt_dir: str | Path, model: str | Path, prompt: str = LOGIT_PROMPT, *,
                   hf_dtype: str = "float32") -> LogitReport:
    """Top-token agreement and max logit difference between the Hugging Face checkpoint and a
    GGUF of it (use the f16 GGUF: quantized files differ by design)."""
    import numpy as np
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ckpt_dir)
    token_ids = tokenizer(prompt)["input_ids"]
    a = hf_logits(Path(ckpt_dir), token_ids, hf_dtype)
    import gc

    gc.collect()  # the HF weights go before the GGUF is mapped: a full-size pair fits in 24 GB
    b = gguf_logits(Path(model), token_ids)
    width = min(a.shape[1], b.shape[1], len(tokenizer))  # padding rows past the tokenizer differ
    a, b = a[:, :width], b[:, :width]
    agreement = float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))
    return LogitReport(len(token_ids), agreement, float(np.abs(a - b).max()))
