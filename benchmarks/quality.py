"""Quality of a CaptionFormer on the synthetic test split (a seed never used for training), and the paper's
ablations in miniature.

    python benchmarks/quality.py [--model PATH] [--videos 60] [--seed 1000]

Prints CHOTA, DetA, AssA, CapA (CIDEr, and METEOR where Java exists) of the model with its own settings, then:
- captions from the best single clip vs the arithmetic mean vs the detection-score weighted sum (T_agg clips),
- top-K memory tracking (the model's K_match / T_match) vs adjacent-clip matching (K = T = 1), on the test videos
  where an object disappears and comes back.
"""

from __future__ import annotations

import argparse
import shutil
import time


def evaluate(model, processor, examples, caption_metrics, **kwargs):
    from captionformer_hf.metrics import compute_chota
    from captionformer_hf.training.trainer import predict_example, reference_video

    predictions = [predict_example(model, processor, example, **kwargs) for example in examples]
    references = [reference_video(example) for example in examples]
    return compute_chota(predictions, references, caption_metrics=caption_metrics, score_threshold=0.0)


def reappearing(example) -> bool:
    for track in example["tracks"]:
        indices = [f["frame_index"] for f in track["frames"]]
        if len(indices) > 1 and max(b - a for a, b in zip(indices, indices[1:])) > 1:
            return True
    return False


def row(name, result, metrics):
    caps = "  ".join(f"{result[f'CapA_{m}']:.3f}" for m in metrics)
    return f"| {name:38s} | {result['CHOTA']:.3f} | {result['DetA']:.3f} | {result['AssA']:.3f} | {result['CapA']:.3f} | {caps} |"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the embedded model)")
    parser.add_argument("--videos", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args()

    import torch
    from transformers import AutoModel, AutoProcessor

    from captionformer_hf.data.synthetic import SyntheticVideoConfig, build_synthetic_dataset
    from captionformer_hf.defaults import default_model_path

    path = args.model or default_model_path()
    model = AutoModel.from_pretrained(path).float().eval()
    processor = AutoProcessor.from_pretrained(path)
    torch.set_grad_enabled(False)
    metrics = ("cider", "meteor") if shutil.which("java") else ("cider",)
    examples = list(build_synthetic_dataset(args.videos, seed=args.seed, config=SyntheticVideoConfig(num_frames=24),
                                            splits={"test": 1.0})["test"])
    header = "| setting | CHOTA | DetA | AssA | CapA | " + " ".join(f"CapA_{m}" for m in metrics) + " |"
    print(f"model: {path}; {len(examples)} synthetic test videos (seed {args.seed}); caption metrics {metrics}\n")
    print(header)
    print("|" + "---|" * (5 + len(metrics)))
    start = time.perf_counter()
    full = evaluate(model, processor, examples, metrics)
    print(row(f"shipped settings ({model.config.aggregation})", full, metrics))
    for method in ("best", "mean", "weighted"):
        result = evaluate(model, processor, examples, metrics, aggregation=method)
        print(row(f"captions: {method} (T_agg {model.config.t_agg})", result, metrics))
    occluded = [e for e in examples if reappearing(e)]
    for name, overrides in (
        (f"top-K (K {model.config.k_match}, T {model.config.t_match}), re-appearing", {}),
        ("adjacent clips (K 1, T 1), re-appearing", {"k_match": 1, "t_match": 1}),
    ):
        result = evaluate(model, processor, occluded, metrics, tracker_overrides=overrides)
        print(row(name + f" ({len(occluded)} videos)", result, metrics))
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
