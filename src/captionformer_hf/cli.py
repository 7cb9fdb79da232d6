"""The `captionformer` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .utils import atomic_write_json, check_distinct_paths

logger = logging.getLogger("captionformer_hf")


def _evaluate(args: argparse.Namespace) -> int:
    from .metrics import compute_chota
    from .metrics.formats import _load, load_videos

    if args.protocol is not None:
        given = [flag for flag, value in (("--iou-type", args.iou_type), ("--caption-metrics", args.caption_metrics),
                                          ("--score-threshold", args.score_threshold), ("--alphas", args.alphas))
                 if value is not None]
        if given:
            raise ValueError(f"--protocol {args.protocol} sets the evaluation settings; drop {', '.join(given)}")
    elif args.full_capa or args.sparse_frames:
        raise ValueError("--full-capa and --sparse-frames go with --protocol")
    sparse = _load(args.sparse_frames) if args.sparse_frames else None  # read before the evaluation starts
    references = args.references
    if os.path.isdir(references) or (not os.path.exists(references) and "/" in references
                                      and not references.endswith(".json")):
        from .prediction import dataset_references  # a dataset folder or Hub id: its split's ground truth

        references = dataset_references(references, args.split or "test")
    elif args.split is not None:
        raise ValueError("--split goes with a dataset folder or Hub id as the ground truth, not a JSON file")
    predictions, references, detected = load_videos(args.predictions, references)
    logger.info("evaluating %d videos (%s format)", len(references), detected)
    if args.protocol is not None:
        from .metrics.protocols import evaluate_protocol

        result = evaluate_protocol(args.protocol, predictions, references, full_capa=args.full_capa,
                                   sparse_frames=sparse, by_size=args.by_size)
    else:
        settings = {
            "iou_type": args.iou_type or "box",
            "alphas": tuple(args.alphas or (0.5,)),
            "caption_metrics": tuple(args.caption_metrics if args.caption_metrics is not None
                                     else ("cider", "meteor", "spice")),
            "score_threshold": 0.5 if args.score_threshold is None else args.score_threshold,
        }
        result = compute_chota(predictions, references, **settings)
        if args.by_size:
            from .metrics.protocols import size_breakdown

            result["by_size"] = size_breakdown(predictions, references, **settings)
    if args.vis_map:
        from .metrics.vis_map import video_instance_map

        raw = _load(args.references) if os.path.isfile(args.references) else None
        categories = raw.get("categories") if isinstance(raw, dict) else None
        if categories is not None and not all("partition" in c for c in categories):
            categories = None  # base / novel need LV-VIS's partitions
        result["vis_map"] = video_instance_map(predictions, references, categories=categories)
    if args.out:
        atomic_write_json(args.out, result)
    summary = {k: v for k, v in result.items() if k not in ("per_alpha", "per_video", "by_size", "vis_map")}
    for key, value in result.get("vis_map", {}).items():
        summary[f"VIS {key}"] = value
    for size, row in result.get("by_size", {}).items():
        summary[f"CHOTA {size}"] = row["CHOTA"]
        summary[f"detections {size} (gt / pred)"] = f"{row['gt_count']} / {row['pred_count']}"
    width = max(map(len, summary))
    for key, value in summary.items():
        sys.stdout.write(f"{key:<{width}}  {value:.4f}\n" if isinstance(value, float) else f"{key:<{width}}  {value}\n")
    return 0


def _caption(args: argparse.Namespace) -> int:
    from .defaults import load_pipeline
    from .utils import check_writable_file

    out = args.out or os.path.splitext(os.path.basename(str(args.video)))[0] + ".captions.json"
    # before the video is processed: a result is never lost at the end, and never replaces the video or the other
    check_distinct_paths({"--out": out, "--render": args.render}, {"VIDEO": args.video})
    check_writable_file(out, "--out")
    if args.render:
        check_writable_file(args.render, "--render")
    if not str(args.video).startswith(("http://", "https://")):  # a local input is checked before the model loads
        from .processing.video_processing_captionformer import _resolve_source

        _resolve_source(args.video, 0)
    pipe = load_pipeline(args.model, device=args.device)
    kwargs = {"return_masks": not args.no_masks, "progress": not args.quiet}
    for name in ("threshold", "fps", "max_frames", "num_beams", "max_new_tokens", "clip_batch_size", "max_side"):
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    if args.allow_truncated:
        kwargs["allow_truncated"] = True
    result = pipe(args.video, **kwargs)
    for warning in result.get("warnings", []):
        sys.stderr.write(f"captionformer caption: warning: {warning}\n")
    result = {"video_id": os.path.splitext(os.path.basename(str(args.video)))[0], **result}
    atomic_write_json(out, result)
    if args.render:
        from .visualization import render_overlay

        frames = pipe.processor.video_processor.open_video(args.video, allow_truncated=args.allow_truncated,
                                                           max_side=args.max_side)
        render_overlay(frames, result, args.render, fps=frames.video_fps)
    for trajectory in result["trajectories"]:
        first = trajectory["frames"][0]["frame_index"] if trajectory["frames"] else "-"
        last = trajectory["frames"][-1]["frame_index"] if trajectory["frames"] else "-"
        sys.stdout.write(
            f"track {trajectory['track_id']:>3}  frames {first}-{last}  score {trajectory['score']:.2f}  "
            f"{trajectory.get('category') or ''}: {trajectory['caption']}\n"
        )
    sys.stdout.write(f"{len(result['trajectories'])} trajectories -> {out}" + (f", overlay -> {args.render}" if args.render else "") + "\n")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import torch

    from .defaults import load_pipeline
    from .prediction import check_output, load_split, output_paths, predict_dataset

    check_output(args.out)  # before loading anything
    split = load_split(args.dataset, args.split, streaming=args.streaming)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    pipe = load_pipeline(args.model, device=args.device, **({"dtype": dtype} if dtype else {}))
    kwargs = {"return_masks": not args.no_masks}
    for name in ("threshold", "num_beams", "max_new_tokens", "clip_batch_size"):
        value = getattr(args, name)
        if value is not None:
            kwargs[name] = value
    settings = {"model": args.model or "default", "dataset": args.dataset, "split": args.split, "dtype": args.dtype,
                "max_videos": args.max_videos, "predict": kwargs}
    videos = predict_dataset(pipe.model, pipe.processor, split, args.out, max_videos=args.max_videos,
                             progress=not args.quiet, settings=settings, **kwargs)
    if videos is not None:
        out, official, _ = output_paths(args.out)
        tracks = sum(len(v["trajectories"]) for v in videos)
        sys.stdout.write(f"{len(videos)} videos, {tracks} trajectories -> {out} (and the release's format: {official})\n")
    return 0


def _sample_video(args: argparse.Namespace) -> int:
    from .data.synthetic import generate_video, sample_video_config, write_video

    video = generate_video(args.seed, sample_video_config(args.height, args.width, args.frames, args.fps))
    write_video(video["frames"], args.out, fps=video["fps"])
    if args.annotations:
        tracks = [
            {k: v for k, v in t.items() if k != "frames"}
            | {"frames": [{"frame_index": f["frame_index"], "box": f["box"]} for f in t["frames"]]}
            for t in video["trajectories"]
        ]
        reference = {"video_id": os.path.splitext(os.path.basename(args.out))[0], "num_frames": video["num_frames"],
                     "height": video["height"], "width": video["width"], "fps": video["fps"], "trajectories": tracks}
        atomic_write_json(args.annotations, reference)
    for track in video["trajectories"]:
        sys.stdout.write(f"track {track['track_id']}: {track['caption']} ({len(track['frames'])} frames)\n")
    sys.stdout.write(f"wrote {args.out}\n")
    return 0


def _data_synthetic(args: argparse.Namespace) -> int:
    from .data.schema import check_shard_size, dataset_card, write_shards
    from .data.synthetic import SYNTHETIC_CARD, build_synthetic_dataset, sample_video_config
    from .utils import atomic_directory, check_new_directory

    # objects as large, relative to the frame, at every size (those of `sample-video` at 192 x 256 x 48)
    config = sample_video_config(args.height, args.width, args.frames)
    out = os.path.abspath(args.out)
    check_new_directory(out, "--out")  # before any video is generated
    check_shard_size(args.shard_size)
    # the videos and the shards go into one temporary folder renamed to --out at the end: a refused or killed run
    # leaves nothing that a later run could pick up
    with atomic_directory(out, argument="--out") as tmp:
        dataset = build_synthetic_dataset(args.num_videos, seed=args.seed, config=config,
                                          video_dir=os.path.join(tmp, "videos"), progress=not args.quiet,
                                          num_proc=args.num_proc)
        card = dataset_card("Synthetic DVOC shapes", SYNTHETIC_CARD, {k: len(v) for k, v in dataset.items()},
                            dataset["train"].features if "train" in dataset else next(iter(dataset.values())).features,
                            license="cc0-1.0")
        write_shards(dataset, tmp, max_shard_size=args.shard_size, card=card)
    sys.stdout.write(f"wrote {sum(len(v) for v in dataset.values())} videos ({', '.join(f'{k}: {len(v)}' for k, v in dataset.items())}) to {out}\n")
    return 0


def _data_convert(args: argparse.Namespace) -> int:
    from .data.converters import convert

    splits = {}
    for item in args.split:
        parts = item.split("=", 1)
        if len(parts) != 2 or ":" not in parts[1]:
            raise ValueError(f"--split must look like NAME=ANNOTATIONS.json:FRAMES_DIR, got {item!r}")
        annotations, frames = parts[1].rsplit(":", 1)
        splits[parts[0]] = (annotations, frames)
    result = convert(args.format, splits, out=args.out, max_shard_size=args.shard_size)
    sys.stdout.write(f"converted {', '.join(f'{k}: {len(v)}' for k, v in result.items())} -> {args.out}\n")
    return 0


def _data_export_references(args: argparse.Namespace) -> int:
    from .prediction import dataset_references
    from .utils import check_writable_file

    check_writable_file(args.out, "--out")  # before reading the dataset
    references = dataset_references(args.dataset, args.split)
    atomic_write_json(args.out, references)
    sys.stdout.write(f"wrote the ground truth of {len(references)} videos ({args.split}) to {args.out}\n")
    return 0


def _data_push(args: argparse.Namespace) -> int:
    from .data.schema import load_parquet_dataset, merge_dataset_card

    dataset = load_parquet_dataset(args.folder)
    dataset.push_to_hub(args.repo_id, private=args.private, embed_external_files=True)
    card = os.path.join(args.folder, "README.md")
    if os.path.exists(card):
        from huggingface_hub import HfApi, hf_hub_download

        # push_to_hub wrote a card with `dataset_info` and `configs`: keep them, add ours (license, sizes, text)
        hub_card = open(hf_hub_download(args.repo_id, "README.md", repo_type="dataset"), encoding="utf-8").read()
        with open(card, encoding="utf-8") as f:
            merged = merge_dataset_card(hub_card, f.read())
        HfApi().upload_file(path_or_fileobj=merged.encode("utf-8"), path_in_repo="README.md", repo_id=args.repo_id,
                            repo_type="dataset")
    sys.stdout.write(f"pushed {args.folder} to {args.repo_id}\n")
    return 0


def _annotate(args: argparse.Namespace) -> int:
    args.backend = args.backend or ["template"]
    from .data.annotate import GeminiBackend, TemplateBackend, TransformersBackend, VotingBackend, annotate_dataset, merge_captions
    from .data.schema import dataset_card, load_parquet_dataset, write_parquet_shards

    def make(spec: str):
        kind, _, name = spec.partition(":")
        if kind == "template":
            return TemplateBackend()
        if kind == "gemini":
            return GeminiBackend(name or "gemini-2.0-flash")
        if kind == "transformers":
            if not name:
                raise ValueError("--backend transformers:<model id or path>")
            return TransformersBackend(name)
        raise ValueError(f"--backend must be template, gemini[:model] or transformers:<model>, got {spec!r}")

    backends = [make(spec) for spec in args.backend]
    backend = backends[0] if len(backends) == 1 else VotingBackend(backends)
    data = load_parquet_dataset(args.dataset)
    if args.split not in data:
        raise ValueError(f"the dataset has no split {args.split!r} (has {list(data)})")
    cache = annotate_dataset(data[args.split], backend, args.cache, num_frames=args.frames, visual=args.visual,
                             concurrency=args.concurrency, requests_per_second=args.rate, limit=args.limit,
                             progress=not args.quiet)
    flagged = sum(e["status"] == "flagged" for e in cache.entries.values())
    if args.out:
        merged = {name: (merge_captions(ds, cache) if name == args.split else ds) for name, ds in data.items()}
        import datasets

        merged = datasets.DatasetDict(merged)
        card = dataset_card("DVOC dataset with synthetic captions", f"Captions synthesised with {backend.name}.",
                            {k: len(v) for k, v in merged.items()}, merged[args.split].features)
        write_parquet_shards(merged, args.out, card=card)
    sys.stdout.write(f"{len(cache.entries)} tracks captioned in {args.cache} ({flagged} flagged)\n")
    return 0


def _space_build(args: argparse.Namespace) -> int:
    from .spaces import build_space, local_run_command

    out = build_space(args.kind, args.out, overwrite=args.overwrite)
    sys.stdout.write(f"wrote the {args.kind} Space to {out}; run it locally with:\n  {local_run_command(args.kind, out)}\n")
    return 0


def _space_push(args: argparse.Namespace) -> int:
    from .spaces import push_space

    url = push_space(args.folder, args.repo_id, private=args.private)
    sys.stdout.write(f"pushed {args.folder} to the Space {args.repo_id}: {url}\n")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .convert_captionformer_original_to_hf import main as convert_main

    return convert_main(args)


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    from .training.trainer import TrainingConfig, train

    overrides = {}
    for f in dataclasses.fields(TrainingConfig):
        value = getattr(args, f"cfg_{f.name}", None)
        if value is not None:
            overrides[f.name] = value
    if args.config:
        config = TrainingConfig.from_file(args.config, **overrides)
    else:
        config = TrainingConfig(**overrides)
    logging.getLogger("captionformer_hf").setLevel(logging.INFO)
    result = train(config)
    last = result["history"][-1] if result["history"] else {}
    resumed = f", resumed at step {result['resumed_at']}" if result["resumed_at"] else ""
    sys.stdout.write(f"trained {result['steps_this_run']} steps in {result['seconds']:.0f} s (now at step "
                     f"{result['steps']}{resumed}); last log: {last}\n")
    return 0


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``TrainingConfig`` field, its help text from the field's metadata. Not transformers'
    ``HfArgumentParser``: it gives every flag the dataclass default, which would override the values of the recipe
    file (``--config``); here an absent flag is ``None`` and leaves the recipe alone, and dict / list fields take
    JSON."""
    import dataclasses
    import json as _json

    from .training.trainer import TrainingConfig

    def boolean(value: str) -> bool:
        if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
        return value.lower() in ("1", "true", "yes")

    for f in dataclasses.fields(TrainingConfig):
        flag = "--" + f.name.replace("_", "-")
        annotation = str(f.type)
        if annotation.startswith(("dict", "list")):
            kind = _json.loads  # JSON: --datasets '[{"path": ..., "ratio": 0.5}]'
        elif annotation.startswith("bool"):
            kind = boolean
        elif annotation.startswith("int"):
            kind = int
        elif annotation.startswith("float"):
            kind = float
        else:
            kind = str
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        parser.add_argument(flag, dest=f"cfg_{f.name}", type=kind, metavar=kind.__name__.upper().replace("LOADS", "JSON"),
                            help=f"{f.metadata.get('help', '')} (default: {default!r})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captionformer", description="CaptionFormer: dense video object captioning")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress information")
    commands = parser.add_subparsers(dest="command", required=True)

    evaluate = commands.add_parser(
        "evaluate",
        help="CHOTA / HOTA / CapA of predictions against ground truth",
        description="Compute CHOTA. Formats (detected from the ground truth): trajectory videos (docs/format.md), "
        "COCO-style per-frame JSON (images with video_id; annotations with bbox, track_id, caption; predictions "
        "with score), or per-track JSON (videos; annotations/results with bboxes/segmentations per frame).",
    )
    evaluate.add_argument("predictions", help="predictions JSON (e.g. of captionformer predict)")
    evaluate.add_argument("references", help="ground-truth JSON, or a dataset folder / Hub dataset id (with --split)")
    evaluate.add_argument("--split", help="the dataset split of the ground truth (default: test)")
    evaluate.add_argument("--protocol", choices=("vidstg", "vln", "bensmot", "lvviscap"),
                          help="a benchmark's published protocol (IoU type, caption scoring, score threshold 0, "
                          "alpha 0.5); see README")
    evaluate.add_argument("--full-capa", action="store_true",
                          help="with --protocol: the full CapA (CIDEr, METEOR, SPICE) instead of the published CIDEr")
    evaluate.add_argument("--sparse-frames", help="with --protocol vln: the extended ground truth whose "
                          "sparse_frame_indices select the annotated frames of dense predictions")
    evaluate.add_argument("--iou-type", choices=("box", "mask"), help="default: box")
    evaluate.add_argument("--alphas", type=float, nargs="+", help="IoU thresholds (default 0.5)")
    evaluate.add_argument(
        "--caption-metrics", nargs="*", choices=("cider", "meteor", "spice"), help="default: cider meteor spice"
    )
    evaluate.add_argument("--score-threshold", type=float, help="default: 0.5")
    evaluate.add_argument("--out", help="write the full result (per alpha, per video) to this JSON file")
    evaluate.add_argument("--by-size", action="store_true",
                          help="also CHOTA per object size (small < 30,000 px² <= medium < 200,000 px² <= large), each "
                               "detection classed by its own area, as the release's chota_with_size")
    evaluate.add_argument("--vis-map", action="store_true",
                          help="also LV-VIS's video instance segmentation mAP (AP, AP50, AP75, APs/m/l, AR; APb / APn "
                               "when the ground truth's categories carry LV-VIS's partitions); needs masks")
    evaluate.set_defaults(func=_evaluate)

    caption = commands.add_parser("caption", help="segment, track and caption every object of a video")
    caption.add_argument("video", help="video file (mp4, avi, webm...) or URL")
    caption.add_argument("--model", help="model path or Hub id (default: the embedded model)")
    caption.add_argument("--out", help="result JSON (default: <video name>.captions.json)")
    caption.add_argument("--render", help="also write an overlay video (masks, boxes, ids, captions) here")
    caption.add_argument("--threshold", type=float, help="per-clip score threshold")
    caption.add_argument("--fps", type=float, help="sample frames at this rate")
    caption.add_argument("--max-frames", type=int, help="process at most this many frames")
    caption.add_argument("--num-beams", type=int)
    caption.add_argument("--max-new-tokens", type=int)
    caption.add_argument("--clip-batch-size", type=int)
    caption.add_argument("--no-masks", action="store_true", help="boxes only (faster)")
    caption.add_argument("--allow-truncated", action="store_true",
                         help="caption the readable frames of a truncated file (the result gets a `warnings` entry) "
                         "instead of refusing it")
    caption.add_argument("--max-side", type=int, help="downscale frames whose longer side is larger, while decoding")
    caption.add_argument("--device", help="torch device, e.g. cuda:0")
    caption.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    caption.set_defaults(func=_caption)

    predict = commands.add_parser(
        "predict", help="predict a whole dataset split (sharded with `accelerate launch`, resumable)",
        description="Run a model over a dataset split: trajectories JSON (docs/format.md) and the released code's "
        "per-track results.json. Shard over processes with `accelerate launch -m captionformer_hf.cli predict ...`; "
        "a killed run resumes where it stopped.",
    )
    predict.add_argument("--model", help="model path or Hub id (default: the embedded model)")
    predict.add_argument("--dataset", required=True, help="dataset folder (captionformer data ...) or Hub dataset id")
    predict.add_argument("--split", default="validation")
    predict.add_argument("--out", required=True, help="predictions JSON (also <stem>.results.json)")
    predict.add_argument("--streaming", action="store_true", help="stream the dataset instead of downloading it")
    predict.add_argument("--max-videos", type=int)
    predict.add_argument("--threshold", type=float)
    predict.add_argument("--num-beams", type=int)
    predict.add_argument("--max-new-tokens", type=int)
    predict.add_argument("--clip-batch-size", type=int)
    predict.add_argument("--no-masks", action="store_true")
    predict.add_argument("--device", help="torch device (default: the process's accelerator under accelerate)")
    predict.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    predict.add_argument("-q", "--quiet", action="store_true")
    predict.set_defaults(func=_predict)

    sample = commands.add_parser("sample-video", help="write a synthetic sample video (coloured shapes) to try")
    sample.add_argument("out", help="output video path (.mp4, .avi or .webm)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--frames", type=int, default=48)
    sample.add_argument("--height", type=int, default=192)
    sample.add_argument("--width", type=int, default=256)
    sample.add_argument("--fps", type=int, default=8)
    sample.add_argument("--annotations", help="also write the ground-truth trajectories (JSON) here")
    sample.set_defaults(func=_sample_video)

    data = commands.add_parser("data", help="build, convert and push DVOC datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    synthetic = data_commands.add_parser("synthetic", help="procedural shapes dataset (mp4 files + parquet)")
    synthetic.add_argument("--num-videos", type=int, required=True)
    synthetic.add_argument("--out", required=True)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--frames", type=int, default=24)
    synthetic.add_argument("--height", type=int, default=96)
    synthetic.add_argument("--width", type=int, default=128)
    synthetic.add_argument("--shard-size", type=int, default=500)
    synthetic.add_argument("--num-proc", type=int, default=1, help="processes generating the videos (same result)")
    synthetic.add_argument("-q", "--quiet", action="store_true")
    synthetic.set_defaults(func=_data_synthetic)
    convert = data_commands.add_parser("convert", help="official annotation format -> parquet dataset")
    convert.add_argument("--format", required=True, choices=("lvvis", "ytvis", "lvis", "vidstg", "vln", "bensmot"))
    convert.add_argument("--split", action="append", required=True, metavar="NAME=ANNOTATIONS.json:FRAMES_DIR")
    convert.add_argument("--out", required=True)
    convert.add_argument("--shard-size", type=int, default=500)
    convert.set_defaults(func=_data_convert)
    export = data_commands.add_parser("export-references",
                                      help="write a split's ground truth as trajectory JSON (captionformer evaluate's)")
    export.add_argument("dataset", help="dataset folder or Hub dataset id")
    export.add_argument("--split", default="test")
    export.add_argument("--out", required=True, help="JSON file (a list of videos, docs/format.md)")
    export.set_defaults(func=_data_export_references)
    push = data_commands.add_parser("push", help="push a converted folder to the Hub (files embedded)")
    push.add_argument("folder")
    push.add_argument("--repo-id", required=True)
    push.add_argument("--private", action="store_true")
    push.set_defaults(func=_data_push)

    annotate = commands.add_parser("annotate", help="synthesise object captions with VLMs (box drawing + prompts)")
    annotate.add_argument("--dataset", required=True, help="folder of parquet shards (captionformer data ...)")
    annotate.add_argument("--split", default="train")
    annotate.add_argument("--backend", action="append", default=None,
                          help="template | gemini[:model] | transformers:<model>; repeat for multi-VLM voting")
    annotate.add_argument("--cache", required=True, help="JSONL cache (resumable)")
    annotate.add_argument("--out", help="write the dataset with the new captions here")
    annotate.add_argument("--frames", type=int, default=4)
    annotate.add_argument("--visual", choices=("box", "contour"), default="box")
    annotate.add_argument("--concurrency", type=int, default=4)
    annotate.add_argument("--rate", type=float, help="requests per second")
    annotate.add_argument("--limit", type=int, help="stop after this many new tracks")
    annotate.add_argument("-q", "--quiet", action="store_true")
    annotate.set_defaults(func=_annotate, backend=None)

    train = commands.add_parser("train", help="train with accelerate (see captionformer_hf.training)")
    train.add_argument("--config", help="JSON training recipe; flags override its values")
    _add_training_flags(train)
    train.set_defaults(func=_train)

    from .convert_captionformer_original_to_hf import build_parser as build_convert_parser

    convert_checkpoint = commands.add_parser(
        "convert", help="official CaptionFormer checkpoint (.pth) -> safetensors + config + processor"
    )
    build_convert_parser(convert_checkpoint)
    convert_checkpoint.set_defaults(func=_convert)
    space = commands.add_parser("space", help="build or push a self-contained Gradio Space (demo or CHOTA metric)")
    space_commands = space.add_subparsers(dest="space_command", required=True)
    build = space_commands.add_parser(
        "build", help="write a Space folder: app.py, card, this package as a wheel, requirements installing it")
    build.add_argument("kind", choices=("demo", "chota"))
    build.add_argument("--out", required=True, help="the folder to write (new or empty)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    build.set_defaults(func=_space_build)
    push = space_commands.add_parser("push", help="upload a built Space folder to the Hub")
    push.add_argument("folder")
    push.add_argument("--repo-id", required=True, help="e.g. user/captionformer-demo")
    push.add_argument("--private", action="store_true")
    push.set_defaults(func=_space_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .utils import configure_logging

    configure_logging(args.verbose)
    quiet = getattr(args, "quiet", False)
    if quiet:  # -q: no progress bars at all, also not the weight-loading one of transformers
        from transformers.utils import logging as transformers_logging

        bars_were_on = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        sys.stderr.write(f"captionformer {args.command}: interrupted\n")
        return 130
    except Exception as error:  # one line for the user; the traceback with --verbose
        if args.verbose:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"captionformer {args.command}: error: {describe_error(error)}\n")
        return 2
    finally:
        if quiet and bars_were_on:
            transformers_logging.enable_progress_bar()


def describe_error(error: BaseException) -> str:
    """One line for an error reaching the command line: the message of the errors raised for bad input, the file
    and reason of operating-system errors, the error type and message otherwise."""
    if isinstance(error, (ValueError, TypeError, RuntimeError)) and str(error).strip():
        return " ".join(line.strip() for line in str(error).splitlines() if line.strip())  # a long message: one line
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.strerror}: {error.filename}"
    if isinstance(error, KeyError):
        return f"missing key {error.args[0]!r}" if error.args else "missing key"
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__


if __name__ == "__main__":
    raise SystemExit(main())
