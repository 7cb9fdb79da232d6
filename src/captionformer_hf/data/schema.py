"""`datasets` schema of dense-video-object-captioning examples, validation, and parquet writing.

An example is a video with its trajectories (``docs/format.md``) under ``trajectories`` (each with a ``category_id``)."""

from __future__ import annotations

import logging
import math
import os
import re

import datasets

from ..processing.trajectory_captionformer import check_rle, validate_video
from ..utils import atomic_directory

logger = logging.getLogger(__name__)

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
            "trajectories": datasets.List(TRACK_FEATURES),
        }
    )


def reference_video(example: dict) -> dict:
    """A dataset example as a CHOTA reference video."""
    return {
        "video_id": example["video_id"],
        "num_frames": example["num_frames"],
        "height": example["height"],
        "width": example["width"],
        "trajectories": [
            {"track_id": t["track_id"], "caption": t["caption"], "category": t.get("category"),
             "frames": [{"frame_index": f["frame_index"], "box": f["box"], "mask_rle": f.get("mask_rle")} for f in t["frames"]]}
            for t in example["trajectories"]
        ],
    }


def validate_example(example: dict, where: str | None = None) -> None:
    """Raise a ``ValueError`` naming the video / track / frame of the first problem found (the trajectory format's
    checks, ``docs/format.md``, on the example's ``trajectories``; masks must cover the frame exactly)."""
    where = where or f"video {example.get('video_id')!r}"
    for key in ("video_id", "height", "width", "num_frames", "trajectories"):
        if example.get(key) is None:
            raise ValueError(f"{where}: missing `{key}`")
    validate_video(example, where, key="trajectories")


def check_shard_size(max_shard_size) -> int:
    if isinstance(max_shard_size, bool) or not isinstance(max_shard_size, int) or max_shard_size < 1:
        raise ValueError(f"`max_shard_size` (--shard-size) must be a positive integer, got {max_shard_size!r}")
    return max_shard_size


_SPLIT_NAME = re.compile(r"[A-Za-z0-9_]+")
_SHARD_NAME = re.compile(r"(?P<split>[A-Za-z0-9_]+)-\d{5}-of-\d{5}\.parquet")


def check_split_name(split) -> str:
    """A split name is letters, digits and underscores (as `datasets` names splits): no path, no dash, so that it
    can neither leave the output folder nor read back as another split."""
    if not isinstance(split, str) or not _SPLIT_NAME.fullmatch(split):
        raise ValueError(f"split name {split!r}: use letters, digits and underscores only (e.g. train, validation, "
                         "train_extra)")
    return split


def write_shards(dataset_dict: datasets.DatasetDict, folder: str, max_shard_size: int = 500,
                 card: str | None = None) -> None:
    """Write ``data/{split}-{i:05d}-of-{n:05d}.parquet`` (at most ``max_shard_size`` examples a shard) and the
    dataset card into ``folder`` (use :func:`write_parquet_shards` for an atomic folder)."""
    check_shard_size(max_shard_size)
    for split in dataset_dict:
        check_split_name(split)
    os.makedirs(os.path.join(folder, "data"), exist_ok=True)
    for split, dataset in dataset_dict.items():
        num_shards = max(1, math.ceil(len(dataset) / max_shard_size))
        for i in range(num_shards):
            shard = dataset.shard(num_shards=num_shards, index=i, contiguous=True)
            shard.to_parquet(os.path.join(folder, "data", f"{split}-{i:05d}-of-{num_shards:05d}.parquet"))
    if card is not None:
        with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)


def write_parquet_shards(dataset_dict: datasets.DatasetDict, out_dir: str, max_shard_size: int = 500,
                         card: str | None = None) -> None:
    """:func:`write_shards` into a temporary folder renamed to ``out_dir`` at the end: nothing is half-written, and
    an existing non-empty ``out_dir`` is refused before anything is written."""
    check_shard_size(max_shard_size)
    with atomic_directory(out_dir, argument="out") as tmp:
        write_shards(dataset_dict, tmp, max_shard_size, card)


