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
    for i, image in enumerate(gt["images"]):
        if not isinstance(image, Mapping) or "id" not in image:
            raise ValueError(f"ground truth `images[{i}]` has no `id`")
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
    for i, v in enumerate(gt["videos"]):
        if not isinstance(v, Mapping) or "id" not in v:
            raise ValueError(f"ground truth `videos[{i}]` has no `id`")
        length = v.get("length", len(v.get("file_names") or []))
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"ground truth video {v['id']!r}: `length` (or `file_names`) must give a positive frame "
                             f"count, got {length!r}")
        videos[v["id"]] = {"video_id": v["id"], "num_frames": int(length), "trajectories": []}
        if "height" in v and "width" in v:
            videos[v["id"]]["height"], videos[v["id"]]["width"] = v["height"], v["width"]
    for index, track in enumerate(tracks):
        video_id = track.get("video_id")
        if video_id not in videos:
            raise ValueError(f"track {track.get('id', index)!r}: video_id {video_id!r} is not among the GT videos")
        # the per-frame boxes are `bboxes` (YouTube-VIS ground truth) or `bbox` (the released code's per-track
        # results.json): both are read, never silently none
        if track.get("bboxes") is not None and track.get("bbox") is not None:
            raise ValueError(f"track {track.get('id', index)!r} (video {video_id!r}) has both `bboxes` and `bbox`")
        boxes = track.get("bboxes") if track.get("bboxes") is not None else track.get("bbox") or []
        segmentations = track.get("segmentations") or []
        if boxes and not isinstance(boxes[0], (list, tuple, type(None))):
            raise ValueError(f"track {track.get('id', index)!r} (video {video_id!r}): per-track `bbox` / `bboxes` "
                             "must list one box (or null) per frame")
        if not boxes and not segmentations:
            raise ValueError(f"track {track.get('id', index)!r} (video {video_id!r}) has neither per-frame boxes "
                             "(`bboxes` / `bbox`) nor `segmentations`")
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


def track_results_to_coco_videos(results: Sequence[Mapping], gt: Mapping) -> list[dict]:
    """Per-track results (the released code's ``results.json``: per-frame ``bbox`` / ``segmentations`` lists over
    the video's frames) -> prediction videos aligned with :func:`coco_to_videos` of a COCO-style ground truth, frame
    ``i`` of a track being the video's ``i``-th image in the ground truth's ``images`` order, as the published
    ``convert_per_track_to_coco`` (the frame indices of the result are then by image id, as everywhere). A box's
    score is the track's ``score_per_frame`` entry when given, a mask's the track's score."""
    frames_of_video, size_of_video, position = _coco_video_index(gt)
    tracks = defaultdict(list)
    for index, result in enumerate(results):
        if not isinstance(result, Mapping) or "video_id" not in result:
            raise ValueError(f"result {index} must be a dict with a `video_id`")
        video_id = result["video_id"]
        if video_id not in frames_of_video:
            raise ValueError(f"result {index}: video_id {video_id!r} is not among the GT videos")
        if "score" not in result:
            raise ValueError(f"result {index} (video {video_id!r}) has no `score`")
        num_frames = len(frames_of_video[video_id])
        boxes = result.get("bbox") or [None] * num_frames
        segmentations = result.get("segmentations") or [None] * num_frames
        per_frame = result.get("score_per_frame")
        for name, values in (("bbox", boxes), ("segmentations", segmentations)):
            if len(values) != num_frames:
                raise ValueError(
                    f"result {index} (video {video_id!r}): `{name}` has {len(values)} frames, the video {num_frames}"
                )
        caption = result.get("caption") or ""
        frames = []
        for f in range(num_frames):
            box, segmentation = boxes[f], segmentations[f]
            if box is None and segmentation is None:
                continue
            score = per_frame[f] if per_frame is not None and segmentation is None else result["score"]
            frame_caption = caption[f] if isinstance(caption, list) and len(caption) == num_frames else caption
            if isinstance(frame_caption, list):
                frame_caption = frame_caption[0] if frame_caption else ""
            frame_index = position[frames_of_video[video_id][f]][1]  # the f-th image listed, by id
            frames.append(_frame_entry(box, segmentation, score, frame_caption) | {"frame_index": frame_index})
        frames.sort(key=lambda entry: entry["frame_index"])
        trajectory = {"track_id": len(tracks[video_id]), "score": float(result["score"]),
                      "caption": caption if isinstance(caption, str) else "", "frames": frames}
        if result.get("category_id") is not None:
            trajectory["category_id"] = result["category_id"]
        tracks[video_id].append(trajectory)
    videos = []
    for video_id, image_ids in frames_of_video.items():
        video = {"video_id": video_id, "num_frames": len(image_ids), "trajectories": tracks[video_id]}
        if video_id in size_of_video:
            video["height"], video["width"] = size_of_video[video_id]
        videos.append(video)
    return videos


