"""Conversion at the release's sizes (no download: random weights with the official names and shapes).

    python benchmarks/convert_release_size.py [--box-only]

Builds a VLN-style official state dict with the release's shapes (Swin-B, 100 queries, DEC_LAYERS 10, EVA ViT-g at
364 px, BERT-base Q-Former with 32 query tokens, OPT-2.7B's width with 2 of its 32 layers), converts it with the
default head counts (nothing passed but the preset), and prints the inferred config, the conversion time, the peak
memory and the time of one segmenter forward on a 480x640 frame plus one caption (CPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from captionformer_hf.convert_captionformer_original_to_hf import convert_original_checkpoint
import os
import sys

# the official-style state dict builder is a test helper (tests/official_checkpoint.py)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from official_checkpoint import RELEASE_OFFICIAL_SIZES, official_style_state_dict  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--box-only", action="store_true", help="a BenSMOT-style (BOX_ONLY) checkpoint")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    start = time.perf_counter()
    state = official_style_state_dict(sizes=RELEASE_OFFICIAL_SIZES, box_only=args.box_only)
    built = time.perf_counter() - start
    num_tensors, num_values = len(state), sum(v.numel() for v in state.values())

    start = time.perf_counter()
    model, report = convert_original_checkpoint(state, preset="bensmot" if args.box_only else "vln")
    converted = time.perf_counter() - start
    del state

    config = model.config
    seg, swin = config.segmenter_config, config.segmenter_config.backbone_config
    clip = torch.randn(1, 1, 3, 480, 640)
    with torch.no_grad():
        start = time.perf_counter()
        outputs = model.model(clip)
        forward = time.perf_counter() - start
        best = outputs.scores[0].argmax()
        start = time.perf_counter()
        queries = model.model.encode_captions(
            clip[:, 0], torch.zeros(1, dtype=torch.long), outputs.object_queries[0, best][None],
            outputs.masks_logits[0, best, 0][None], outputs.pred_boxes[0, best, 0][None],
        )
        ids = model.generate_captions(queries, num_beams=1, max_new_tokens=5)
        caption = time.perf_counter() - start
    print(json.dumps({
        "official_tensors": num_tensors,
        "official_parameters_M": round(num_values / 1e6, 1),
        "converted_parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "mapped": report.mapped,
        "dropped": len(report.dropped),
        "unused_target": len(report.unused_target),
        "config": {
            "swin": {"embed_dim": swin.embed_dim, "depths": swin.depths, "num_heads": swin.num_heads,
                     "window_size": swin.window_size, "out_features": swin.out_features},
            "decoder_layers": seg.decoder_layers, "num_queries": seg.num_queries, "heads": seg.num_attention_heads,
            "vision": [config.vision_config.hidden_size, config.vision_config.num_hidden_layers,
                       config.vision_config.num_attention_heads, config.vision_config.image_size],
            "qformer": [config.qformer_config.hidden_size, config.qformer_config.num_hidden_layers,
                        config.qformer_config.cross_attention_frequency, config.num_query_tokens],
            "text_heads": config.text_config.num_attention_heads,
            "box_only": config.box_only, "box_head_layers": config.box_head_layers,
            "objectness_head_layers": config.objectness_head_layers,
        },
        "build_state_dict_s": round(built, 1),
        "convert_s": round(converted, 1),
        "segmenter_forward_480x640_s": round(forward, 2),
        "caption_one_object_5_tokens_s": round(caption, 2),
        "caption_tokens": ids.shape[1],
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
