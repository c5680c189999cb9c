"""The converter on the real layouts: HF-vs-GGUF logit parity of a full-size skeleton.

    python bench/skeleton_parity.py [qwen2.5-vl-3b-instruct|gemma-3-4b-it]

Converts the skeleton's checkpoint to an f16 GGUF (this project's converter), then compares the
text logits of the Hugging Face model (bf16, so the pair fits in 24 GB: the HF weights are freed
before the GGUF is mapped) with llama.cpp's over the converter's fixed prompt. Prints top-token
agreement and the largest logit difference; random weights make near-ties common, so agreement
below 1.0 on them is expected from bf16 rounding alone, while a layout error gives noise
(agreement near 1/vocabulary)."""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from geolocsft import families  # noqa: E402


def main(argv=None) -> int:
    from convert.gguf import convert_checkpoint
    from convert.skeleton import skeleton_checkpoint
    from convert.verify import compare_logits

    name = (argv or sys.argv[1:] or [next(iter(families.get(families.DEFAULT).skeletons))])[0]
    ckpt = skeleton_checkpoint(name)
    with tempfile.TemporaryDirectory(prefix="geolocsft-parity-") as tmp:
        started = time.perf_counter()
        pair = convert_checkpoint(ckpt, Path(tmp) / "f16", mmproj_type="f16")
        converted = time.perf_counter() - started
        started = time.perf_counter()
        report = compare_logits(ckpt, pair.model, hf_dtype="bfloat16")
        compared = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"{name}: {report.summary()}")
    print(f"convert {converted:.0f} s, compare {compared:.0f} s, peak RSS {peak:.1f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
