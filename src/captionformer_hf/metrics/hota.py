"""HOTA (DetA, AssA, LocA, DetRe/DetPr/AssRe/AssPr, TP/FN/FP) exactly as TrackEval's ``HOTA.eval_sequence``,
vectorised over frames.

TrackEval's algorithm: per-frame similarities are normalised into a global alignment score between GT and
predicted ids; in each frame one Hungarian assignment maximises alignment x similarity; a match counts at alpha if
its similarity is >= alpha - eps. This module computes the same numbers from the list of (GT detection, predicted
detection) pairs whose similarity is positive, so memory grows with the detections and their overlaps, not with
frames x tracks x tracks: the per-frame assignments split into connected components of overlapping detections; a
lone pair is matched as is, every other component is solved by ``scipy.optimize.linear_sum_assignment``.

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


def _assign_small_components(gt_dets, pred_dets, score, rest, component):
    """The assignment of every component with at most 2 GT and 2 predicted detections at once (most of them in
    practice): the better of its two diagonals, which is what ``linear_sum_assignment`` returns on its 2 x 2 matrix
    (a missing pair scores 0; a 1 x 2 or 2 x 1 component is a 2 x 2 one with a zero row or column). ``rest`` /
    ``component``: the pairs to assign and their component label, sorted by label. Components whose two diagonals
    score equal, or so nearly equal that the rounding of the solver could decide, are left to it with the larger
    ones. Returns ``(chosen pairs, rest, component)`` with the pairs still to assign."""
    starts = np.flatnonzero(np.r_[True, np.diff(component) != 0])
    sizes = np.diff(np.r_[starts, len(rest)])
    rows, cols = gt_dets[rest], pred_dets[rest]
    first_row = np.minimum.reduceat(rows, starts)
    first_col = np.minimum.reduceat(cols, starts)
    segment = np.repeat(np.arange(len(starts)), sizes)
    row_rank = (rows != first_row[segment]).astype(np.int64)
    col_rank = (cols != first_col[segment]).astype(np.int64)
    # at most 2 rows and 2 columns: every row / column is the first or the same second one
    second_row = np.where(row_rank == 1, rows, -1)
    second_col = np.where(col_rank == 1, cols, -1)
    row_max = np.maximum.reduceat(second_row, starts)
    col_max = np.maximum.reduceat(second_col, starts)
    row_min = np.minimum.reduceat(np.where(row_rank == 1, rows, np.iinfo(np.int64).max), starts)
    col_min = np.minimum.reduceat(np.where(col_rank == 1, cols, np.iinfo(np.int64).max), starts)
    is_small = (sizes <= 4) & ((row_max < 0) | (row_max == row_min)) & ((col_max < 0) | (col_max == col_min))
    table = np.zeros((len(starts), 2, 2))
    pair_of = np.full((len(starts), 2, 2), -1, dtype=np.int64)
    table[segment, row_rank, col_rank] = score[rest]
    pair_of[segment, row_rank, col_rank] = rest
    diagonal = table[:, 0, 0] + table[:, 1, 1]
    anti = table[:, 0, 1] + table[:, 1, 0]
    decided = is_small & (np.abs(diagonal - anti) > 1e-9 * (np.abs(diagonal) + np.abs(anti)))
    picked = np.where((diagonal > anti)[:, None], pair_of[:, [0, 1], [0, 1]], pair_of[:, [0, 1], [1, 0]])[decided]
    undecided = ~decided[segment]
    return picked[picked >= 0], rest[undecided], component[undecided]


def _assign_pairs(gt_dets: np.ndarray, pred_dets: np.ndarray, score: np.ndarray, num_gt_dets: int,
                  num_pred_dets: int) -> np.ndarray:
    """Maximum-score one-to-one assignment of detections over the pairs of positive score: indices of the chosen
    pairs. Detections are frame-specific, so this is every frame's Hungarian assignment at once. The graph splits
    into connected components: a pair whose two detections have no other pair is taken as is; every other component
    is solved by ``scipy.optimize.linear_sum_assignment`` on its own small matrix (zero-score pairs could never
    count as matches: they cannot pass any alpha > 0)."""
    if len(score) == 0:
        return np.zeros(0, np.int64)
    degree_gt = np.bincount(gt_dets, minlength=num_gt_dets)
    degree_pred = np.bincount(pred_dets, minlength=num_pred_dets)
    single = (degree_gt[gt_dets] == 1) & (degree_pred[pred_dets] == 1)
    chosen = [np.nonzero(single)[0]]
    rest = np.nonzero(~single)[0]
    if len(rest):
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        nodes = num_gt_dets + num_pred_dets
        graph = coo_matrix((np.ones(len(rest)), (gt_dets[rest], num_gt_dets + pred_dets[rest])), shape=(nodes, nodes))
        _, labels = connected_components(graph, directed=False)
        component = labels[gt_dets[rest]]
        order = np.argsort(component, kind="stable")
        rest, component = rest[order], component[order]
        small, rest, component = _assign_small_components(gt_dets, pred_dets, score, rest, component)
        chosen.append(small)
        bounds = np.flatnonzero(np.diff(component)) + 1
        for group in np.split(rest, bounds) if len(rest) else ():
            rows, row_index = np.unique(gt_dets[group], return_inverse=True)
            cols, col_index = np.unique(pred_dets[group], return_inverse=True)
            matrix = np.zeros((len(rows), len(cols)))
            pair_of = np.full((len(rows), len(cols)), -1, dtype=np.int64)
            matrix[row_index, col_index] = score[group]
            pair_of[row_index, col_index] = group
            r, c = linear_sum_assignment(-matrix)
            picked = pair_of[r, c]
            chosen.append(picked[picked >= 0])
    return np.sort(np.concatenate(chosen))


def hota_pairs(
    pair_gt: np.ndarray,
    pair_pred: np.ndarray,
    similarity: np.ndarray,
    gt_det_ids: np.ndarray,
    pred_det_ids: np.ndarray,
    num_gt_ids: int,
    num_pred_ids: int,
    alphas=(0.5,),
) -> tuple[dict, list]:
    """HOTA of one video from its pairs of positive similarity, in memory that grows with the detections and the
    overlapping pairs (not with frames x GT tracks x predicted tracks).

    Args:
        pair_gt / pair_pred / similarity: ``(K,)`` the GT detection, the predicted detection (indices into the
            detection lists below; a detection belongs to one frame) and their similarity, for every pair of the same
            frame with similarity > 0.
        gt_det_ids / pred_det_ids: dense track ids (0..num-1) of every GT / predicted detection.
        alphas: similarity thresholds.
    Returns:
        ``(res, matches)``: ``res`` maps each field of TrackEval's HOTA (plus ``HOTA_TP/FN/FP``) to an array over
        alphas; ``matches[a]`` is ``(gt detection, predicted detection)`` of the pairs matched at alpha ``a``.
    """
    alphas = np.asarray(alphas, dtype=np.float64).reshape(-1)
    num_alphas = len(alphas)
    res = {field: np.zeros(num_alphas) for field in HOTA_FIELDS}
    num_gt_dets, num_pred_dets = len(gt_det_ids), len(pred_det_ids)
    empty_matches = [(np.zeros(0, np.int64),) * 2 for _ in range(num_alphas)]
    if num_pred_dets == 0 or num_gt_dets == 0:
        if num_pred_dets == 0:
            res["HOTA_FN"] = np.full(num_alphas, float(num_gt_dets))
        else:
            res["HOTA_FP"] = np.full(num_alphas, float(num_pred_dets))
        res["LocA"] = np.ones(num_alphas)
        return finalize(res), empty_matches
    pair_gt = np.asarray(pair_gt, dtype=np.int64)
    pair_pred = np.asarray(pair_pred, dtype=np.int64)
    similarity = np.asarray(similarity, dtype=np.float64)
    # global alignment score (TrackEval: potential_matches_count / (gt_count + tracker_count - potential)), where a
    # pair's share is its similarity over the similarity mass of its two detections in their frame
    row_sum = np.bincount(pair_gt, weights=similarity, minlength=num_gt_dets)
    col_sum = np.bincount(pair_pred, weights=similarity, minlength=num_pred_dets)
    denom = row_sum[pair_gt] + col_sum[pair_pred] - similarity
    sim_iou = np.zeros_like(similarity)
    positive = denom > 0 + EPS
    sim_iou[positive] = similarity[positive] / denom[positive]
    pair_gt_id = gt_det_ids[pair_gt]
    pair_pred_id = pred_det_ids[pair_pred]
    key = pair_gt_id.astype(np.int64) * num_pred_ids + pair_pred_id
    unique_keys, pair_key = np.unique(key, return_inverse=True)
    potential = np.bincount(pair_key, weights=sim_iou, minlength=len(unique_keys))
    gt_id_count = np.bincount(gt_det_ids, minlength=num_gt_ids).astype(np.float64)
    pred_id_count = np.bincount(pred_det_ids, minlength=num_pred_ids).astype(np.float64)
    key_gt, key_pred = unique_keys // num_pred_ids, unique_keys % num_pred_ids
    global_alignment = potential / (gt_id_count[key_gt] + pred_id_count[key_pred] - potential)
    score = global_alignment[pair_key] * similarity
    matched = _assign_pairs(pair_gt, pair_pred, score, num_gt_dets, num_pred_dets)
    matched_similarity = similarity[matched]

    matches = []
    for a, alpha in enumerate(alphas):
        keep = matched[matched_similarity >= alpha - EPS]
        num_matches = len(keep)
        res["HOTA_TP"][a] = num_matches
        res["HOTA_FN"][a] = num_gt_dets - num_matches
        res["HOTA_FP"][a] = num_pred_dets - num_matches
        res["LocA"][a] = similarity[keep].sum() if num_matches else 0.0
        if num_matches:
            ids, counts = np.unique(key[keep], return_counts=True)
            counts = counts.astype(np.float64)
            gt_count, pred_count = gt_id_count[ids // num_pred_ids], pred_id_count[ids % num_pred_ids]
            res["AssA"][a] = np.sum(counts * counts / np.maximum(1, gt_count + pred_count - counts)) / num_matches
            res["AssRe"][a] = np.sum(counts * counts / np.maximum(1, gt_count)) / num_matches
            res["AssPr"][a] = np.sum(counts * counts / np.maximum(1, pred_count)) / num_matches
        matches.append((pair_gt[keep], pair_pred[keep]))
    res["LocA"] = np.maximum(1e-10, res["LocA"]) / np.maximum(1e-10, res["HOTA_TP"])
    return finalize(res), matches


def hota_sequence(
    similarity: np.ndarray,
    gt_ids: np.ndarray,
    pred_ids: np.ndarray,
    num_gt_ids: int,
    num_pred_ids: int,
    alphas=(0.5,),
) -> tuple[dict, list]:
    """HOTA of one video from dense per-frame arrays (a convenience over :func:`hota_pairs`).

    Args:
        similarity: ``(F, G_max, P_max)`` per-frame similarity (0 where a slot is empty).
        gt_ids / pred_ids: ``(F, G_max)`` / ``(F, P_max)`` dense ids (0..num-1) per slot, -1 for empty slots.
        alphas: similarity thresholds.
    Returns:
        ``(res, matches)``: as :func:`hota_pairs`, with ``matches[a]`` as ``(frame, gt_slot, pred_slot)``.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    gt_valid, pred_valid = gt_ids >= 0, pred_ids >= 0
    gt_frame, gt_slot = np.nonzero(gt_valid)
    pred_frame, pred_slot = np.nonzero(pred_valid)
    gt_det = np.full(gt_ids.shape, -1, dtype=np.int64)
    gt_det[gt_frame, gt_slot] = np.arange(len(gt_frame))
    pred_det = np.full(pred_ids.shape, -1, dtype=np.int64)
    pred_det[pred_frame, pred_slot] = np.arange(len(pred_frame))
    frame, g, p = np.nonzero((similarity > 0) & gt_valid[:, :, None] & pred_valid[:, None, :])
    res, matches = hota_pairs(gt_det[frame, g], pred_det[frame, p], similarity[frame, g, p], gt_ids[gt_valid],
                              pred_ids[pred_valid], num_gt_ids, num_pred_ids, alphas)
    return res, [(gt_frame[gd], gt_slot[gd], pred_slot[pd]) for gd, pd in matches]


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
