"""The four benchmarks' evaluation protocols, as the published evaluation scripts run them (gabfstr/CaptionFormer
``scripts/eval/*.sh``, ``evaluate_chota_full.py`` and BenSMOT's ``results2smot_cap.py`` / ``eval_vu.py``).

| protocol | similarity | captions (default) | notes |
| --- | --- | --- | --- |
| ``vidstg`` | box IoU | CapA with CIDEr | |
| ``vln`` | mask IoU | CapA with CIDEr | predictions on the dense video, kept on the sparsely annotated frames |
| ``bensmot`` | box IoU | BenSMOT's caption CIDEr | HOTA without captions; each predicted track's caption is paired with the caption of the ground-truth track of highest mean box IoU over the frames where both exist; CIDEr-D over all pairs of the split |
| ``lvviscap`` | mask IoU | CapA with CIDEr | |

Every protocol keeps the predictions whose score is above 0 (thresholds are applied at inference) and uses the
single alpha 0.5. ``full_capa=True`` replaces the CIDEr-only caption score by the full CapA (CIDEr, METEOR, SPICE).

No torch or evaluate import here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .caption_scores import SUPPORTED_CAPTION_METRICS, cider_d_pair_scores
from .chota_core import compute_chota
from .hota import box_iou


@dataclass(frozen=True)
class Protocol:
    name: str
    iou_type: str
    captions: str  # "chota": CapA over matched detections; "smot": BenSMOT's track-level caption pairs
    needs_sparse_frames: bool = False


PROTOCOLS = {
    "vidstg": Protocol("vidstg", "box", "chota"),
    "vln": Protocol("vln", "mask", "chota", needs_sparse_frames=True),
    "bensmot": Protocol("bensmot", "box", "smot"),
    "lvviscap": Protocol("lvviscap", "mask", "chota"),
}
PUBLISHED_CAPTION_METRICS = ("cider",)


def sparse_frames_of(extended: Mapping) -> dict:
    """``video_id -> [dense frame index, ...]`` of the sparsely annotated frames, from VLN's extended ground truth
    (``videos`` with ``sparse_frame_indices``)."""
    if not isinstance(extended, Mapping) or not isinstance(extended.get("videos"), Sequence):
        raise ValueError("`sparse_frames` must be VLN's extended ground truth: `videos` with `sparse_frame_indices`")
    frames = {}
    for video in extended["videos"]:
        if "sparse_frame_indices" not in video:
            raise ValueError(f"`sparse_frames`: video {video.get('id')!r} has no `sparse_frame_indices`")
        frames[video["id"]] = [int(i) for i in video["sparse_frame_indices"]]
    return frames


def restrict_to_frames(videos: Sequence[Mapping], frames_of_video: Mapping) -> list[dict]:
    """Keep, per video, the detections on the listed frames, renumbered in dense frame order (the frames of the
    sparse ground truth); videos not listed are dropped. As the published script (``[a for i, a in enumerate(track)
    if i in sparse_frame_indices]``): the list's order and repeats do not matter, and listed frames past the video's
    end are not frames of it."""
    restricted = []
    for video in videos:
        if video["video_id"] not in frames_of_video:
            continue
        listed = sorted({int(i) for i in frames_of_video[video["video_id"]] if 0 <= int(i) < int(video["num_frames"])})
        position = {dense: i for i, dense in enumerate(listed)}
        trajectories = []
        for trajectory in video["trajectories"]:
            frames = [dict(entry, frame_index=position[entry["frame_index"]])
                      for entry in trajectory["frames"] if entry["frame_index"] in position]
            trajectories.append({**trajectory, "frames": frames})
        restricted.append({**video, "num_frames": len(position), "trajectories": trajectories})
    return restricted


def check_references(references: Sequence[Mapping], protocol: Protocol) -> None:
    """The annotations the protocol needs: boxes or masks on every ground-truth detection, and captions."""
    key = "mask_rle" if protocol.iou_type == "mask" else "box"
    kind = "masks (`mask_rle` / `segmentation`)" if key == "mask_rle" else "boxes"
    any_caption = False
    for video in references:
        for trajectory in video["trajectories"]:
            any_caption = any_caption or bool(trajectory.get("caption")) or any(
                f.get("caption") for f in trajectory["frames"])
            for entry in trajectory["frames"]:
                if entry.get(key) is None:
                    raise ValueError(
                        f"protocol {protocol.name!r} needs ground-truth {kind}: video {video['video_id']!r}, track "
                        f"{trajectory.get('track_id')!r}, frame {entry.get('frame_index')!r} has none"
                    )
    if not any_caption:
        raise ValueError(f"protocol {protocol.name!r} scores captions, but the ground truth has none")


def smot_caption_pairs(predictions: Sequence[Mapping], references: Sequence[Mapping]) -> tuple[list, list]:
    """BenSMOT's pairing: each predicted track of a video takes the caption of the ground-truth track with the
    highest mean box IoU over the frames where both have a box (0 where none; ties and all-zero: the first)."""
    refs_by_id = {video["video_id"]: video for video in references}
    gt_captions, pred_captions = [], []
    for video in predictions:
        reference = refs_by_id.get(video["video_id"])
        if reference is None or not reference["trajectories"]:
            continue
        gt_tracks = [{f["frame_index"]: f["box"] for f in t["frames"]} for t in reference["trajectories"]]
        for trajectory in video["trajectories"]:
            boxes = {f["frame_index"]: f["box"] for f in trajectory["frames"] if f.get("box") is not None}
            means = []
            for gt in gt_tracks:
                common = sorted(set(gt) & set(boxes))
                if not common:
                    means.append(0.0)
                    continue
                ious = [box_iou(np.array([boxes[f]]), np.array([gt[f]]))[0, 0] for f in common]
                means.append(float(np.mean(ious)))
            best = int(np.argmax(means))
            pred_captions.append(_track_caption(trajectory))
            gt_captions.append(_track_caption(reference["trajectories"][best]))
    return gt_captions, pred_captions


def _track_caption(trajectory: Mapping) -> str:
    """A track's caption: its own, else its first frame-level one (COCO-style ground truth stores it per frame)."""
    if trajectory.get("caption"):
        return trajectory["caption"]
    return next((f["caption"] for f in trajectory["frames"] if f.get("caption")), "")


