"""Reproduce the embedded default model from scratch, every phase, in one command.

    python recipes/train_default.py [--out runs/default] [--ship]

1. data: 800 synthetic videos (dataset seed 1: none of them is a `sample-video` seed below 1,000,000, so README
   command 1's video and the quality benchmark's are unseen) at the geometry of ``captionformer sample-video`` (192 x 256, 48 frames,
   8 fps): 640 train / 80 validation / 80 test, written once to ``OUT/data`` (mp4 + parquet).
2. phase 1, ``recipes/default_synthetic.json``: the whole model end to end on single-frame clips (segmentation,
   detection, classification, objectness and clip-level captions).
3. phase 2, ``recipes/default_synthetic_video.json``: the paper's second stage, segmenter frozen: video-level
   captions, the clips of each video aggregated in time order by the order-aware aggregation of the config;
   phase 3, ``recipes/default_synthetic_video_more.json``: the same stage continued from phase 2 at half the
   learning rate (the caption loss was still falling at the end of phase 2: the motion's axis is learned first, its
   direction later); phase 4, ``recipes/default_synthetic_video_longer.json``: 3,000 more steps the same way;
   phase 5, ``recipes/default_synthetic_video_new_data.json``: 3,000 steps on 800 new videos (``OUT/data-more``,
   dataset seed 2): by then the training captions were learned (loss 0.015) and unseen videos lagged behind them;
   phase 6, ``recipes/default_synthetic_video_new_data_2.json``: 3,000 steps on 800 more new videos
   (``OUT/data-more-2``, dataset seed 3; they started at loss 0.07, phase 5's new videos at 0.09); phase 7,
   ``recipes/default_synthetic_video_new_data_3.json``: 3,000 steps on 800 more (``OUT/data-more-3``, dataset seed
   4; they started at loss 0.06).
4. calibration (with the per-clip duplicate suppression of ``DUPLICATE_IOU``): the per-clip score threshold and the hysteresis of the tracker, chosen on the validation videos
   (never on test videos) by HOTA (DetA x AssA), then the captions on the chosen tracks.
5. with ``--ship``: the model is written, in fp16 when that loses nothing on the validation videos, to
   ``src/captionformer_hf/checkpoints/default`` (atomically, keeping its model card).

Each phase resumes from its own checkpoints and a finished phase is skipped, so rerunning the command after an
interruption continues where it stopped. ``--ablation`` also trains phase 2 once per caption aggregation
(``weighted``, the paper's; ``concat``, ``linear``, ``self-attention``) for ``--ablation-steps`` steps from the same
phase-1 model and prints the words right on unseen sample videos, the figures behind the choice of aggregation.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(ROOT, "src", "captionformer_hf", "checkpoints", "default")
RECIPES = os.path.join(ROOT, "recipes")
logger = logging.getLogger("train_default")

# calibration grid: per-clip score threshold x minimum track length (frames); hysteresis low = 3/4 of the
# threshold, high = the threshold + HIGH_DELTA
THRESHOLDS = (0.3, 0.4, 0.5, 0.6)
MIN_LENGTHS = (3, 5)
HIGH_DELTA = 0.1
# two of the 4 queries can settle on one object (no NMS in Mask2Former's set prediction): the shipped model drops,
# per clip, a kept query whose mask overlaps a higher-scoring one's at IoU > 0.5 (config.duplicate_iou_threshold)
DUPLICATE_IOU = 0.5
TIE = 0.002  # HOTA differences below this on the validation videos count as equal: the longer minimum length wins


def build_data(folder: str, num_videos: int = 800, seed: int = 1, frames: int = 48) -> None:
    if os.path.isdir(folder):
        return
    from captionformer_hf.cli import main as cli

    logger.info("generating %d synthetic videos into %s", num_videos, folder)
    code = cli(["data", "synthetic", "--num-videos", str(num_videos), "--out", folder, "--seed", str(seed),
                "--frames", str(frames), "--height", "192", "--width", "256", "--num-proc", "2", "-q"])
    if code:
        raise SystemExit(code)


def run_phase(recipe: str, output_dir: str, **overrides) -> str:
    """Train ``recipe`` into ``output_dir`` (resuming from its checkpoints); returns its ``final`` folder."""
    from captionformer_hf.training.trainer import TrainingConfig, train

    final = os.path.join(output_dir, "final")
    if os.path.isdir(final):
        logger.info("%s is done: %s", os.path.basename(recipe), final)
        return final
    config = TrainingConfig.from_file(recipe, output_dir=output_dir, **overrides)
    start = time.perf_counter()
    train(config)
    logger.info("%s: %d steps in %.1f min", os.path.basename(recipe), config.max_steps,
                (time.perf_counter() - start) / 60)
    return final


class SegmenterCache:
    """Replays the clip outputs of the segmenter (per video, in call order) so that every setting of the calibration
    grid re-runs only the tracking: the segmenter's outputs do not depend on the tracker's settings."""

    def __init__(self, model):
        self.model = model
        self.segment = model.model.segment_clips
        self.store: dict = {}
        self.key = None
        self.position = 0
        model.model.segment_clips = self  # instance attribute: the model calls self.segment_clips(...)

    def video(self, key) -> None:
        self.key, self.position = key, 0

    def __call__(self, pixel_values_videos, *args, **kwargs):
        outputs = self.store.setdefault(self.key, [])
        if self.position == len(outputs):
            outputs.append(self.segment(pixel_values_videos, *args, **kwargs))
        result = outputs[self.position]
        self.position += 1
        return result

    def close(self) -> None:
        del self.model.model.segment_clips


def set_thresholds(config, threshold: float, min_length: int) -> None:
    config.score_threshold = threshold
    config.hysteresis_low = round(threshold * 0.75, 3)
    config.hysteresis_high = round(min(1.0, threshold + HIGH_DELTA), 3)
    config.hysteresis_min_length = min_length


def calibrate(model, processor, examples) -> dict:
    """Choose the score threshold and the hysteresis on ``examples`` (validation videos) by HOTA without captions;
    returns ``{"threshold", "min_length", "grid": [...]}``."""
    import torch

    from captionformer_hf.data.loader import decode_example_frames
    from captionformer_hf.metrics import compute_chota
    from captionformer_hf.processing import predict_video
    from captionformer_hf.data.schema import reference_video

    references = [reference_video(e) for e in examples]
    frames = [decode_example_frames(e) for e in examples]
    cache = SegmenterCache(model)
    grid = []
    try:
        with torch.no_grad():
            for threshold in THRESHOLDS:
                for min_length in MIN_LENGTHS:
                    set_thresholds(model.config, threshold, min_length)
                    predictions = []
                    for example, video in zip(examples, frames):
                        cache.video(example["video_id"])
                        predictions.append(predict_video(model, processor, video, video_id=example["video_id"],
                                                         video_fps=example["fps"], caption=False))
                    result = compute_chota(predictions, references, caption_metrics=("cider",), score_threshold=0.0)
                    grid.append({"threshold": threshold, "min_length": min_length, "HOTA": result["HOTA"],
                                 "DetA": result["DetA"], "AssA": result["AssA"]})
                    logger.info("threshold %.2f min length %d: HOTA %.4f DetA %.4f AssA %.4f", threshold, min_length,
                                result["HOTA"], result["DetA"], result["AssA"])
    finally:
        cache.close()
    best = max(row["HOTA"] for row in grid)
    chosen = max((row for row in grid if row["HOTA"] >= best - TIE), key=lambda row: (row["min_length"], row["HOTA"]))
    set_thresholds(model.config, chosen["threshold"], chosen["min_length"])
    return {"threshold": chosen["threshold"], "min_length": chosen["min_length"], "grid": grid}


def chota(model, processor, examples, metrics=("cider",)) -> dict:
    from captionformer_hf.metrics import compute_chota
    from captionformer_hf.data.schema import reference_video
    from captionformer_hf.prediction import predict_example

    predictions = [predict_example(model, processor, e) for e in examples]
    return compute_chota(predictions, [reference_video(e) for e in examples], caption_metrics=metrics,
                         score_threshold=0.0)


def word_shares(model, processor, seeds) -> dict:
    from transformers import pipeline

    from captionformer_hf.processing import DenseVideoObjectCaptioningPipeline
    from captionformer_hf.toy import caption_word_accuracy

    pipe = pipeline("dense-video-object-captioning", model=model, processor=processor,
                    pipeline_class=DenseVideoObjectCaptioningPipeline)
    return caption_word_accuracy(pipe, seeds)["shares"]


def ship(model, processor, examples, target: str) -> None:
    """Save ``model`` (fp16 weights when they give the same CHOTA on ``examples``) with ``processor`` into
    ``target`` atomically, keeping the model card there."""
    import shutil

    import torch

    from captionformer_hf.utils import atomic_directory

    reference = chota(model, processor, examples)["CHOTA"]
    half = {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    full = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(half)
    rounded = chota(model, processor, examples)["CHOTA"]
    model.load_state_dict(full)
    dtype = torch.float16 if rounded + 1e-3 >= reference else torch.float32
    logger.info("validation CHOTA fp32 %.4f, through fp16 weights %.4f: shipping %s", reference, rounded, dtype)
    with atomic_directory(target, overwrite=True) as tmp:
        model.to(dtype).save_pretrained(tmp)
        model.float()
        processor.save_pretrained(tmp)
        with open(os.path.join(tmp, "config.json")) as f:
            config = json.load(f)
        config["dtype"] = "float32"  # fp16 storage, fp32 compute (CPU inference of the deformable attention)
        config.pop("auto_map", None)  # the package is installed wherever the embedded model is used
        config.pop("custom_pipelines", None)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(tmp, "processor_config.json")) as f:
            processor_config = json.load(f)
        processor_config.pop("auto_map", None)
        processor_config.get("video_processor", {}).pop("auto_map", None)
        with open(os.path.join(tmp, "processor_config.json"), "w") as f:
            json.dump(processor_config, f, indent=2)
        tokenizer_config = os.path.join(tmp, "tokenizer_config.json")
        if os.path.exists(tokenizer_config):
            with open(tokenizer_config) as f:
                data = json.load(f)
            data.pop("auto_map", None)
            with open(tokenizer_config, "w") as f:
                json.dump(data, f, indent=2)
        for name in os.listdir(tmp):
            if name.endswith(".py"):
                os.remove(os.path.join(tmp, name))
        if os.path.exists(os.path.join(target, "README.md")):
            shutil.copy(os.path.join(target, "README.md"), os.path.join(tmp, "README.md"))
    size = sum(os.path.getsize(os.path.join(target, f)) for f in os.listdir(target))
    logger.info("shipped to %s (%.1f MB)", target, size / 1e6)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "default"))
    parser.add_argument("--ship", action="store_true", help="write the model into the package (checkpoints/default)")
    parser.add_argument("--calibration-videos", type=int, default=40)
    parser.add_argument("--until", choices=("data", "phase1", "phase2", "phase3", "phase4", "phase5", "phase6", "phase7",
                                               "all"),
                        default="all",
                        help="stop after this step (a later run continues from there)")
    parser.add_argument("--ablation", action="store_true", help="also train phase 2 once per caption aggregation")
    parser.add_argument("--ablation-steps", type=int, default=600)
    parser.add_argument("--ablation-videos", type=int, default=40, help="unseen sample videos per ablation row")
    parser.add_argument("--smoke", action="store_true",
                        help="every step at the smallest size (8 videos of 8 frames, 2 steps a phase): checks the "
                             "command, not the model")
    args = parser.parse_args(argv)
    from captionformer_hf.utils import configure_logging

    configure_logging(verbose=True)  # this package's progress (not the libraries' chatter)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    import torch
    from transformers import AutoModel, AutoProcessor

    from captionformer_hf.data.schema import load_parquet_dataset

    start = time.perf_counter()
    data = os.path.join(args.out, "data")
    smoke = {"max_steps": 2, "batch_size": 2, "save_every": 1, "warmup_steps": 0, "log_every": 1} if args.smoke else {}
    if args.smoke:
        args.calibration_videos = min(args.calibration_videos, 1)
        args.ablation_steps, args.ablation_videos = 2, 1
    build_data(data, num_videos=10 if args.smoke else 800, frames=8 if args.smoke else 48)
    if args.until == "data":
        return 0
    phase1 = run_phase(os.path.join(RECIPES, "default_synthetic.json"), os.path.join(args.out, "phase1"),
                       dataset=data, **smoke)
    if args.ablation:
        ablation(args, data, phase1)
    if args.until == "phase1":
        return 0
    # the video-level phases, each from the one before it; phases 5, 6 and 7 on new data sets (dataset seeds 2-4)
    more = {os.path.join(args.out, "data-more"): 2, os.path.join(args.out, "data-more-2"): 3,
            os.path.join(args.out, "data-more-3"): 4}
    more_data, more_data_2, more_data_3 = list(more)
    video_phases = (("phase2", "default_synthetic_video.json", data),
                    ("phase3", "default_synthetic_video_more.json", data),
                    ("phase4", "default_synthetic_video_longer.json", data),
                    ("phase5", "default_synthetic_video_new_data.json", more_data),
                    ("phase6", "default_synthetic_video_new_data_2.json", more_data_2),
                    ("phase7", "default_synthetic_video_new_data_3.json", more_data_3))
    final = phase1
    for name, recipe, dataset in video_phases:
        if dataset in more:
            build_data(dataset, num_videos=10 if args.smoke else 800, seed=more[dataset], frames=8 if args.smoke else 48)
        final = run_phase(os.path.join(RECIPES, recipe), os.path.join(args.out, name), dataset=dataset, model=final,
                          **dict(smoke, batch_size=1) if args.smoke else {})
        if args.until == name:
            return 0
    torch.set_grad_enabled(False)
    model = AutoModel.from_pretrained(final).eval()
    model.config.duplicate_iou_threshold = DUPLICATE_IOU
    processor = AutoProcessor.from_pretrained(final)
    validation = list(load_parquet_dataset(data)["validation"])[: args.calibration_videos]
    chosen = calibrate(model, processor, validation)
    with open(os.path.join(args.out, "calibration.json"), "w") as f:
        json.dump(chosen, f, indent=1)
    logger.info("calibrated on %d validation videos: threshold %.2f, hysteresis %.3f / %.3f, min length %d",
                len(validation), chosen["threshold"], model.config.hysteresis_low, model.config.hysteresis_high,
                chosen["min_length"])
    if args.ship:
        ship(model, processor, validation, TARGET)
    logger.info("done in %.1f min", (time.perf_counter() - start) / 60)
    return 0


def ablation(args, data: str, phase1: str) -> None:
    """Phase 2 once per aggregation, the same steps and data from the same phase-1 model; words right on unseen
    sample videos (seeds 2000 on: neither the training data nor the quality benchmark's seeds)."""
    import torch
    from transformers import AutoModel, AutoProcessor

    rows = []
    for method in ("weighted", "concat", "linear", "self-attention"):
        folder = os.path.join(args.out, f"ablation-{method}")
        final = run_phase(os.path.join(RECIPES, "default_synthetic_video.json"), folder, dataset=data, model=phase1,
                          max_steps=args.ablation_steps, model_overrides={"aggregation": method},
                          **({"batch_size": 1, "save_every": 1, "warmup_steps": 0} if args.smoke else {}))
        with torch.no_grad():
            model = AutoModel.from_pretrained(final).eval()
            processor = AutoProcessor.from_pretrained(final)
            shares = word_shares(model, processor, range(2000, 2000 + args.ablation_videos))
        rows.append((method, shares))
        logger.info("%s: %s", method, {k: round(v, 3) for k, v in shares.items()})
    print(f"\nablation: phase 2 for {args.ablation_steps} steps per aggregation; share of the objects of "
          f"{args.ablation_videos} unseen sample videos (seeds 2000-{2000 + args.ablation_videos - 1}) whose caption "
          "has the right word\n")
    print("| aggregation | colour | shape | motion | all three |\n|---|---|---|---|---|")
    for method, shares in rows:
        print(f"| {method} | {shares['colour']:.3f} | {shares['shape']:.3f} | {shares['motion']:.3f} | "
              f"{shares['all three']:.3f} |")


if __name__ == "__main__":
    raise SystemExit(main())
