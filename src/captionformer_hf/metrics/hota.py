"""HOTA (DetA, AssA, LocA, DetRe/DetPr/AssRe/AssPr, TP/FN/FP) exactly as TrackEval's ``HOTA.eval_sequence``,
vectorised over frames.

TrackEval's algorithm: per-frame similarities are normalised into a global alignment score between GT and
predicted ids; in each frame one Hungarian assignment maximises alignment x similarity; a match counts at alpha if
its similarity is >= alpha - eps. This module computes the same numbers with frames stacked in padded arrays
``(F, G_max, P_max)``; the per-frame assignment is solved in closed form where the optimum is unique and obvious
(every row - or column, when there are more rows - has a strict maximum in a distinct column), and by
``scipy.optimize.linear_sum_assignment`` otherwise, so the matches equal TrackEval's.

No torch or evaluate import here.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

EPS = np.finfo("float").eps
TRACKEVAL_ALPHAS = tuple(np.arange(0.05, 0.99, 0.05).tolist())
HOTA_FIELDS = ("HOTA", "DetA", "AssA", "DetRe", "DetPr", "AssRe", "AssPr", "LocA", "HOTA_TP", "HOTA_FN", "HOTA_FP")


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU of ``[x, y, w, h]`` boxes (no +1), broadcast over leading dims: ``(..., N, 4), (..., M, 4) -> (..., N, M)``.
    A zero union gives 0."""
    boxes1 = np.asarray(boxes1, dtype=np.float64)
    boxes2 = np.asarray(boxes2, dtype=np.float64)
    area1 = boxes1[..., 2] * boxes1[..., 3]
    area2 = boxes2[..., 2] * boxes2[..., 3]
    lt = np.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = np.minimum(boxes1[..., :, None, :2] + boxes1[..., :, None, 2:], boxes2[..., None, :, :2] + boxes2[..., None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    intersection = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)


def pad_by_frame(frames: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Detections' frame indices ``(D,)`` -> ``(slots (F, K) detection index or -1, slot_of_detection (D,))``, keeping
    the input order within each frame."""
    frames = np.asarray(frames, dtype=np.int64)
    counts = np.bincount(frames, minlength=num_frames) if len(frames) else np.zeros(num_frames, dtype=np.int64)
    width = int(counts.max()) if len(counts) and counts.max() > 0 else 0
    order = np.argsort(frames, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot_sorted = np.arange(len(frames)) - starts[frames[order]]
    slot = np.empty(len(frames), dtype=np.int64)
    slot[order] = slot_sorted
    slots = np.full((num_frames, width), -1, dtype=np.int64)
    slots[frames, slot] = np.arange(len(frames))
    return slots, slot


def _assign(score: np.ndarray, rows_valid: np.ndarray, cols_valid: np.ndarray):
    """Per-frame maximum-score assignment. ``score (F, R, C)``; returns ``(frame, row, col)`` arrays of matches,
    the same as ``linear_sum_assignment(-score[f, :r_f, :c_f])`` frame by frame."""
    num_frames = score.shape[0]
    n_rows = rows_valid.sum(1)
    n_cols = cols_valid.sum(1)
    active = (n_rows > 0) & (n_cols > 0)
    out_f, out_r, out_c = [], [], []
    if score.shape[1] == 0 or score.shape[2] == 0:
        return (np.zeros(0, np.int64),) * 3
    masked = np.where(rows_valid[:, :, None] & cols_valid[:, None, :], score, -np.inf)

    def obvious(matrix_valid_rows, n_major, n_minor, axis_scores):
        # axis_scores: (F, A, B) where A is the side that is fully assigned (A <= B)
        best = axis_scores.argmax(2)
        if axis_scores.shape[2] > 1:
            top2 = -np.partition(-axis_scores, 1, axis=2)[:, :, :2]
            strict = top2[:, :, 0] > top2[:, :, 1]
        else:
            strict = np.ones(best.shape, dtype=bool)
        ok = np.where(matrix_valid_rows, strict, True).all(1)
        # distinct choices among valid rows
        choice = np.where(matrix_valid_rows, best, -1 - np.arange(best.shape[1])[None, :])
        sorted_choice = np.sort(choice, axis=1)
        distinct = (np.diff(sorted_choice, axis=1) != 0).all(1) if best.shape[1] > 1 else np.ones(len(best), bool)
        return ok & distinct, best

    rows_side = active & (n_rows <= n_cols)
    cols_side = active & (n_rows > n_cols)
    easy = np.zeros(num_frames, dtype=bool)
    if rows_side.any():
        ok, best = obvious(rows_valid, n_rows, n_cols, masked)
        take = rows_side & ok
        f_idx, r_idx = np.nonzero(take[:, None] & rows_valid)
        out_f.append(f_idx)
        out_r.append(r_idx)
        out_c.append(best[f_idx, r_idx])
        easy |= take
    if cols_side.any():
        ok, best = obvious(cols_valid, n_cols, n_rows, masked.transpose(0, 2, 1))
        take = cols_side & ok
        f_idx, c_idx = np.nonzero(take[:, None] & cols_valid)
        out_f.append(f_idx)
        out_r.append(best[f_idx, c_idx])
        out_c.append(c_idx)
        easy |= take
    for f in np.nonzero(active & ~easy)[0]:
        rows = np.nonzero(rows_valid[f])[0]
        cols = np.nonzero(cols_valid[f])[0]
        r, c = linear_sum_assignment(-score[f][np.ix_(rows, cols)])
        out_f.append(np.full(len(r), f, dtype=np.int64))
        out_r.append(rows[r])
        out_c.append(cols[c])
    if not out_f:
        return (np.zeros(0, np.int64),) * 3
    frames = np.concatenate(out_f).astype(np.int64)
    rows = np.concatenate(out_r).astype(np.int64)
    cols = np.concatenate(out_c).astype(np.int64)
    order = np.lexsort((rows, frames))
    return frames[order], rows[order], cols[order]


def hota_sequence(
    similarity: np.ndarray,
    gt_ids: np.ndarray,
    pred_ids: np.ndarray,
    num_gt_ids: int,
    num_pred_ids: int,
    alphas=(0.5,),
) -> tuple[dict, list]:
    """HOTA of one video.

    Args:
        similarity: ``(F, G_max, P_max)`` per-frame similarity (0 where a slot is empty).
        gt_ids / pred_ids: ``(F, G_max)`` / ``(F, P_max)`` dense ids (0..num-1) per slot, -1 for empty slots.
        alphas: similarity thresholds.
    Returns:
        ``(res, matches)``: ``res`` maps each field of TrackEval's HOTA (plus ``HOTA_TP/FN/FP``) to an array over
        alphas; ``matches[a]`` is ``(frame, gt_slot, pred_slot)`` of the pairs matched at alpha ``a``.
    """
    alphas = np.asarray(alphas, dtype=np.float64).reshape(-1)
    num_alphas = len(alphas)
    res = {field: np.zeros(num_alphas) for field in HOTA_FIELDS}
    gt_valid = gt_ids >= 0
    pred_valid = pred_ids >= 0
    num_gt_dets = int(gt_valid.sum())
    num_pred_dets = int(pred_valid.sum())
    empty_matches = [(np.zeros(0, np.int64),) * 3 for _ in range(num_alphas)]
    if num_pred_dets == 0 or num_gt_dets == 0:
        if num_pred_dets == 0:
            res["HOTA_FN"] = np.full(num_alphas, float(num_gt_dets))
        else:
            res["HOTA_FP"] = np.full(num_alphas, float(num_pred_dets))
        res["LocA"] = np.ones(num_alphas)
        return finalize(res), empty_matches

    similarity = np.where(gt_valid[:, :, None] & pred_valid[:, None, :], similarity, 0.0)
    # global alignment score (TrackEval: potential_matches_count / (gt_count + tracker_count - potential))
    denom = similarity.sum(1, keepdims=True) + similarity.sum(2, keepdims=True) - similarity
    sim_iou = np.zeros_like(similarity)
    mask = denom > 0 + EPS
    sim_iou[mask] = similarity[mask] / denom[mask]
    pair_valid = gt_valid[:, :, None] & pred_valid[:, None, :]
    g_flat = np.broadcast_to(gt_ids[:, :, None], similarity.shape)[pair_valid]
    p_flat = np.broadcast_to(pred_ids[:, None, :], similarity.shape)[pair_valid]
    potential = np.bincount(
        g_flat * num_pred_ids + p_flat, weights=sim_iou[pair_valid], minlength=num_gt_ids * num_pred_ids
    ).reshape(num_gt_ids, num_pred_ids)
    gt_id_count = np.bincount(gt_ids[gt_valid], minlength=num_gt_ids).astype(np.float64)[:, None]
    pred_id_count = np.bincount(pred_ids[pred_valid], minlength=num_pred_ids).astype(np.float64)[None, :]
    global_alignment = potential / (gt_id_count + pred_id_count - potential)

    score = np.zeros_like(similarity)
    score[pair_valid] = global_alignment[g_flat, p_flat] * similarity[pair_valid]
    frames, rows, cols = _assign(score, gt_valid, pred_valid)
    matched_similarity = similarity[frames, rows, cols]
    matched_gt = gt_ids[frames, rows]
    matched_pred = pred_ids[frames, cols]

    matches = []
    for a, alpha in enumerate(alphas):
        keep = matched_similarity >= alpha - EPS
        num_matches = int(keep.sum())
        res["HOTA_TP"][a] = num_matches
        res["HOTA_FN"][a] = num_gt_dets - num_matches
        res["HOTA_FP"][a] = num_pred_dets - num_matches
        res["LocA"][a] = matched_similarity[keep].sum() if num_matches else 0.0
        matches_count = np.bincount(
            matched_gt[keep] * num_pred_ids + matched_pred[keep], minlength=num_gt_ids * num_pred_ids
        ).reshape(num_gt_ids, num_pred_ids).astype(np.float64)
        ass_a = matches_count / np.maximum(1, gt_id_count + pred_id_count - matches_count)
        res["AssA"][a] = np.sum(matches_count * ass_a) / np.maximum(1, num_matches)
        ass_re = matches_count / np.maximum(1, gt_id_count)
        res["AssRe"][a] = np.sum(matches_count * ass_re) / np.maximum(1, num_matches)
        ass_pr = matches_count / np.maximum(1, pred_id_count)
        res["AssPr"][a] = np.sum(matches_count * ass_pr) / np.maximum(1, num_matches)
        matches.append((frames[keep], rows[keep], cols[keep]))
    res["LocA"] = np.maximum(1e-10, res["LocA"]) / np.maximum(1e-10, res["HOTA_TP"])
    return finalize(res), matches


def finalize(res: dict) -> dict:
    """TrackEval's ``_compute_final_fields``."""
    res["DetRe"] = res["HOTA_TP"] / np.maximum(1, res["HOTA_TP"] + res["HOTA_FN"])
    res["DetPr"] = res["HOTA_TP"] / np.maximum(1, res["HOTA_TP"] + res["HOTA_FP"])
    res["DetA"] = res["HOTA_TP"] / np.maximum(1, res["HOTA_TP"] + res["HOTA_FN"] + res["HOTA_FP"])
    res["HOTA"] = np.sqrt(res["DetA"] * res["AssA"])
    return res


def combine_sequences(all_res: list[dict]) -> dict:
    """TrackEval's ``HOTA.combine_sequences``: sums of TP/FN/FP, TP-weighted AssA/AssRe/AssPr/LocA."""
    res = {}
    for field in ("HOTA_TP", "HOTA_FN", "HOTA_FP"):
        res[field] = sum(r[field] for r in all_res)
    for field in ("AssRe", "AssPr", "AssA"):
        res[field] = sum(r[field] * r["HOTA_TP"] for r in all_res) / np.maximum(1.0, res["HOTA_TP"])
    loca = sum(r["LocA"] * r["HOTA_TP"] for r in all_res)
    res["LocA"] = np.maximum(1e-10, loca) / np.maximum(1e-10, res["HOTA_TP"])
    return finalize(res)
