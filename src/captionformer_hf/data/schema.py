"""`datasets` schema of dense-video-object-captioning examples (DESIGN.md), validation, and parquet writing."""

from __future__ import annotations

import math
import os

import datasets

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
    """Raise a ``ValueError`` naming the video / track / frame of the first problem found."""
    where = where or f"video {example.get('video_id')!r}"
    for key in ("video_id", "height", "width", "num_frames", "tracks"):
        if example.get(key) is None:
            raise ValueError(f"{where}: missing `{key}`")
    num_frames, height, width = example["num_frames"], example["height"], example["width"]
    if num_frames < 1 or height < 1 or width < 1:
        raise ValueError(f"{where}: num_frames, height and width must be positive")
    seen_ids = set()
    for track in example["tracks"]:
        track_where = f"{where}, track {track.get('track_id')!r}"
        if track.get("track_id") in seen_ids:
            raise ValueError(f"{track_where}: duplicate track_id")
        seen_ids.add(track.get("track_id"))
        if not isinstance(track.get("caption", ""), (str, type(None))):
            raise ValueError(f"{track_where}: caption must be a string")
        seen_frames = set()
        for frame in track.get("frames", []):
            index = frame.get("frame_index")
            if not isinstance(index, int) or not 0 <= index < num_frames:
                raise ValueError(f"{track_where}: frame_index {index!r} out of range [0, {num_frames})")
            if index in seen_frames:
                raise ValueError(f"{track_where}: frame {index} listed twice")
            seen_frames.add(index)
            box = frame.get("box")
            if box is None or len(box) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box):
                raise ValueError(f"{track_where}, frame {index}: box must be 4 finite numbers [x, y, w, h]")
            if box[2] < 0 or box[3] < 0:
                raise ValueError(f"{track_where}, frame {index}: box {box} has a negative size")
            if frame.get("mask_rle"):
                check_rle(frame["mask_rle"], height, width, f"{track_where}, frame {index}")


def check_rle(counts: str, height: int, width: int, where: str) -> None:
    """A COCO compressed RLE string must decode to a ``height x width`` mask."""
    from pycocotools import mask as mask_utils

    try:
        rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
        area = float(mask_utils.area(rle))
        decoded_pixels = sum_rle_runs(counts)
    except Exception as error:  # pycocotools raises bare Exceptions on corrupt RLE
        raise ValueError(f"{where}: bad mask RLE ({error})") from error
    if decoded_pixels != height * width or area < 0:
        raise ValueError(f"{where}: bad mask RLE (covers {decoded_pixels} pixels, the frame has {height * width})")


def sum_rle_runs(counts: str) -> int:
    """Total length of the runs of a COCO compressed RLE string (pycocotools' LEB128-like code, decoded here)."""
    data = counts.encode() if isinstance(counts, str) else counts
    runs: list[int] = []
    i = 0
    while i < len(data):
        value, shift, more = 0, 0, True
        while more:
            if i >= len(data):
                raise ValueError("truncated RLE string")
            c = data[i] - 48
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            i += 1
            shift += 1
            if not more and (c & 0x10):
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise ValueError("negative run length")
        runs.append(value)
    return sum(runs)


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
