"""Video instance segmentation mAP as LV-VIS evaluates it (the YouTube-VIS adaptation of COCO's evaluation that the
release's ``evaluate/lvviseval.py`` runs): one spatio-temporal mask IoU per (prediction, ground truth) pair, COCO's
greedy matching by score at the IoU thresholds 0.50:0.05:0.95, 101-point interpolated precision per category, areas
ranked by a track's mean area over its frames.

Written from the algorithm's description (no code of the release or of pycocotools' ``COCOeval`` is copied); on
single-frame videos it equals ``COCOeval`` with the same area ranges (``tests/test_vis_map.py``).

Definitions, on videos of the trajectory format (``docs/format.md``; masks as ``mask_rle``):

* IoU of a predicted and a ground-truth trajectory: the sum over frames of their masks' intersection areas over the
  sum over frames of their unions (a frame where only one of them has a mask adds its area to the union).
* A trajectory's area: the mean of its frames' non-zero mask areas (0 without any); it ranks the trajectory into
  ``small`` (< 128²), ``medium`` (< 256²) or ``large``. Ground truth outside the range is ignored, as are unmatched
  predictions outside it.
* Per video and category, predictions in decreasing score (stable order) are matched greedily to the unmatched ground
  truth of highest IoU >= the threshold (non-ignored ground truth first); ``iscrowd`` ground truth can take several
  predictions (and, unlike COCO's evaluation, counts as ground truth, as in LV-VIS's).
* Per category, precision at the 101 recall levels 0:0.01:1 of the interpolated (monotone) precision-recall curve
  over all videos; AP is the mean over IoU thresholds, recall levels and categories with ground truth; AR the mean
  of the final recall (``max_detections`` predictions per video and category).
* ``APb`` / ``APn``: the same mean over LV-VIS's base (``partition`` 0 or 1) and novel (2 or 3) categories.

No torch import here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from ..processing.trajectory_captionformer import check_video
from .chota_core import coco_rle

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = (1, 10, 100)
AREA_RANGES = {"all": (0.0, 1e10), "small": (0.0, 128.0**2), "medium": (128.0**2, 256.0**2), "large": (256.0**2, 1e10)}


def _mask_utils():
    try:
        from pycocotools import mask
    except ImportError as error:  # pragma: no cover - pycocotools is a dependency of the metrics extra
        raise ImportError("the VIS mAP needs pycocotools (pip install pycocotools)") from error
    return mask


def _trajectories(video: Mapping, side: str, scored: bool) -> list[dict]:
    """The trajectories of one video, checked by the format's validator (a mask of the video's size on every frame;
    a ``category_id`` on each, and a ``score`` on each prediction), with per-frame RLEs (``None`` where absent),
    per-frame areas and the mean area."""
    mask_utils = _mask_utils()
    video_where = f"video {video.get('video_id')!r}, {side}" if isinstance(video, Mapping) else side
    num_frames, checked = check_video(video, video_where, require_masks=True)
    size = (video.get("height"), video.get("width"))
    if None in size:
        raise ValueError(f"{video_where}: the VIS mAP needs the video's `height` and `width`")
    out = []
    for trajectory in checked:
        where = f"{video_where}, track_id {trajectory.track_id!r}"
        fields = video["trajectories"][trajectory.index]
        category_id = fields.get("category_id")
        if isinstance(category_id, bool) or not isinstance(category_id, (int, np.integer)):
            raise ValueError(f"{where}: the VIS mAP needs an integer `category_id`, got {category_id!r}")
        if scored and fields.get("score") is None:
            raise ValueError(f"{where}: a prediction needs a `score`")
        rles: list = [None] * num_frames
        areas = []
        for frame, (counts, mask_size) in zip(trajectory.frame_indices.tolist(), trajectory.masks):
            if mask_size != size:
                raise ValueError(f"{where}, frame {frame}: a {mask_size[0]}x{mask_size[1]} mask in a "
                                 f"{size[0]}x{size[1]} video")
            rles[frame] = coco_rle(counts, mask_size)
            areas.append(int(mask_utils.area(rles[frame])))
        nonzero = [a for a in areas if a]
        out.append({
            "category_id": int(category_id),
            "score": float(fields["score"]) if scored else None,
            "iscrowd": bool(fields.get("iscrowd", False)),
            "rles": rles,
            "area": float(np.mean(nonzero)) if nonzero else 0.0,
        })
    return out


def spatio_temporal_iou(predicted: Sequence, reference: Sequence) -> float:
    """IoU of two trajectories given as per-frame RLE lists (``None`` where absent): summed intersections over summed
    unions (0 when both are empty)."""
    mask_utils = _mask_utils()
    intersection = union = 0.0
    for p, r in zip(predicted, reference):
        if p is not None and r is not None:
            intersection += float(mask_utils.area(mask_utils.merge([p, r], intersect=True)))
            union += float(mask_utils.area(mask_utils.merge([p, r], intersect=False)))
        elif p is not None:
            union += float(mask_utils.area(p))
        elif r is not None:
            union += float(mask_utils.area(r))
    return intersection / union if union > 0 else 0.0


def _match(dts: list[dict], gts: list[dict], ious: np.ndarray, area: tuple[float, float]):
    """Greedy matching of one video and category in one area range at every IoU threshold: ``(matched (T, D) bool,
    ignored (T, D) bool, gt_ignored (G,) bool)`` with the predictions in decreasing score."""
    # ignored: outside the area range only (LV-VIS's evaluation does not ignore crowd ground truth, as COCO's does)
    gt_ignored = np.array([not area[0] <= g["area"] <= area[1] for g in gts], dtype=bool)
    order = np.argsort(gt_ignored, kind="stable")  # non-ignored ground truth first
    gt_ignored = gt_ignored[order]
    crowd = np.array([gts[i]["iscrowd"] for i in order], dtype=bool)
    ious = ious[:, order] if ious.size else ious
    num_t, num_d, num_g = len(IOU_THRESHOLDS), len(dts), len(gts)
    matched = np.zeros((num_t, num_d), dtype=bool)
    ignored = np.zeros((num_t, num_d), dtype=bool)
    for t, threshold in enumerate(IOU_THRESHOLDS):
        taken = np.zeros(num_g, dtype=bool)
        for d in range(num_d):
            best, best_iou = -1, min(threshold, 1 - 1e-10)
            for g in range(num_g):
                if taken[g] and not crowd[g]:
                    continue
                if best > -1 and not gt_ignored[best] and gt_ignored[g]:
                    break  # a match on real ground truth is never traded for an ignored one
                if ious[d, g] < best_iou:
                    continue
                best, best_iou = g, ious[d, g]
            if best == -1:
                continue
            matched[t, d] = True
            ignored[t, d] = gt_ignored[best]
            taken[best] = True
    outside = np.array([not area[0] <= d["area"] <= area[1] for d in dts], dtype=bool)
    ignored |= ~matched & outside[None, :]
    return matched, ignored, gt_ignored


def _precision_recall(scores: np.ndarray, matched: np.ndarray, ignored: np.ndarray, num_gt: int):
    """``(precision (T, R), recall (T,))`` of one category from its predictions over all videos."""
    order = np.argsort(-scores, kind="mergesort")
    matched, ignored = matched[:, order], ignored[:, order]
    true_positives = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
    false_positives = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
    precision = np.zeros((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)))
    recall = np.zeros(len(IOU_THRESHOLDS))
    for t in range(len(IOU_THRESHOLDS)):
        tp, fp = true_positives[t], false_positives[t]
        if len(tp) == 0:
            continue
        rc = tp / num_gt
        pr = tp / (tp + fp + np.spacing(1))
        recall[t] = rc[-1]
        pr = np.maximum.accumulate(pr[::-1])[::-1]  # the interpolated (monotone) precision
        positions = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
        valid = positions < len(pr)
        precision[t, valid] = pr[positions[valid]]
    return precision, recall


def video_instance_map(predictions: Sequence[Mapping], references: Sequence[Mapping],
                       categories: Sequence[Mapping] | None = None) -> dict:
    """LV-VIS's VIS metrics of ``predictions`` against ``references`` (videos of the trajectory format with masks;
    predictions with ``score`` and ``category_id``): ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``,
    ``AR1``, ``AR10``, ``AR100``, ``ARs``, ``ARm``, ``ARl`` and, with ``categories`` (LV-VIS's ``categories``:
    ``id`` and ``partition``), ``APb`` / ``APn`` over the base / novel ones. A value is -1 when no category has
    ground truth for it (as the release prints)."""
    refs_by_id = {video["video_id"]: video for video in references}
    preds_by_id = {video["video_id"]: video for video in predictions}
    unknown = sorted(set(preds_by_id) - set(refs_by_id), key=str)
    if unknown:
        raise ValueError(f"`predictions` has videos that `references` lacks: {unknown[:5]}")
    # per category: scores, matches and ignore flags of every prediction (per area range and max detections)
    per_category: dict = defaultdict(lambda: defaultdict(lambda: {"scores": [], "matched": [], "ignored": [], "gt": 0}))
    category_ids = set()
    for video_id, reference in refs_by_id.items():
        gts = _trajectories(reference, "reference", scored=False)
        dts = _trajectories(preds_by_id[video_id], "prediction", scored=True) if video_id in preds_by_id else []
        for category in {g["category_id"] for g in gts} | {d["category_id"] for d in dts}:
            category_ids.add(category)
            cat_gts = [g for g in gts if g["category_id"] == category]
            cat_dts = [d for d in dts if d["category_id"] == category]
            cat_dts = [cat_dts[i] for i in np.argsort([-d["score"] for d in cat_dts], kind="mergesort")]
            cat_dts = cat_dts[: MAX_DETECTIONS[-1]]
            ious = np.array([[spatio_temporal_iou(d["rles"], g["rles"]) for g in cat_gts] for d in cat_dts])
            ious = ious.reshape(len(cat_dts), len(cat_gts))
            for area_name, area in AREA_RANGES.items():
                matched, ignored, gt_ignored = _match(cat_dts, cat_gts, ious, area)
                for max_det in MAX_DETECTIONS:
                    slot = per_category[category][area_name, max_det]
                    slot["scores"].extend(d["score"] for d in cat_dts[:max_det])
                    slot["matched"].append(matched[:, :max_det])
                    slot["ignored"].append(ignored[:, :max_det])
                    slot["gt"] += int((~gt_ignored).sum())
    # (category, area, max det) -> precision (T, R), recall (T,) for categories with ground truth in the range
    precision: dict = {}
    recall: dict = {}
    for category, slots in per_category.items():
        for key, slot in slots.items():
            if slot["gt"] == 0:
                continue
            matched = np.concatenate(slot["matched"], axis=1)
            ignored = np.concatenate(slot["ignored"], axis=1)
            precision[category, *key], recall[category, *key] = _precision_recall(
                np.array(slot["scores"], dtype=np.float64), matched, ignored, slot["gt"])

    def mean(values: list) -> float:
        return float(np.mean(np.concatenate([np.ravel(v) for v in values]))) if values else -1.0

    def ap(area="all", max_det=100, threshold=None, subset=None) -> float:
        rows = []
        for (category, area_name, det), value in precision.items():
            if area_name != area or det != max_det or (subset is not None and category not in subset):
                continue
            rows.append(value if threshold is None else value[np.isclose(IOU_THRESHOLDS, threshold)])
        return mean(rows)

    def ar(area="all", max_det=100) -> float:
        return mean([v for (c, a, m), v in recall.items() if a == area and m == max_det])

    result = {
        "AP": ap(), "AP50": ap(threshold=0.5), "AP75": ap(threshold=0.75),
        "APs": ap("small"), "APm": ap("medium"), "APl": ap("large"),
        "AR1": ar(max_det=1), "AR10": ar(max_det=10), "AR100": ar(),
        "ARs": ar("small"), "ARm": ar("medium"), "ARl": ar("large"),
    }
    if categories is not None:
        base = {int(c["id"]) for c in categories if c.get("partition") in (0, 1)}
        novel = {int(c["id"]) for c in categories if c.get("partition") in (2, 3)}
        result["APb"], result["APn"] = ap(subset=base), ap(subset=novel)
    return result


__all__ = ["AREA_RANGES", "spatio_temporal_iou", "video_instance_map"]
