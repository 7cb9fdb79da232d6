"""CHOTA speed: captionformer_hf.metrics.compute_chota vs TrackEval HOTA + pycocoevalcap CIDEr on the same data.

    python benchmarks/chota_speed.py [--videos 100] [--frames 200] [--tracks 10] [--seed 0]

Also times the `evaluate` module (`evaluate.load(chota_module_path())`, add_batch + compute) against the core.

The reference side does what the published evaluator does: per-frame similarity matrices built frame by frame,
TrackEval's HOTA.eval_sequence per video + combine_sequences, and pycocoevalcap's Cider on every video's matched
(GT caption, predicted caption) pairs (the pairs are those of the matching, which equals TrackEval's). Prints both
timings side by side and checks that the numbers agree.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def make_data(num_videos, num_frames, num_tracks, seed):
    rng = np.random.default_rng(seed)
    words = "a the red blue green yellow square circle triangle moving left right up down bouncing still small".split()
    refs, preds = [], []
    for v in range(num_videos):
        gt_tracks, pred_tracks = [], []
        for t in range(num_tracks):
            start = int(rng.integers(0, num_frames // 3))
            end = int(rng.integers(2 * num_frames // 3, num_frames + 1))
            x, y = rng.uniform(0, 600, 2)
            vx, vy = rng.uniform(-2, 2, 2)
            w, h = rng.uniform(20, 80, 2)
            caption = " ".join(rng.choice(words, int(rng.integers(4, 9))))
            frames = [f for f in range(start, end) if rng.random() > 0.05]
            gt_tracks.append({"track_id": t, "caption": caption, "frames": [
                {"frame_index": f, "box": [x + vx * f, y + vy * f, w, h]} for f in frames]})
            split = int(rng.integers(start, end)) if rng.random() < 0.3 else end
            for piece, pid in (([f for f in frames if f < split], 2 * t), ([f for f in frames if f >= split], 2 * t + 1)):
                if not piece:
                    continue
                noise = rng.normal(0, 3, (len(piece), 4))
                pred_caption = " ".join(rng.choice(words, int(rng.integers(3, 9))))
                pred_tracks.append({"track_id": 1000 + pid, "score": float(rng.uniform(0.4, 1)), "caption": pred_caption, "frames": [
                    {"frame_index": f, "box": [x + vx * f + n[0], y + vy * f + n[1], max(1.0, w + n[2]), max(1.0, h + n[3])]}
                    for f, n in zip(piece, noise)]})
        refs.append({"video_id": f"v{v}", "num_frames": num_frames, "trajectories": gt_tracks})
        preds.append({"video_id": f"v{v}", "num_frames": num_frames, "trajectories": pred_tracks})
    return preds, refs


def reference_chota(preds, refs, score_threshold, pairs_by_video):
    """TrackEval HOTA (alpha 0.5) + pycocoevalcap CIDEr per video, as the published evaluator combines them."""
    from pycocoevalcap.cider.cider import Cider
    from trackeval.metrics import HOTA

    from captionformer_hf.metrics import box_iou

    metric = HOTA()
    cider = Cider()
    results, capa = {}, []
    for pred, ref in zip(preds, refs):
        num_frames = ref["num_frames"]
        gt_det = [[] for _ in range(num_frames)]
        tr_det = [[] for _ in range(num_frames)]
        gt_ids = {t["track_id"]: i for i, t in enumerate(sorted(ref["trajectories"], key=lambda t: t["track_id"]))}
        kept = [t for t in pred["trajectories"] if t["score"] > score_threshold]
        tr_ids = {t["track_id"]: i for i, t in enumerate(sorted(kept, key=lambda t: t["track_id"]))}
        for t in ref["trajectories"]:
            for fr in t["frames"]:
                gt_det[fr["frame_index"]].append((gt_ids[t["track_id"]], fr["box"]))
        for t in kept:
            for fr in t["frames"]:
                tr_det[fr["frame_index"]].append((tr_ids[t["track_id"]], fr["box"]))
        data = {
            "num_gt_dets": sum(map(len, gt_det)),
            "num_tracker_dets": sum(map(len, tr_det)),
            "num_gt_ids": len(gt_ids),
            "num_tracker_ids": len(tr_ids),
            "gt_ids": [np.array([i for i, _ in d], dtype=int) for d in gt_det],
            "tracker_ids": [np.array([i for i, _ in d], dtype=int) for d in tr_det],
            "similarity_scores": [
                box_iou(np.array([b for _, b in g]).reshape(-1, 4), np.array([b for _, b in p]).reshape(-1, 4))
                for g, p in zip(gt_det, tr_det)
            ],
        }
        results[pred["video_id"]] = metric.eval_sequence(data)
        gts, cands = pairs_by_video[pred["video_id"]]
        if gts:
            _, scores = cider.compute_score({i: [g] for i, g in enumerate(gts)}, {i: [c] for i, c in enumerate(cands)})
            capa.append((float(np.sum(scores)), len(gts)))
    combined = metric.combine_sequences(results)
    cap = max(1e-10, sum(s for s, _ in capa)) / max(1e-10, sum(n for _, n in capa))
    return combined["DetA"][9], combined["AssA"][9], cap


def matched_pairs(preds, refs, score_threshold):
    """The (GT caption, predicted caption) pairs of the alpha = 0.5 matching, per video (not timed)."""
    from captionformer_hf.metrics.chota_core import match_videos

    _, pairs, _ = match_videos(
        {v["video_id"]: v for v in refs}, {v["video_id"]: v for v in preds}, "box", (0.5,), score_threshold
    )
    return {video_id: value for (video_id, _), value in pairs.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=100)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--tracks", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from captionformer_hf.metrics import compute_chota

    preds, refs = make_data(args.videos, args.frames, args.tracks, args.seed)
    num_dets = sum(len(t["frames"]) for v in refs for t in v["trajectories"])
    print(f"data: {args.videos} videos x {args.frames} frames x {args.tracks} GT tracks ({num_dets} GT detections)")

    start = time.perf_counter()
    ours = compute_chota(preds, refs, caption_metrics=("cider",), score_threshold=0.5)
    ours_time = time.perf_counter() - start

    import evaluate

    from captionformer_hf.metrics import chota_module_path

    module = evaluate.load(chota_module_path())
    start = time.perf_counter()
    module.add_batch(predictions=preds, references=refs)
    through_module = module.compute(caption_metrics=("cider",), score_threshold=0.5)
    module_time = time.perf_counter() - start
    if abs(through_module["CHOTA"] - ours["CHOTA"]) > 1e-12:
        raise SystemExit("the evaluate module and the core disagree")

    pairs = matched_pairs(preds, refs, 0.5)
    start = time.perf_counter()
    det_a, ass_a, cap_a = reference_chota(preds, refs, 0.5, pairs)
    ref_time = time.perf_counter() - start

    print(f"{'':28s}{'captionformer_hf':>18s}{'TrackEval+pycocoevalcap':>26s}")
    print(f"{'time (s)':28s}{ours_time:18.2f}{ref_time:26.2f}")
    print(f"{'DetA':28s}{ours['DetA']:18.6f}{det_a:26.6f}")
    print(f"{'AssA':28s}{ours['AssA']:18.6f}{ass_a:26.6f}")
    print(f"{'CapA (CIDEr)':28s}{ours['CapA_cider']:18.6f}{cap_a:26.6f}")
    print(f"speed-up: {ref_time / ours_time:.1f}x")
    print(f"evaluate module (add_batch + compute): {module_time:.2f} s = {module_time / ours_time:.2f}x the core")
    ok = all(abs(a - b) < 1e-6 for a, b in ((ours["DetA"], det_a), (ours["AssA"], ass_a), (ours["CapA_cider"], cap_a)))
    print("numbers agree to 1e-6:", ok)


if __name__ == "__main__":
    main()