def load_parquet_dataset(folder: str, streaming: bool = False):
    """Load a folder written by :func:`write_parquet_shards` as a ``DatasetDict`` (or ``IterableDatasetDict``)."""
    data = os.path.join(folder, "data")
    if not os.path.isdir(data):
        raise ValueError(f"{folder} has no data/ folder of parquet shards")
    shards: dict = {}
    for name in sorted(os.listdir(data)):
        match = _SHARD_NAME.fullmatch(name)
        if match:
            shards.setdefault(match["split"], []).append(os.path.join(data, name))
    if not shards:
        raise ValueError(f"{folder}: data/ holds no parquet shards named <split>-NNNNN-of-NNNNN.parquet")
    files = shards
    return rename_legacy_columns(datasets.load_dataset("parquet", data_files=files, streaming=streaming))


def rename_legacy_columns(data):
    """A dataset (dict) whose trajectories column has its old name ``tracks`` with it renamed ``trajectories``
    (datasets written before the rename); any other dataset as it is."""
    splits = data.values() if isinstance(data, dict) else [data]
    columns = [getattr(split, "column_names", None) or list(getattr(split, "features", None) or ()) for split in splits]
    if any("tracks" in names and "trajectories" not in names for names in columns):
        logger.warning("renaming the dataset's legacy `tracks` column to `trajectories`")
        return data.rename_column("tracks", "trajectories")
    return data


SOURCE_LICENSE_NOTE = "the licenses of the source annotations and frames apply"


def size_category(count: int) -> str:
    """The Hub's ``size_categories`` value for ``count`` examples."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")):
        if count < limit:
            return name
    return "n>100M"


def dataset_card(name: str, description: str, splits: dict[str, int], features: datasets.Features,
                 license: str = "other") -> str:
    """A dataset card (``huggingface_hub.DatasetCard``): Hub metadata (``pretty_name``, ``license``,
    ``size_categories``, ``task_categories``, ``tags``, the parquet ``configs``) and the schema. ``license="other"``
    (converted datasets) adds that the source's licenses apply."""
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(
        pretty_name=name,
        license=license,
        size_categories=[size_category(sum(splits.values()))],
        task_categories=["video-text-to-text"],
        tags=["dense-video-object-captioning", "captionformer"],
        configs=[{"config_name": "default",
                  "data_files": [{"split": split, "path": f"data/{split}-*.parquet"} for split in splits]}],
    )
    rows = "\n".join(f"| {split} | {count} |" for split, count in splits.items())
    license_line = f"License: {license}" + (f" ({SOURCE_LICENSE_NOTE})." if license == "other" else ".")
    text = f"""# {name}

{description}

{license_line}

| split | videos |
| --- | --- |
{rows}

Each example: `video` (encoded video or frame images), `video_id`, `fps`, `height`, `width`, `num_frames`, and
`trajectories`: `track_id`, `category`, `category_id`, `caption`, `frames` (`frame_index`, `box` [x, y, w, h] in pixels,
`mask_rle` COCO compressed RLE or null). A frame where the object is absent is not listed.

Features: `{features}`
"""
    return str(DatasetCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + text))


def merge_dataset_card(hub_card: str, ours: str) -> str:
    """The card to publish after ``push_to_hub``: its metadata (``dataset_info``, ``configs`` that push_to_hub wrote)
    kept, ours (license, pretty name, sizes, tags...) added over it, and our text."""
    from huggingface_hub import DatasetCard, DatasetCardData

    hub, mine = DatasetCard(hub_card), DatasetCard(ours)
    merged = hub.data.to_dict()
    for key, value in mine.data.to_dict().items():
        if key not in ("dataset_info", "configs") or key not in merged:
            merged[key] = value
    return str(DatasetCard.from_template(DatasetCardData(**merged),
                                         template_str="---\n{{ card_data }}\n---\n" + mine.text))
