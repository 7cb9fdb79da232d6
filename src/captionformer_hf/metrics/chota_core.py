"""CHOTA = cbrt(DetA * AssA * CapA), as the published evaluators compute it (scenic densevoc ``chota.py`` and its
CaptionFormer fork), on the trajectory format of ``docs/format.md``.

- Predictions are kept iff their score > ``score_threshold`` (a frame's own ``score`` if given, else its
  trajectory's). Similarity: box IoU on ``[x, y, w, h]`` (no +1) or mask IoU (pycocotools RLE).
- DetA / AssA / LocA ... exactly as TrackEval's HOTA (:mod:`.hota`), per alpha.
- CapA, per video and alpha: every matched (GT, prediction) detection pair whose GT caption is non-empty gives a
  (GT caption, prediction caption) pair (the prediction's caption cut at its first newline); each caption metric is
  summed over the video's pairs (CIDEr-D's idf per video and alpha) and divided by the number of pairs; videos
  combine weighted by their pair counts; CapA is the mean over the chosen metrics. A video with no prediction or no
  GT scores CapA 1 (as the reference); with no pairs anywhere CapA = 1.
- Every field is computed per alpha and reported as the mean over alphas.

No torch or evaluate import here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

try:  # inside captionformer_hf
    from ..processing.trajectory_captionformer import check_video
except ImportError:  # a self-contained copy of the metric (chota_module_path(), the CHOTA Space): a sibling file
    from .trajectory_captionformer import check_video
from .caption_scores import SUPPORTED_CAPTION_METRICS, check_caption_metrics_runnable, get_pair_scorer
from .hota import HOTA_FIELDS, box_iou, combine_sequences, hota_pairs

logger = logging.getLogger(__name__)

# Bounds of an evaluation, checked before anything is allocated for it: the per-frame assignment grows with the
# product of the detections of a frame, and per-frame tables with the frames of a video.
MAX_FRAMES_PER_VIDEO = 1_000_000  # about 9 hours at 30 fps
MAX_DETECTIONS_PER_FRAME = 1_000  # per side (ground truth or predictions)
MAX_ALPHAS = 100

_FIELDS_ORDER = (
    "CHOTA", "DetA", "AssA", "CapA", "HOTA", "LocA", "DetRe", "DetPr", "AssRe", "AssPr",
    "HOTA_TP", "HOTA_FN", "HOTA_FP", "TP_with_caps",
)  # fmt: skip


class _Detections:
    """Detections of one side (GT or predictions) of one video, in input order: collected as one chunk a trajectory
    (numpy arrays, 8 bytes a number, not lists of Python objects: a million detections stay small), joined by
    :meth:`finish` into ``frames`` / ``track_index`` ``(N,)`` int64 and ``boxes`` ``(N, 4)`` float64."""

    def __init__(self):
        self._frames, self._tracks, self._boxes = [], [], []
        self.masks: list = []
        self.captions: list[str] = []

    def add(self, frames, track_index: int, boxes=None) -> None:
        frames = np.asarray(frames, dtype=np.int64).reshape(-1)
        self._frames.append(frames)
        self._tracks.append(np.full(len(frames), track_index, dtype=np.int64))
        if boxes is not None:
            self._boxes.append(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))

    def finish(self) -> "_Detections":
        def join(chunks, shape):
            return np.concatenate(chunks) if chunks else np.zeros(shape)

        self.frames = join(self._frames, 0).astype(np.int64, copy=False)
        self.track_index = join(self._tracks, 0).astype(np.int64, copy=False)
        self.boxes = join(self._boxes, (0, 4))
        del self._frames, self._tracks, self._boxes
        return self


def _parse_video(video: Mapping, side: str, iou_type: str, score_threshold: float | None) -> tuple[int, _Detections, int]:
    """Validate one video with the format's validator and collect its detections above ``score_threshold`` (all of
    them when it is None). Returns ``(num_frames, detections, num_tracks)``."""
    if not isinstance(video, Mapping):
        raise TypeError(f"each {side} video must be a dict, got {type(video).__name__}")
    for key in ("video_id", "num_frames", "trajectories"):
        if key not in video:
            raise ValueError(f"{side} video {video.get('video_id', '?')!r} is missing `{key}`")
    num_frames, trajectories = check_video(
        video, f"video {video['video_id']!r}, {side}", require_scores=score_threshold is not None,
        require_boxes=iou_type == "box", require_masks=iou_type == "mask", max_frames=MAX_FRAMES_PER_VIDEO)
    detections = _Detections()
    for trajectory in trajectories:
        keep = None if score_threshold is None else np.flatnonzero(trajectory.scores > score_threshold)
        if keep is None:
            frames, boxes, captions, masks = (trajectory.frame_indices, trajectory.boxes, trajectory.captions,
                                              trajectory.masks)
        else:
            frames, captions = trajectory.frame_indices[keep], [trajectory.captions[k] for k in keep.tolist()]
            boxes = None if trajectory.boxes is None else trajectory.boxes[keep]
            masks = None if trajectory.masks is None else [trajectory.masks[k] for k in keep.tolist()]
        detections.add(frames, trajectory.index, boxes if iou_type == "box" else None)
        detections.captions.extend(captions)
        if iou_type == "mask":
            detections.masks.extend(coco_rle(counts, size) for counts, size in masks)
    detections.finish()
    if len(detections.frames) > MAX_DETECTIONS_PER_FRAME:
        counts = np.bincount(detections.frames)
        crowded = int(counts.argmax())
        if counts[crowded] > MAX_DETECTIONS_PER_FRAME:
            raise ValueError(f"video {video['video_id']!r}, {side}, frame {crowded}: {int(counts[crowded])} detections "
                             f"in one frame, more than the {MAX_DETECTIONS_PER_FRAME} allowed")
    return num_frames, detections, len(trajectories)


def coco_rle(counts, size) -> dict:
    """pycocotools' RLE object of a mask checked by the format's validator (``check_mask_rle``'s ``(counts, size)``)."""
    if isinstance(counts, list):  # uncompressed
        from pycocotools import mask as mask_utils

        return mask_utils.frPyObjects({"counts": counts, "size": list(size)}, *size)
    return {"counts": counts.encode() if isinstance(counts, str) else counts, "size": list(size)}


PAIR_BUDGET = 1 << 20  # similarities computed at once (a chunk of frames, or of one crowded frame's GT rows)


def _frame_index(frames: list[int], num_frames: int):
    """Detections grouped by frame: ``(order, start)`` with the detections of frame ``f`` at
    ``order[start[f]:start[f + 1]]`` (input order kept within a frame)."""
    frames = np.asarray(frames, dtype=np.int64)
    order = np.argsort(frames, kind="stable")
    start = np.searchsorted(frames[order], np.arange(num_frames + 1))
    return order, start


def _chunks(frames: np.ndarray, gt_counts: np.ndarray, pred_counts: np.ndarray):
    """Frames (that have detections on both sides) in consecutive groups whose padded similarity blocks
    (frames x max GT x max predicted) stay within ``PAIR_BUDGET``."""
    chunk, rows, cols = [], 0, 0
    for f in frames:
        new_rows, new_cols = max(rows, gt_counts[f]), max(cols, pred_counts[f])
        if chunk and (len(chunk) + 1) * new_rows * new_cols > PAIR_BUDGET:
            yield chunk
            chunk, new_rows, new_cols = [], gt_counts[f], pred_counts[f]
        chunk.append(f)
        rows, cols = new_rows, new_cols
    if chunk:
        yield chunk


def _positive_pairs(num_frames: int, gt: _Detections, pred: _Detections, iou_type: str):
    """``(gt detection, predicted detection, similarity)`` arrays of the pairs of the same frame with positive
    similarity (box IoU or mask IoU), computed in bounded chunks."""
    gt_order, gt_start = _frame_index(gt.frames, num_frames)
    pred_order, pred_start = _frame_index(pred.frames, num_frames)
    gt_counts, pred_counts = np.diff(gt_start), np.diff(pred_start)
    frames = np.nonzero((gt_counts > 0) & (pred_counts > 0))[0]
    out_gt, out_pred, out_sim = [], [], []

    def keep(g_dets, p_dets, sim):  # g_dets (R,), p_dets (C,), sim (R, C)
        r, c = np.nonzero(sim > 0)
        out_gt.append(g_dets[r])
        out_pred.append(p_dets[c])
        out_sim.append(sim[r, c])

    if iou_type == "box":
        gt_boxes = np.asarray(gt.boxes, dtype=np.float64).reshape(-1, 4)
        pred_boxes = np.asarray(pred.boxes, dtype=np.float64).reshape(-1, 4)
        for chunk in _chunks(frames, gt_counts, pred_counts):
            chunk = np.asarray(chunk)
            rows, cols = int(gt_counts[chunk].max()), int(pred_counts[chunk].max())
            if rows * cols > PAIR_BUDGET:  # one crowded frame: blocks of GT rows
                f = chunk[0]
                g_dets = gt_order[gt_start[f] : gt_start[f + 1]]
                p_dets = pred_order[pred_start[f] : pred_start[f + 1]]
                step = max(1, PAIR_BUDGET // cols)
                for i in range(0, len(g_dets), step):
                    keep(g_dets[i : i + step], p_dets, box_iou(gt_boxes[g_dets[i : i + step]], pred_boxes[p_dets]))
                continue
            slot = np.arange(rows)[None]
            g_slots = np.where(slot < gt_counts[chunk][:, None], gt_start[chunk][:, None] + slot, -1)
            slot = np.arange(cols)[None]
            p_slots = np.where(slot < pred_counts[chunk][:, None], pred_start[chunk][:, None] + slot, -1)
            g_dets = np.where(g_slots >= 0, gt_order[np.maximum(g_slots, 0)], -1)
            p_dets = np.where(p_slots >= 0, pred_order[np.maximum(p_slots, 0)], -1)
            sim = box_iou(gt_boxes[np.maximum(g_dets, 0)], pred_boxes[np.maximum(p_dets, 0)])
            valid = (g_dets >= 0)[:, :, None] & (p_dets >= 0)[:, None, :] & (sim > 0)
            f, r, c = np.nonzero(valid)
            out_gt.append(g_dets[f, r])
            out_pred.append(p_dets[f, c])
            out_sim.append(sim[f, r, c])
    else:
        from pycocotools import mask as mask_utils

        for f in frames:
            g_dets = gt_order[gt_start[f] : gt_start[f + 1]]
            p_dets = pred_order[pred_start[f] : pred_start[f + 1]]
            gt_rles = [gt.masks[i] for i in g_dets]
            pred_rles = [pred.masks[i] for i in p_dets]
            for rle in (*gt_rles, *pred_rles):
                if list(rle["size"]) != list(gt_rles[0]["size"]):
                    raise ValueError(f"frame {f}: masks of different sizes {rle['size']} vs {gt_rles[0]['size']}")
            step = max(1, PAIR_BUDGET // len(p_dets))
            for i in range(0, len(g_dets), step):
                try:
                    iou = mask_utils.iou(pred_rles, gt_rles[i : i + step], [0] * len(gt_rles[i : i + step]))
                except Exception as error:  # pycocotools raises bare Exceptions on corrupt RLE
                    raise ValueError(f"frame {f}: invalid mask RLE ({error})") from error
                block = np.asarray(iou, dtype=np.float64).reshape(len(p_dets), -1).T
                keep(g_dets[i : i + step], p_dets, block)
    if not out_sim:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(out_gt), np.concatenate(out_pred), np.concatenate(out_sim)


def match_videos(refs_by_id: dict, preds_by_id: dict, iou_type: str, alphas: tuple, score_threshold: float):
    """HOTA of every video and its caption pairs per alpha.

    Returns ``(per_video_res, pairs, empty_videos)``: ``pairs[(video_id, alpha_index)]`` is the
    ``(GT captions, predicted captions)`` of the matched detections whose GT caption is non-empty."""
    num_alphas = len(alphas)
    per_video_res = {}
    pairs = {}  # (video_id, alpha index) -> (gt captions, pred captions)
    empty_videos = set()
    for video_id, reference in refs_by_id.items():
        num_frames, gt, _ = _parse_video(reference, "reference", iou_type, None)
        pred_num_frames, pred, _ = _parse_video(preds_by_id[video_id], "prediction", iou_type, score_threshold)
        if pred_num_frames != num_frames:
            raise ValueError(
                f"video {video_id!r}: num_frames differs between prediction ({pred_num_frames}) and reference "
                f"({num_frames})"
            )
        gt_track = np.asarray(gt.track_index, dtype=np.int64)
        pred_track = np.asarray(pred.track_index, dtype=np.int64)
        # dense ids over the tracks that have detections (TrackEval counts ids that appear)
        gt_unique, gt_ids = np.unique(gt_track, return_inverse=True)
        pred_unique, pred_ids = np.unique(pred_track, return_inverse=True)
        pair_gt, pair_pred, similarity = _positive_pairs(num_frames, gt, pred, iou_type)
        res, matches = hota_pairs(pair_gt, pair_pred, similarity, gt_ids.reshape(-1), pred_ids.reshape(-1),
                                  len(gt_unique), len(pred_unique), alphas)
        if len(gt.frames) == 0 or len(pred.frames) == 0:
            empty_videos.add(video_id)
        res["TP_with_caps"] = np.zeros(num_alphas)
        for a, (gt_det, pred_det) in enumerate(matches):
            gt_caps = [gt.captions[i] for i in gt_det]
            keep = [i for i, cap in enumerate(gt_caps) if cap]
            pairs[(video_id, a)] = (
                [gt_caps[i] for i in keep],
                [pred.captions[pred_det[i]].split("\n")[0] for i in keep],
            )
            res["TP_with_caps"][a] = len(keep)
        per_video_res[video_id] = res

    return per_video_res, pairs, empty_videos


def _check_arguments(predictions, references, iou_type, alphas, caption_metrics, score_threshold):
    for name, value in (("predictions", predictions), ("references", references)):
        if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
            raise TypeError(f"`{name}` must be a list of videos, got {type(value).__name__}")
    if len(references) == 0:
        raise ValueError("`references` holds no video: there is nothing to evaluate")
    if iou_type not in ("box", "mask"):
        raise ValueError(f"`iou_type` must be 'box' or 'mask', got {iou_type!r}")
    if hasattr(alphas, "__len__") and len(alphas) > MAX_ALPHAS:
        raise ValueError(f"`alphas` holds {len(alphas)} thresholds, more than {MAX_ALPHAS}")
    alphas = tuple(float(a) for a in np.asarray(alphas, dtype=np.float64).reshape(-1))
    if not alphas or len(alphas) > MAX_ALPHAS or not all(0.0 < a <= 1.0 for a in alphas):
        raise ValueError(f"`alphas` must be a non-empty list of thresholds in (0, 1], got {alphas!r}")
    if isinstance(caption_metrics, str):
        caption_metrics = (caption_metrics,)
    caption_metrics = tuple(caption_metrics)
    for metric in caption_metrics:
        if metric not in SUPPORTED_CAPTION_METRICS:
            raise ValueError(f"`caption_metrics` entries must be among {SUPPORTED_CAPTION_METRICS}, got {metric!r}")
    if len(set(caption_metrics)) != len(caption_metrics):
        raise ValueError(f"`caption_metrics` has duplicates: {caption_metrics!r}")
    check_caption_metrics_runnable(caption_metrics)  # Java / jars missing: refused before any work
    if isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float)) or math.isnan(score_threshold):
        raise ValueError(f"`score_threshold` must be a number, got {score_threshold!r}")
    return alphas, caption_metrics


def compute_chota(
    predictions: Sequence[Mapping],
    references: Sequence[Mapping],
    iou_type: str = "box",
    alphas=(0.5,),
    caption_metrics=("cider", "meteor", "spice"),
    score_threshold: float = 0.5,
) -> dict:
    """CHOTA of predicted against reference videos (see the module docstring for the definition).

    Args:
        predictions / references: lists of ``{"video_id", "num_frames", "trajectories": [...]}`` (trajectory format
            of ``docs/format.md``; ``height``/``width`` needed for string mask RLEs), the same set of video ids on both sides.
        iou_type: ``"box"`` or ``"mask"``.
        alphas: similarity thresholds; ``(0.5,)`` as published, or :data:`~.hota.TRACKEVAL_ALPHAS` (0.05..0.95).
        caption_metrics: any of ``"cider"``, ``"meteor"`` (Java), ``"spice"`` (Java + CoreNLP jars); CapA is
            their mean (1 with none).
        score_threshold: predictions are kept iff score > this.

    Returns:
        flat dict: ``CHOTA, DetA, AssA, CapA, HOTA, LocA, DetRe, DetPr, AssRe, AssPr, HOTA_TP, HOTA_FN, HOTA_FP,
        TP_with_caps, CapA_<metric>...`` (means over alphas), ``per_alpha`` (field -> list over alphas, with
        ``alpha``) and ``per_video`` (video_id -> the flat fields).
    """
    alphas, caption_metrics = _check_arguments(
        predictions, references, iou_type, alphas, caption_metrics, score_threshold
    )
    num_alphas = len(alphas)
    refs_by_id, preds_by_id = {}, {}
    for side, videos, by_id in (("reference", references, refs_by_id), ("prediction", predictions, preds_by_id)):
        for video in videos:
            if not isinstance(video, Mapping) or "video_id" not in video:
                raise ValueError(f"every {side} video must be a dict with a `video_id`")
            if not isinstance(video["video_id"], Hashable):
                raise TypeError(f"{side} video `video_id` must be a string or an integer, got "
                                f"{type(video['video_id']).__name__}")
            if video["video_id"] in by_id:
                raise ValueError(f"duplicate video_id {video['video_id']!r} in the {side}s")
            by_id[video["video_id"]] = video
    if set(refs_by_id) != set(preds_by_id):
        missing = sorted(map(str, set(refs_by_id) - set(preds_by_id)))
        extra = sorted(map(str, set(preds_by_id) - set(refs_by_id)))
        raise ValueError(
            f"video ids of predictions and references differ: missing predictions for {missing[:10]}, "
            f"predictions for unknown videos {extra[:10]}"
        )

    per_video_res, pairs, empty_videos = match_videos(
        refs_by_id, preds_by_id, iou_type, alphas, score_threshold
    )

    # ---------------------------------------------------------------- caption metrics
    for metric in caption_metrics:
        scorer = get_pair_scorer(metric)
        sums = {}
        if metric == "cider":
            for key, (refs, cands) in pairs.items():
                unique = {}
                for pair in zip(refs, cands):
                    unique[pair] = unique.get(pair, 0) + 1
                if unique:
                    scores = scorer([r for r, _ in unique], [c for _, c in unique], list(unique.values()))
                    sums[key] = float(np.dot(scores, list(unique.values())))
                else:
                    sums[key] = 0.0
        else:  # pair scores are independent of the corpus: score every unique pair once, all videos together
            all_pairs = list(dict.fromkeys(p for refs, cands in pairs.values() for p in zip(refs, cands)))
            scores = (
                dict(zip(all_pairs, scorer([r for r, _ in all_pairs], [c for _, c in all_pairs])))
                if all_pairs
                else {}
            )
            for key, (refs, cands) in pairs.items():
                sums[key] = float(sum(scores[p] for p in zip(refs, cands)))
        for video_id, res in per_video_res.items():
            if video_id in empty_videos:
                res[f"CapA_{metric}"] = np.ones(num_alphas)
            else:
                res[f"CapA_{metric}"] = np.array([sums[(video_id, a)] for a in range(num_alphas)]) / np.maximum(
                    1e-10, res["TP_with_caps"]
                )

    # ---------------------------------------------------------------- combine
    def add_caption_fields(res, components):
        for metric in caption_metrics:
            res[f"CapA_{metric}"] = components[metric]
        res["CapA"] = (
            sum(res[f"CapA_{m}"] for m in caption_metrics) / len(caption_metrics)
            if caption_metrics
            else np.ones(num_alphas)
        )
        res["CHOTA"] = np.cbrt(res["DetA"] * res["AssA"] * res["CapA"])
        return res

    for res in per_video_res.values():
        add_caption_fields(res, {m: res[f"CapA_{m}"] for m in caption_metrics})
    all_res = list(per_video_res.values())
    if all_res:
        combined = combine_sequences(all_res)
        combined["TP_with_caps"] = sum(r["TP_with_caps"] for r in all_res)
    else:
        combined = {field: np.zeros(num_alphas) for field in HOTA_FIELDS}
        combined["LocA"] = np.ones(num_alphas)
        combined["TP_with_caps"] = np.zeros(num_alphas)
    components = {}
    for metric in caption_metrics:
        weighted = sum(r[f"CapA_{metric}"] * r["TP_with_caps"] for r in all_res) if all_res else np.zeros(num_alphas)
        components[metric] = np.maximum(1e-10, weighted) / np.maximum(1e-10, combined["TP_with_caps"])
    add_caption_fields(combined, components)

    fields = list(_FIELDS_ORDER) + [f"CapA_{m}" for m in caption_metrics]

    def flatten(res):
        return {field: float(np.mean(res[field])) for field in fields}

    result = flatten(combined)
    result["per_alpha"] = {"alpha": list(alphas), **{field: [float(v) for v in combined[field]] for field in fields}}
    result["per_video"] = {video_id: flatten(res) for video_id, res in per_video_res.items()}
    return result
