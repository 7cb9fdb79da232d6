"""`python -m captionformer_hf.demo`: run clip-level dense captioning with a tiny randomly initialised model.

A smoke run of the whole clip-level path (segmenter, caption head, LM generation) that needs no download."""

from __future__ import annotations

import json
import sys

import torch

from .modeling import CaptionFormerForDenseVideoObjectCaptioning
from .testing_utils import tiny_config


def main() -> int:
    torch.manual_seed(0)
    config = tiny_config(clip_length=3)
    model = CaptionFormerForDenseVideoObjectCaptioning(config).eval()
    clip = torch.randn(1, 3, 3, 64, 64)
    result = model.generate(clip, threshold=0.0, max_new_tokens=6)
    rows = [
        {"query": int(q), "score": round(float(s), 4), "caption_token_ids": seq.tolist()}
        for q, s, seq in zip(result["query_indices"], result["scores"], result["sequences"])
    ]
    json.dump({"clip_shape": list(clip.shape), "objects": rows}, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
