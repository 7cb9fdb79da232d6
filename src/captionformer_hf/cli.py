"""The `captionformer` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .utils import atomic_write_json

logger = logging.getLogger("captionformer_hf")


def _evaluate(args: argparse.Namespace) -> int:
    from .metrics import compute_chota
    from .metrics.formats import load_videos

    predictions, references, detected = load_videos(args.predictions, args.references)
    logger.info("evaluating %d videos (%s format)", len(references), detected)
    result = compute_chota(
        predictions,
        references,
        iou_type=args.iou_type,
        alphas=tuple(args.alphas),
        caption_metrics=tuple(args.caption_metrics),
        score_threshold=args.score_threshold,
    )
    if args.out:
        atomic_write_json(args.out, result)
    summary = {k: v for k, v in result.items() if k not in ("per_alpha", "per_video")}
    width = max(map(len, summary))
    for key, value in summary.items():
        sys.stdout.write(f"{key:<{width}}  {value:.4f}\n" if isinstance(value, float) else f"{key:<{width}}  {value}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captionformer", description="CaptionFormer: dense video object captioning")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress information")
    commands = parser.add_subparsers(dest="command", required=True)

    evaluate = commands.add_parser(
        "evaluate",
        help="CHOTA / HOTA / CapA of predictions against ground truth",
        description="Compute CHOTA. Formats (detected from the ground truth): trajectory videos (DESIGN.md), "
        "COCO-style per-frame JSON (images with video_id; annotations with bbox, track_id, caption; predictions "
        "with score), or per-track JSON (videos; annotations/results with bboxes/segmentations per frame).",
    )
    evaluate.add_argument("predictions", help="predictions JSON")
    evaluate.add_argument("references", help="ground-truth JSON")
    evaluate.add_argument("--iou-type", choices=("box", "mask"), default="box")
    evaluate.add_argument("--alphas", type=float, nargs="+", default=[0.5], help="IoU thresholds (default 0.5)")
    evaluate.add_argument(
        "--caption-metrics", nargs="*", default=["cider", "meteor", "spice"], choices=("cider", "meteor", "spice")
    )
    evaluate.add_argument("--score-threshold", type=float, default=0.5)
    evaluate.add_argument("--out", help="write the full result (per alpha, per video) to this JSON file")
    evaluate.set_defaults(func=_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except (ValueError, TypeError, RuntimeError) as error:
        sys.stderr.write(f"captionformer {args.command}: error: {error}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