def ytvis_to_videos(gt: Mapping) -> list[dict]:
    """Per-track (YouTube-VIS / LV-VIS style) ground truth -> reference videos."""
    return _track_to_videos(gt.get("annotations", []), gt, is_prediction=False)


def track_results_to_videos(results: Sequence[Mapping], gt: Mapping) -> list[dict]:
    """Per-track results (``video_id``, ``score``, per-frame ``bboxes`` / ``segmentations``, ``caption``) ->
    prediction videos aligned with :func:`ytvis_to_videos` of the same ground truth."""
    return _track_to_videos(results, gt, is_prediction=True)


def videos_to_track_results(videos: Sequence[Mapping], masks: bool | None = None) -> list[dict]:
    """Trajectory-format predictions -> the released code's per-track ``results.json`` (what its evaluation scripts
    read): one entry per trajectory with ``video_id``, ``score``, ``category_id``, ``caption`` and per-frame lists
    over all ``num_frames`` frames (``None`` where the object is absent): ``bbox`` ``[x, y, w, h]`` with
    ``score_per_frame``, and ``segmentations`` (``{"size": [h, w], "counts"}`` RLE) when the video has masks
    (``masks``: force on / off)."""
    results = []
    for video in videos:
        num_frames = int(video["num_frames"])
        with_masks = masks
        if with_masks is None:
            with_masks = any(f.get("mask_rle") for t in video["trajectories"] for f in t["frames"])
        for trajectory in video["trajectories"]:
            boxes = [None] * num_frames
            scores = [None] * num_frames
            segmentations = [None] * num_frames
            for entry in trajectory["frames"]:
                index = int(entry["frame_index"])
                boxes[index] = entry.get("box")
                scores[index] = entry.get("score", trajectory.get("score"))
                if entry.get("mask_rle") is not None:
                    segmentations[index] = {"size": [int(video["height"]), int(video["width"])],
                                            "counts": entry["mask_rle"]}
            result = {
                "video_id": video["video_id"],
                "score": trajectory.get("score"),
                "category_id": trajectory.get("category_id"),
                "caption": trajectory.get("caption") or "",
                "bbox": boxes,
                "score_per_frame": [s if s is not None else 0.0 for s in scores],
            }
            if with_masks:
                result["segmentations"] = segmentations
            results.append(result)
    return results


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
    if isinstance(data, Mapping) and "trajectories" in data:  # one video (`captionformer caption`'s output)
        return [data]
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
    gt_name = f"{os.fspath(references)}: " if isinstance(references, (str, os.PathLike)) else "references: "
    pred_name = f"{os.fspath(predictions)}: " if isinstance(predictions, (str, os.PathLike)) else "predictions: "
    native_gt = _native_videos(gt)
    if native_gt is not None:
        native_pred = _native_videos(pred)
        if native_pred is None:
            raise ValueError(f"{pred_name}the references are trajectory videos (docs/format.md), so the predictions "
                             "must be too")
        return native_pred, native_gt, "trajectories"
    if isinstance(gt, Mapping) and "images" in gt:
        native_pred = _native_videos(pred)
        if native_pred is not None:  # trajectories on the GT videos' frames (frame i = the video's i-th image)
            return native_pred, coco_to_videos(gt), "coco-frames"
        if isinstance(pred, Mapping):
            pred = pred.get("annotations", [])
        if pred and isinstance(pred[0], Mapping) and "image_id" not in pred[0]:
            return track_results_to_coco_videos(pred, gt), coco_to_videos(gt), "coco-frames, per-track results"
        return coco_predictions_to_videos(pred, gt), coco_to_videos(gt), "coco-frames"
    if isinstance(gt, Mapping) and "videos" in gt:
        if isinstance(pred, Mapping):
            pred = pred.get("annotations", [])
        return track_results_to_videos(pred, gt), ytvis_to_videos(gt), "per-track"
    raise ValueError(
        f"{gt_name}unrecognised ground-truth format: expected trajectory videos (a video or a list of them, each with "
        "`trajectories`), COCO-style `images` + `annotations`, or per-track `videos` + `annotations`"
    )
