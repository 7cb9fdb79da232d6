"""Converters from the official DVOC annotation / result formats into the video format of :func:`compute_chota`.

- COCO-style per-frame JSON (VidSTG / VLN / BenSMOT evaluation, scenic densevoc): ``images`` with ``video_id``
  (frame order = image id order within the video, as the published evaluator), ``annotations`` / predictions with
  ``image_id``, ``bbox`` ``[x, y, w, h]``, ``track_id``, ``caption``, optional ``segmentation`` and ``score``.
- Per-track JSON (YouTube-VIS / LV-VIS style): ``videos`` with ``length``, annotations / results with
  ``video_id``, per-frame ``bboxes`` and/or ``segmentations`` lists (``None`` where absent), ``caption`` and ``score``.

No torch or evaluate import here.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence


def _frame_entry(box=None, segmentation=None, score=None, caption=None) -> dict:
    entry = {}
    if box is not None:
        entry["box"] = [float(v) for v in box]
    if segmentation is not None:
        entry["mask_rle"] = segmentation
    if score is not None:
        entry["score"] = float(score)
    if caption is not None:
        entry["caption"] = caption
    return entry


def _coco_video_index(gt: Mapping):
    if not isinstance(gt, Mapping) or "images" not in gt:
        raise ValueError("a COCO-style ground truth needs `images` (with `video_id`) and `annotations`")
    frames_of_video = defaultdict(list)
    size_of_video = {}
    for image in gt["images"]:
        if "video_id" not in image:
            raise ValueError(f"image {image.get('id')!r} has no `video_id`")
        frames_of_video[image["video_id"]].append(image["id"])
        if "height" in image and "width" in image:
            size_of_video[image["video_id"]] = (image["height"], image["width"])
    position = {}
    for video_id, image_ids in frames_of_video.items():
        for index, image_id in enumerate(sorted(image_ids)):
            position[image_id] = (video_id, index)
    return frames_of_video, size_of_video, position


def _coco_to_videos(detections: Sequence[Mapping], gt: Mapping, is_prediction: bool) -> list[dict]:
    frames_of_video, size_of_video, position = _coco_video_index(gt)
    tracks = defaultdict(dict)  # video_id -> track_id -> trajectory
    for det in detections:
        image_id = det.get("image_id")
        if image_id not in position:
            raise ValueError(f"annotation {det.get('id', '?')!r}: image_id {image_id!r} is not among the GT images")
        if "track_id" not in det:
            raise ValueError(f"annotation {det.get('id', '?')!r} has no `track_id`")
        video_id, frame_index = position[image_id]
        trajectory = tracks[video_id].setdefault(
            det["track_id"], {"track_id": det["track_id"], "caption": "", "frames": []}
        )
        if det.get("category_id") is not None:
            trajectory.setdefault("category_id", det["category_id"])
        trajectory["frames"].append(
            _frame_entry(
                det.get("bbox"),
                det.get("segmentation"),
                det.get("score") if is_prediction else None,
                det.get("caption") or "",
            )
            | {"frame_index": frame_index}
        )
    videos = []
    for video_id, image_ids in frames_of_video.items():
        video = {"video_id": video_id, "num_frames": len(image_ids), "trajectories": list(tracks[video_id].values())}
        if video_id in size_of_video:
            video["height"], video["width"] = size_of_video[video_id]
        videos.append(video)
    return videos


def coco_to_videos(gt: Mapping) -> list[dict]:
    """COCO-style per-frame ground truth -> reference videos (a caption per frame is kept per frame)."""
    return _coco_to_videos(gt.get("annotations", []), gt, is_prediction=False)


def coco_predictions_to_videos(predictions: Sequence[Mapping], gt: Mapping) -> list[dict]:
    """COCO-style per-frame predictions (``image_id``, ``bbox``, ``track_id``, ``caption``, ``score``) -> prediction
    videos aligned with :func:`coco_to_videos` of the same ground truth (every GT video is present)."""
    return _coco_to_videos(predictions, gt, is_prediction=True)


def _track_to_videos(tracks: Sequence[Mapping], gt: Mapping, is_prediction: bool) -> list[dict]:
    if not isinstance(gt, Mapping) or "videos" not in gt:
        raise ValueError("a per-track ground truth needs `videos` (with `length`) and `annotations`")
    videos = {}
    for v in gt["videos"]:
        length = v.get("length", len(v.get("file_names", [])))
        videos[v["id"]] = {"video_id": v["id"], "num_frames": int(length), "trajectories": []}
        if "height" in v and "width" in v:
            videos[v["id"]]["height"], videos[v["id"]]["width"] = v["height"], v["width"]
    for index, track in enumerate(tracks):
        video_id = track.get("video_id")
        if video_id not in videos:
            raise ValueError(f"track {track.get('id', index)!r}: video_id {video_id!r} is not among the GT videos")
        boxes = track.get("bboxes") or []
        segmentations = track.get("segmentations") or []
        length = max(len(boxes), len(segmentations))
        frames = []
        for f in range(length):
            box = boxes[f] if f < len(boxes) else None
            segmentation = segmentations[f] if f < len(segmentations) else None
            if box is None and segmentation is None:
                continue
            frames.append(_frame_entry(box, segmentation) | {"frame_index": f})
        trajectory = {
            "track_id": track.get("id", index),
            "caption": track.get("caption") or "",
            "frames": frames,
        }
        if track.get("category_id") is not None:
            trajectory["category_id"] = track["category_id"]
        if is_prediction:
            if "score" not in track:
                raise ValueError(f"result {index} (video {video_id!r}) has no `score`")
            trajectory["score"] = float(track["score"])
        videos[video_id]["trajectories"].append(trajectory)
    return list(videos.values())


def ytvis_to_videos(gt: Mapping) -> list[dict]:
    """Per-track (YouTube-VIS / LV-VIS style) ground truth -> reference videos."""
    return _track_to_videos(gt.get("annotations", []), gt, is_prediction=False)


def track_results_to_videos(results: Sequence[Mapping], gt: Mapping) -> list[dict]:
    """Per-track results (``video_id``, ``score``, per-frame ``bboxes`` / ``segmentations``, ``caption``) ->
    prediction videos aligned with :func:`ytvis_to_videos` of the same ground truth."""
    return _track_to_videos(results, gt, is_prediction=True)


def _load(path_or_data):
    if isinstance(path_or_data, (str, os.PathLike)):
        if not os.path.exists(path_or_data):
            raise ValueError(f"file not found: {path_or_data}")
        with open(path_or_data, encoding="utf-8") as f:
            try:
                return json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path_or_data} is not valid JSON: {error}") from error
    return path_or_data


def _native_videos(data):
    if isinstance(data, Mapping) and "videos" in data and data["videos"] and "trajectories" in data["videos"][0]:
        return data["videos"]
    if isinstance(data, Sequence) and (not data or (isinstance(data[0], Mapping) and "trajectories" in data[0])):
        return list(data)
    return None


def load_videos(predictions, references) -> tuple[list[dict], list[dict], str]:
    """Load a (predictions, references) pair of paths or parsed JSON in any supported format and return
    ``(prediction videos, reference videos, format name)``; the format is detected from the ground truth."""
    gt = _load(references)
    pred = _load(predictions)
    native_gt = _native_videos(gt)
    if native_gt is not None:
        native_pred = _native_videos(pred)
        if native_pred is None:
            raise ValueError("references are in the trajectory format, so predictions must be too")
        return native_pred, native_gt, "trajectories"
    if isinstance(gt, Mapping) and "images" in gt:
        if isinstance(pred, Mapping):
            pred = pred.get("annotations", [])
        return coco_predictions_to_videos(pred, gt), coco_to_videos(gt), "coco-frames"
    if isinstance(gt, Mapping) and "videos" in gt:
        if isinstance(pred, Mapping):
            pred = pred.get("annotations", [])
        return track_results_to_videos(pred, gt), ytvis_to_videos(gt), "per-track"
    raise ValueError(
        "unrecognised ground-truth format: expected trajectory videos, COCO-style `images` + `annotations`, or "
        "per-track `videos` + `annotations`"
    )
