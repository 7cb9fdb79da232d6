"""`datasets` schema of dense-video-object-captioning examples, validation, and parquet writing.

An example is a video with its trajectories (``docs/format.md``) under ``tracks`` (each with a ``category_id``)."""

from __future__ import annotations

import math
import os

import datasets

from ..processing.trajectory_captionformer import check_rle, validate_video
from ..utils import atomic_directory

FRAME_FEATURES = {
    "frame_index": datasets.Value("int32"),
    "box": datasets.List(datasets.Value("float32"), length=4),
    "mask_rle": datasets.Value("string"),
}
TRACK_FEATURES = {
    "track_id": datasets.Value("int64"),
    "category": datasets.Value("string"),
    "category_id": datasets.Value("int64"),
    "caption": datasets.Value("string"),
    "frames": datasets.List(FRAME_FEATURES),
}


def dvoc_features(video_as: str = "video") -> datasets.Features:
    """Features of a DVOC example. ``video_as="video"``: ``datasets.Video(decode=False)`` (bytes or path of an
    encoded video); ``"frames"``: a list of ``datasets.Image(decode=False)`` (frame files, e.g. LV-VIS folders or
    the single image of an LVIS example)."""
    if video_as == "video":
        video = datasets.Video(decode=False)
    elif video_as == "frames":
        video = datasets.List(datasets.Image(decode=False))
    else:
        raise ValueError(f"`video_as` must be 'video' or 'frames', got {video_as!r}")
    return datasets.Features(
        {
            "video": video,
            "video_id": datasets.Value("string"),
            "fps": datasets.Value("float32"),
            "height": datasets.Value("int32"),
            "width": datasets.Value("int32"),
            "num_frames": datasets.Value("int32"),
            "tracks": datasets.List(TRACK_FEATURES),
        }
    )


def validate_example(example: dict, where: str | None = None) -> None:
    """Raise a ``ValueError`` naming the video / track / frame of the first problem found (the trajectory format's
    checks, ``docs/format.md``, on the example's ``tracks``; masks must cover the frame exactly)."""
    where = where or f"video {example.get('video_id')!r}"
    for key in ("video_id", "height", "width", "num_frames", "tracks"):
        if example.get(key) is None:
            raise ValueError(f"{where}: missing `{key}`")
    validate_video(example, where, key="tracks")


def write_parquet_shards(dataset_dict: datasets.DatasetDict, out_dir: str, max_shard_size: int = 500,
                         card: str | None = None) -> None:
    """Write ``data/{split}-{i:05d}-of-{n:05d}.parquet`` (at most ``max_shard_size`` examples a shard) and a dataset
    card, into a temporary folder renamed to ``out_dir`` at the end: nothing is half-written."""
    with atomic_directory(out_dir, argument="out") as tmp:
        os.makedirs(os.path.join(tmp, "data"))
        for split, dataset in dataset_dict.items():
            num_shards = max(1, math.ceil(len(dataset) / max_shard_size))
            for i in range(num_shards):
                shard = dataset.shard(num_shards=num_shards, index=i, contiguous=True)
                shard.to_parquet(os.path.join(tmp, "data", f"{split}-{i:05d}-of-{num_shards:05d}.parquet"))
        if card is not None:
            with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
                f.write(card)


def load_parquet_dataset(folder: str, streaming: bool = False):
    """Load a folder written by :func:`write_parquet_shards` as a ``DatasetDict`` (or ``IterableDatasetDict``)."""
    data = os.path.join(folder, "data")
    if not os.path.isdir(data):
        raise ValueError(f"{folder} has no data/ folder of parquet shards")
    splits = sorted({name.split("-")[0] for name in os.listdir(data) if name.endswith(".parquet")})
    files = {split: os.path.join(data, f"{split}-*.parquet") for split in splits}
    return datasets.load_dataset("parquet", data_files=files, streaming=streaming)


def dataset_card(name: str, description: str, splits: dict[str, int], features: datasets.Features) -> str:
    configs = "\n".join(f"  - split: {split}\n    path: data/{split}-*.parquet" for split in splits)
    rows = "\n".join(f"| {split} | {count} |" for split, count in splits.items())
    return f"""---
configs:
- config_name: default
  data_files:
{configs}
task_categories:
- video-text-to-text
tags:
- dense-video-object-captioning
- captionformer
---

# {name}

{description}

| split | videos |
| --- | --- |
{rows}

Each example: `video` (encoded video or frame images), `video_id`, `fps`, `height`, `width`, `num_frames`, and
`tracks`: `track_id`, `category`, `category_id`, `caption`, `frames` (`frame_index`, `box` [x, y, w, h] in pixels,
`mask_rle` COCO compressed RLE or null). A frame where the object is absent is not listed.

Features: `{features}`
"""
