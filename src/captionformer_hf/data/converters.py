"""Converters from the official annotation formats into DVOC `datasets` (schema in :mod:`.schema`).

- LV-VISCap (``lvvis``): YouTube-VIS / LV-VIS video JSON (``videos`` with ``file_names``; ``annotations``
  with per-frame ``segmentations`` / ``bboxes`` and a per-track ``caption``) + frame folders.
- LVISCap (``lvis``): LVIS / COCO image JSON with a per-annotation ``caption``; each image is a 1-frame video.
- VidSTG / VLN / BenSMOT evaluation sets (``vidstg``, ``vln``, ``bensmot``): COCO-style per-frame JSON
  (``images`` with ``video_id``; ``annotations`` with ``bbox``, ``track_id``, ``caption``).

Frames are stored as image bytes (self-contained parquet). Input is validated: a missing file, a bad RLE or a frame
out of range raises a ``ValueError`` naming the annotation id.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict

import datasets

from .schema import check_rle, dvoc_features, validate_example


def read_json(path: str) -> dict:
    if not os.path.exists(path):
        raise ValueError(f"annotation file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error


def image_entry(root: str, file_name: str, where: str, embed: bool = True, size: tuple[int, int] | None = None) -> dict:
    """A frame file of the dataset: ``file_name`` must be a relative path inside ``root`` (no ``..``, no absolute
    path, no link out of it) naming an image file PIL can read, of ``size`` ``(height, width)`` when given (the size
    the annotations declare: masks and boxes are in its pixels)."""
    if not isinstance(file_name, str) or not file_name:
        raise ValueError(f"{where}: a frame file name must be a non-empty string, got {file_name!r}")
    if os.path.isabs(file_name) or ".." in file_name.replace("\\", "/").split("/"):
        raise ValueError(f"{where}: frame file name {file_name!r} leaves the frames folder (absolute or '..')")
    path = os.path.join(root, file_name)
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
        raise ValueError(f"{where}: frame file {file_name!r} is a link out of the frames folder")
    if not os.path.isfile(path):
        raise ValueError(f"{where}: frame file not found: {path}")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
            actual = (image.height, image.width)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{where}: frame file {path} is not an image ({error})") from error
    if size is not None and actual != tuple(size):
        raise ValueError(f"{where}: frame file {file_name!r} is {actual[1]}x{actual[0]} but the annotations declare "
                         f"{size[1]}x{size[0]}")
    if embed:
        with open(path, "rb") as f:
            return {"bytes": f.read(), "path": file_name}
    return {"bytes": None, "path": os.path.abspath(path)}


def field(record, key: str, where: str, kind=int):
    """``record[key]`` converted by ``kind``, or a ``ValueError`` naming the record and the key."""
    if not isinstance(record, dict) or record.get(key) is None:
        raise ValueError(f"{where}: missing `{key}`")
    try:
        return kind(record[key])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: `{key}` must be {getattr(kind, '__name__', kind)}, got {record[key]!r}") from error


def rle_string(segmentation, height: int, width: int, where: str) -> str | None:
    """COCO compressed RLE string of a segmentation (compressed or uncompressed RLE, or polygons)."""
    from pycocotools import mask as mask_utils

    if segmentation is None or segmentation == []:
        return None
    try:
        if isinstance(segmentation, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(segmentation, dict):
            rle = {"size": segmentation["size"], "counts": segmentation["counts"]}
        else:
            raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{where}: bad segmentation ({error})") from error
    except Exception as error:  # pycocotools raises bare Exceptions
        raise ValueError(f"{where}: bad segmentation ({error})") from error
    counts = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
    if list(rle.get("size", [height, width])) != [height, width]:
        raise ValueError(f"{where}: mask size {rle.get('size')} differs from the frame size {[height, width]}")
    check_rle(counts, height, width, where)
    return counts


def box_from_rle(counts: str, height: int, width: int) -> list[float]:
    from ..processing.trajectory_captionformer import rle_to_box

    return rle_to_box(counts, height, width)


def category_index(categories: list[dict]) -> tuple[dict[int, int], dict[int, str]]:
    """Official category ids -> contiguous 0..C-1 (sorted by id), and their names."""
    ids = sorted(c["id"] for c in categories)
    names = {c["id"]: c.get("name", str(c["id"])) for c in categories}
    return {cid: i for i, cid in enumerate(ids)}, names


def to_dataset(examples: list[dict], video_as: str = "frames") -> datasets.Dataset:
    for example in examples:
        validate_example(example)
    return datasets.Dataset.from_list(examples, features=dvoc_features(video_as))


# ------------------------------------------------------------------------------------------------ LV-VISCap
def convert_ytvis(annotation_file: str, frames_root: str, embed: bool = True) -> datasets.Dataset:
    """LV-VISCap / YouTube-VIS style video JSON + frame folders -> dataset (one example per video)."""
    data = read_json(annotation_file)
    for key in ("videos", "annotations"):
        if key not in data:
            raise ValueError(f"{annotation_file}: missing `{key}` (expected a YouTube-VIS / LV-VIS style video JSON)")
    index, names = category_index(data.get("categories", []))
    tracks = defaultdict(list)
    for annotation in data["annotations"]:
        tracks[annotation.get("video_id")].append(annotation)
    examples = []
    for i, video in enumerate(data["videos"]):
        field(video, "id", f"{annotation_file}: videos[{i}]", kind=lambda v: v)
    known = {v["id"] for v in data["videos"]}
    for annotation in data["annotations"]:
        if annotation.get("video_id") not in known:
            raise ValueError(f"annotation {annotation.get('id')!r}: video_id {annotation.get('video_id')!r} not in `videos`")
    for video in data["videos"]:
        file_names = video.get("file_names") or []
        if not file_names:
            raise ValueError(f"video {video.get('id')!r}: no `file_names`")
        where_video = f"video {video['id']!r}"
        height, width = field(video, "height", where_video), field(video, "width", where_video)
        frames = [image_entry(frames_root, name, where_video, embed, size=(height, width)) for name in file_names]
        example_tracks = []
        for annotation in tracks[video["id"]]:
            where = f"annotation {annotation.get('id')!r}"
            segmentations = annotation.get("segmentations") or []
            boxes = annotation.get("bboxes") or []
            length = max(len(segmentations), len(boxes))
            if length > len(file_names):
                raise ValueError(f"{where}: {length} frames annotated but video {video['id']!r} has {len(file_names)}")
            entries = []
            for f in range(length):
                segmentation = segmentations[f] if f < len(segmentations) else None
                box = boxes[f] if f < len(boxes) else None
                rle = rle_string(segmentation, height, width, f"{where}, frame {f}")
                if rle is None and box is None:
                    continue
                if box is None:
                    box = box_from_rle(rle, height, width)
                entries.append({"frame_index": f, "box": [float(v) for v in box], "mask_rle": rle})
            category = annotation.get("category_id")
            if category is not None and index and category not in index:
                raise ValueError(f"{where}: category_id {category!r} not in `categories`")
            example_tracks.append({
                "track_id": int(annotation.get("id", len(example_tracks))),
                "category": names.get(category) if category is not None else None,
                "category_id": index.get(category, category) if category is not None else None,
                "caption": annotation.get("caption") or "",
                "frames": entries,
            })
        examples.append({
            "video": frames, "video_id": str(video["id"]), "fps": float(video.get("fps", 0) or 0),
            "height": height, "width": width, "num_frames": len(file_names), "trajectories": example_tracks,
        })
    return to_dataset(examples)


# -------------------------------------------------------------------------------------------------- LVISCap
def convert_lvis(annotation_file: str, images_root: str, embed: bool = True) -> datasets.Dataset:
    """LVISCap / COCO style image JSON + image folder -> dataset of 1-frame videos."""
    data = read_json(annotation_file)
    for key in ("images", "annotations"):
        if key not in data:
            raise ValueError(f"{annotation_file}: missing `{key}` (expected an LVIS / COCO style JSON)")
    index, names = category_index(data.get("categories", []))
    by_image = defaultdict(list)
    images = {field(image, "id", f"{annotation_file}: images[{i}]", kind=lambda v: v): image
              for i, image in enumerate(data["images"])}
    for annotation in data["annotations"]:
        if annotation.get("image_id") not in images:
            raise ValueError(f"annotation {annotation.get('id')!r}: image_id {annotation.get('image_id')!r} not in `images`")
        by_image[annotation["image_id"]].append(annotation)
    examples = []
    for image_id, image in images.items():
        height, width = field(image, "height", f"image {image_id!r}"), field(image, "width", f"image {image_id!r}")
        file_name = image.get("file_name") or os.path.basename(image.get("coco_url", ""))
        frame = image_entry(images_root, file_name, f"image {image_id!r}", embed, size=(height, width))
        example_tracks = []
        for annotation in by_image[image_id]:
            where = f"annotation {annotation.get('id')!r}"
            rle = rle_string(annotation.get("segmentation"), height, width, where)
            box = annotation.get("bbox") or (box_from_rle(rle, height, width) if rle else None)
            if box is None:
                raise ValueError(f"{where}: neither bbox nor segmentation")
            category = annotation.get("category_id")
            example_tracks.append({
                "track_id": int(annotation.get("id", len(example_tracks))),
                "category": names.get(category),
                "category_id": index.get(category, category),
                "caption": annotation.get("caption") or "",
                "frames": [{"frame_index": 0, "box": [float(v) for v in box], "mask_rle": rle}],
            })
        examples.append({"video": [frame], "video_id": str(image_id), "fps": 0.0, "height": height, "width": width,
                          "num_frames": 1, "trajectories": example_tracks})
    return to_dataset(examples)


# ----------------------------------------------------------------------------------- COCO per-frame videos
def convert_coco_frames(annotation_file: str, frames_root: str, embed: bool = True) -> datasets.Dataset:
    """COCO-style per-frame video JSON (VidSTG / VLN / BenSMOT evaluation format) + frames -> dataset. Frame order
    is the image id order within a video (as the published CHOTA evaluator); a track's caption is its most
    frequent non-empty per-frame caption."""
    data = read_json(annotation_file)
    for key in ("images", "annotations"):
        if key not in data:
            raise ValueError(f"{annotation_file}: missing `{key}` (expected COCO-style per-frame video JSON)")
    index, names = category_index(data.get("categories", []))
    videos = defaultdict(list)
    for i, image in enumerate(data["images"]):
        field(image, "id", f"{annotation_file}: images[{i}]", kind=lambda v: v)
        if "video_id" not in image:
            raise ValueError(f"image {image.get('id')!r}: no `video_id`")
        videos[image["video_id"]].append(image)
    position = {}
    for video_id, frames in videos.items():
        frames.sort(key=lambda image: image["id"])
        for f, image in enumerate(frames):
            position[image["id"]] = (video_id, f)
    tracks = defaultdict(lambda: defaultdict(list))
    for annotation in data["annotations"]:
        where = f"annotation {annotation.get('id')!r}"
        if annotation.get("image_id") not in position:
            raise ValueError(f"{where}: image_id {annotation.get('image_id')!r} not in `images`")
        if "track_id" not in annotation:
            raise ValueError(f"{where}: no `track_id`")
        video_id, _ = position[annotation["image_id"]]
        tracks[video_id][annotation["track_id"]].append(annotation)
    examples = []
    for video_id, frames in videos.items():
        height = field(frames[0], "height", f"image {frames[0].get('id')!r}")
        width = field(frames[0], "width", f"image {frames[0].get('id')!r}")
        images = [image_entry(frames_root, field(image, "file_name", f"image {image['id']!r}", kind=str),
                              f"video {video_id!r}", embed) for image in frames]
        example_tracks = []
        for track_id, annotations in tracks[video_id].items():
            entries, captions, categories = [], Counter(), Counter()
            for annotation in sorted(annotations, key=lambda a: position[a["image_id"]][1]):
                where = f"annotation {annotation.get('id')!r}"
                f = position[annotation["image_id"]][1]
                if any(e["frame_index"] == f for e in entries):
                    raise ValueError(f"{where}: track {track_id!r} has two annotations in frame {f}")
                rle = rle_string(annotation.get("segmentation"), height, width, where)
                box = annotation.get("bbox") or (box_from_rle(rle, height, width) if rle else None)
                if box is None:
                    raise ValueError(f"{where}: neither bbox nor segmentation")
                entries.append({"frame_index": f, "box": [float(v) for v in box], "mask_rle": rle})
                if annotation.get("caption"):
                    captions[annotation["caption"]] += 1
                if annotation.get("category_id") is not None:
                    categories[annotation["category_id"]] += 1
            category = categories.most_common(1)[0][0] if categories else None
            example_tracks.append({
                "track_id": int(track_id),
                "category": names.get(category) if category is not None else None,
                "category_id": index.get(category, category) if category is not None else None,
                "caption": captions.most_common(1)[0][0] if captions else "",
                "frames": entries,
            })
        examples.append({"video": images, "video_id": str(video_id), "fps": float(frames[0].get("fps", 0) or 0),
                         "height": height, "width": width, "num_frames": len(frames), "trajectories": example_tracks})
    return to_dataset(examples)


FORMATS = {
    "lvvis": ("LV-VISCap", convert_ytvis),
    "ytvis": ("YouTube-VIS style video captions", convert_ytvis),
    "lvis": ("LVISCap", convert_lvis),
    "vidstg": ("VidSTG (DVOC evaluation)", convert_coco_frames),
    "vln": ("VLN (DVOC evaluation)", convert_coco_frames),
    "bensmot": ("BenSMOT (DVOC evaluation)", convert_coco_frames),
}


def convert(format: str, splits: dict[str, tuple[str, str]], out: str | None = None, embed: bool = True,
            max_shard_size: int = 500) -> datasets.DatasetDict:
    """Convert ``splits`` (split name -> (annotation JSON, frames/images folder)) of an official format into a
    ``DatasetDict``; with ``out``, write sharded parquet and a dataset card there (atomically)."""
    from ..utils import check_new_directory
    from .schema import check_shard_size, check_split_name, dataset_card, write_parquet_shards

    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {sorted(FORMATS)}, got {format!r}")
    for split in splits:
        check_split_name(split)
    if out is not None:  # before reading any frame
        check_new_directory(out, "out")
        check_shard_size(max_shard_size)
    name, function = FORMATS[format]
    result = datasets.DatasetDict({split: function(ann, root, embed) for split, (ann, root) in splits.items()})
    if out is not None:
        card = dataset_card(
            name,
            f"{name} converted to the captionformer_hf DVOC schema from the official annotation format.",
            {split: len(ds) for split, ds in result.items()},
            next(iter(result.values())).features,
        )
        write_parquet_shards(result, out, max_shard_size=max_shard_size, card=card)
    return result