def evaluate_protocol(
    name: str,
    predictions: Sequence[Mapping],
    references: Sequence[Mapping],
    *,
    full_capa: bool = False,
    sparse_frames: Mapping | None = None,
) -> dict:
    """Score ``predictions`` against ``references`` (videos of the trajectory format) as benchmark ``name``'s
    published protocol does. ``sparse_frames``: VLN's extended ground truth (or ``video_id -> frames``) when the
    predictions cover the dense videos. Returns the CHOTA result dict (``compute_chota``) with ``protocol``; for
    BenSMOT, the fields it defines (HOTA and its parts, ``SMOT_CIDEr`` and ``SMOT_pairs``; CHOTA and CapA only with
    ``full_capa``)."""
    if name not in PROTOCOLS:
        raise ValueError(f"`protocol` must be one of {sorted(PROTOCOLS)}, got {name!r}")
    protocol = PROTOCOLS[name]
    check_references(references, protocol)
    if sparse_frames is not None:
        frames = sparse_frames if "videos" not in sparse_frames else sparse_frames_of(sparse_frames)
        predictions = restrict_to_frames(predictions, frames)
    elif protocol.needs_sparse_frames:
        refs = {v["video_id"]: v["num_frames"] for v in references}
        dense = [v["video_id"] for v in predictions if v.get("num_frames") != refs.get(v["video_id"])]
        if dense:
            raise ValueError(
                f"protocol {name!r}: predictions of {dense[:3]} cover more frames than the sparse ground truth; "
                "pass VLN's extended ground truth (`sparse_frames`, --sparse-frames) to keep the annotated frames"
            )
    metrics = SUPPORTED_CAPTION_METRICS if full_capa else PUBLISHED_CAPTION_METRICS
    if protocol.captions == "smot":
        result = compute_chota(predictions, references, iou_type=protocol.iou_type, caption_metrics=(),
                               score_threshold=0.0)
        gt_captions, pred_captions = smot_caption_pairs(predictions, references)
        scores = cider_d_pair_scores(gt_captions, pred_captions) if gt_captions else np.zeros(0)
        result["SMOT_CIDEr"] = float(scores.mean()) if len(scores) else 0.0
        result["SMOT_pairs"] = len(scores)
        if full_capa:
            capa = compute_chota(predictions, references, iou_type=protocol.iou_type, caption_metrics=metrics,
                                 score_threshold=0.0)
            for key in ("CHOTA", "CapA", *(f"CapA_{m}" for m in metrics)):
                result[key] = capa[key]
        else:  # BenSMOT defines HOTA and its own caption CIDEr, no CHOTA: the CapA-less CHOTA is not reported
            undefined = ("CHOTA", "CapA", "TP_with_caps")
            for key in undefined:
                result.pop(key, None)
            for table in [result.get("per_alpha", {}), *result.get("per_video", {}).values()]:
                for key in undefined:
                    table.pop(key, None)
    else:
        result = compute_chota(predictions, references, iou_type=protocol.iou_type, caption_metrics=metrics,
                               score_threshold=0.0)
    result["protocol"] = name
    return result


__all__ = ["PROTOCOLS", "Protocol", "evaluate_protocol", "restrict_to_frames", "smot_caption_pairs", "sparse_frames_of"]
