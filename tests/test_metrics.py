"""CHOTA core: hand-computed cases, cross-checks against TrackEval and pycocoevalcap, bad input."""

import math
import shutil
import subprocess
import sys

import numpy as np
import pytest

from captionformer_hf.metrics import TRACKEVAL_ALPHAS, box_iou, cider_d_pair_scores, compute_chota

HAS_JAVA = shutil.which("java") is not None


@pytest.fixture(scope="module")
def reference_meteor():
    """pycocoevalcap's own METEOR (one JVM for the module: it takes seconds to start)."""
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def track(track_id, frames, box=(10, 10, 20, 20), caption="", score=0.9, shift=(0, 0)):
    return {
        "track_id": track_id,
        "score": score,
        "caption": caption,
        "frames": [
            {"frame_index": f, "box": [box[0] + shift[0] * f, box[1] + shift[1] * f, box[2], box[3]]} for f in frames
        ],
    }


def video(trajectories, num_frames=6, video_id="v"):
    return {"video_id": video_id, "num_frames": num_frames, "trajectories": trajectories}


def chota(pred, gt, **kwargs):
    kwargs.setdefault("caption_metrics", ("cider",))
    return compute_chota(pred, gt, **kwargs)


# ---------------------------------------------------------------------------------------------- hand-computed
def test_perfect_prediction():
    gt = [video([track(1, range(6)), track(2, range(6), box=(50, 50, 10, 10))])]
    pred = [video([track(8, range(6)), track(9, range(6), box=(50, 50, 10, 10))])]
    r = chota(pred, gt)
    for field in ("DetA", "AssA", "HOTA", "LocA", "DetRe", "DetPr", "AssRe", "AssPr"):
        assert r[field] == pytest.approx(1.0), field
    assert (r["HOTA_TP"], r["HOTA_FN"], r["HOTA_FP"]) == (12, 0, 0)
    assert r["CapA"] == 1.0 and r["TP_with_caps"] == 0  # no GT captions -> no pairs -> CapA 1
    assert r["CHOTA"] == pytest.approx(1.0)


def test_id_switch():
    gt = [video([track(1, range(4))], num_frames=4)]
    pred = [video([track(7, [0, 1]), track(8, [2, 3])], num_frames=4)]
    r = chota(pred, gt)
    assert r["DetA"] == 1.0
    # each (gt, pred) pair: 2 matches / (4 + 2 - 2) = 0.5, AssA = (2 * 0.5 + 2 * 0.5) / 4
    assert r["AssA"] == pytest.approx(0.5)
    assert r["AssRe"] == pytest.approx(0.5) and r["AssPr"] == pytest.approx(1.0)
    assert r["HOTA"] == pytest.approx(math.sqrt(0.5))


def test_missed_frames_and_false_positives():
    gt = [video([track(1, range(4))], num_frames=4)]
    pred = [video([track(7, [0, 1]), track(8, [0, 1, 2], box=(60, 60, 5, 5))], num_frames=4)]
    r = chota(pred, gt)
    assert (r["HOTA_TP"], r["HOTA_FN"], r["HOTA_FP"]) == (2, 2, 3)
    assert r["DetA"] == pytest.approx(2 / 7)
    assert r["DetRe"] == pytest.approx(0.5) and r["DetPr"] == pytest.approx(0.4)
    assert r["AssA"] == pytest.approx(2 / (4 + 2 - 2))  # 0.5


def test_reappearing_object():
    gt = [video([track(1, [0, 1, 4, 5])])]
    same_id = chota([video([track(3, [0, 1, 4, 5])])], gt)
    new_id = chota([video([track(3, [0, 1]), track(4, [4, 5])])], gt)
    assert same_id["AssA"] == pytest.approx(1.0)
    assert new_id["AssA"] == pytest.approx(0.5)
    assert same_id["DetA"] == new_id["DetA"] == 1.0


def test_localisation_accuracy():
    gt = [video([track(1, [0])], num_frames=1)]
    pred = [video([track(2, [0], box=(10, 10, 20, 30))], num_frames=1)]  # IoU = 400 / 600
    r = chota(pred, gt)
    assert r["LocA"] == pytest.approx(2 / 3)
    assert chota(pred, gt, alphas=(0.7,))["HOTA_TP"] == 0  # 2/3 < 0.7


def test_empty_predictions_and_empty_gt():
    gt = [video([track(1, range(3))], num_frames=3)]
    r = chota([video([], num_frames=3)], gt)
    assert (r["HOTA_TP"], r["HOTA_FN"], r["HOTA_FP"]) == (0, 3, 0)
    assert r["DetA"] == 0 and r["LocA"] == 1.0 and r["CapA"] == 1.0 and r["CHOTA"] == 0.0
    r = chota([video([track(1, range(3))], num_frames=3)], [video([], num_frames=3)])
    assert (r["HOTA_TP"], r["HOTA_FN"], r["HOTA_FP"]) == (0, 0, 3)
    assert r["per_video"]["v"]["CapA"] == 1.0
    # predictions below the score threshold are dropped
    low = [video([track(1, range(3), score=0.5)], num_frames=3)]
    assert chota(low, gt)["HOTA_FN"] == 3
    assert chota(low, gt, score_threshold=0.4)["HOTA_TP"] == 3


def test_per_frame_scores_filter_frames():
    gt = [video([track(1, range(3))], num_frames=3)]
    pred = video([track(1, range(3))], num_frames=3)
    pred["trajectories"][0]["frames"][1]["score"] = 0.1
    r = chota([pred], gt)
    assert (r["HOTA_TP"], r["HOTA_FN"]) == (2, 1)


def test_one_frame_video():
    gt = [video([track(1, [0]), track(2, [0], box=(40, 40, 10, 10))], num_frames=1)]
    pred = [video([track(5, [0], box=(40, 40, 10, 10))], num_frames=1)]
    r = chota(pred, gt)
    assert (r["HOTA_TP"], r["HOTA_FN"], r["HOTA_FP"]) == (1, 1, 0)
    assert r["AssA"] == 1.0


def test_captions_pairs_and_empty_gt_captions():
    gt = [video([track(1, range(3), caption="a red square moving left"), track(2, range(3), box=(50, 50, 10, 10))], 3)]
    pred = [
        video(
            [
                track(1, range(3), caption="a red square moving left\nextra line"),
                track(2, range(3), box=(50, 50, 10, 10), caption="anything"),
            ],
            3,
        )
    ]
    r = chota(pred, gt)
    assert r["TP_with_caps"] == 3  # the track without GT caption gives no pair
    # one distinct pair repeated: CIDEr idf = log(3) - log(3) = 0 -> 0 (the reference's max(1e-10, .) floor)
    assert r["CapA_cider"] == pytest.approx(0.0, abs=1e-9)
    from pycocoevalcap.cider.cider import Cider

    expected, _ = Cider().compute_score({i: ["a red square moving left"] for i in range(3)}, {i: ["a red square moving left"] for i in range(3)})
    assert r["CapA_cider"] == pytest.approx(max(expected, 1e-10 / 3), abs=1e-9)


def test_capa_combines_videos_weighted_by_pair_counts():
    from pycocoevalcap.cider.cider import Cider

    captions = [("a red square moving left", "a red square moving right"), ("a blue circle bouncing", "a blue circle")]
    gts, preds = [], []
    for v, ((gt_cap, pred_cap), frames) in enumerate(zip(captions, (4, 2))):
        gts.append(video([track(1, range(frames), caption=gt_cap), track(2, range(frames), box=(60, 60, 9, 9), caption="a green triangle standing still")], frames, f"v{v}"))
        preds.append(video([track(1, range(frames), caption=pred_cap), track(2, range(frames), box=(60, 60, 9, 9), caption="a green triangle")], frames, f"v{v}"))
    r = chota(preds, gts)
    per_video = []
    for (gt_cap, pred_cap), frames in zip(captions, (4, 2)):
        refs = {i: [gt_cap] for i in range(frames)} | {frames + i: ["a green triangle standing still"] for i in range(frames)}
        cands = {i: [pred_cap] for i in range(frames)} | {frames + i: ["a green triangle"] for i in range(frames)}
        _, scores = Cider().compute_score(refs, cands)
        per_video.append((scores.sum(), 2 * frames))
    expected = sum(s for s, _ in per_video) / sum(n for _, n in per_video)
    assert r["CapA_cider"] == pytest.approx(expected, rel=1e-9)
    assert r["per_video"]["v0"]["CapA_cider"] == pytest.approx(per_video[0][0] / 8, rel=1e-9)
    assert r["CHOTA"] == pytest.approx(np.cbrt(r["DetA"] * r["AssA"] * r["CapA"]))


def test_per_alpha_and_mean_over_alphas():
    gt = [video([track(1, [0])], num_frames=1)]
    pred = [video([track(2, [0], box=(10, 10, 20, 30))], num_frames=1)]  # IoU 2/3
    r = chota(pred, gt, alphas=TRACKEVAL_ALPHAS)
    assert len(r["per_alpha"]["DetA"]) == 19
    assert r["per_alpha"]["DetA"][:13] == [1.0] * 13 and r["per_alpha"]["DetA"][13:] == [0.0] * 6
    assert r["DetA"] == pytest.approx(13 / 19)


def test_mask_iou_matches_decoded_masks():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    h, w = 24, 32
    masks = (rng.random((4, h, w)) > 0.5).astype(np.uint8)
    rles = [mask_utils.encode(np.asfortranarray(m))["counts"].decode() for m in masks]
    gt = [{"video_id": "m", "num_frames": 1, "height": h, "width": w, "trajectories": [
        {"track_id": i, "frames": [{"frame_index": 0, "mask_rle": rles[i]}]} for i in range(2)]}]
    pred = [{"video_id": "m", "num_frames": 1, "height": h, "width": w, "trajectories": [
        {"track_id": i, "score": 1.0, "frames": [{"frame_index": 0, "mask_rle": rles[2 + i]}]} for i in range(2)]}]
    r = compute_chota(pred, gt, iou_type="mask", caption_metrics=(), alphas=(0.01,))
    inter = (masks[:2, None] & masks[None, 2:]).sum((2, 3))
    union = (masks[:2, None] | masks[None, 2:]).sum((2, 3))
    iou = inter / union
    # both GT matched (IoU ~1/3 > 0.01): LocA is the mean IoU of the optimal assignment
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-iou)
    assert r["LocA"] == pytest.approx(iou[rows, cols].mean())


def test_box_iou_by_hand():
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 5, 10, 10], [20, 20, 1, 1], [0, 0, 0, 0]]))
    np.testing.assert_allclose(iou, [[25 / 175, 0.0, 0.0]])


# --------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p[0]["trajectories"][0]["frames"].append({"frame_index": 0, "box": [1, 1, 1, 1]}), "duplicate track id in one frame"),
        (lambda p: p[0]["trajectories"].append(track(1, [2])), "duplicate track_id"),
        (lambda p: p[0]["trajectories"][0]["frames"][0].update(box=[0, 0, -1, 5]), "negative width"),
        (lambda p: p[0]["trajectories"][0]["frames"][0].update(box=[float("nan"), 0, 1, 5]), r"frame 0: `box` must be finite, got nan"),
        (lambda p: p[0]["trajectories"][0]["frames"][0].update(frame_index=6), "out of range"),
        (lambda p: p[0]["trajectories"][0]["frames"][0].update(frame_index=-1), "out of range"),
        (lambda p: p[0].update(video_id="other"), "video ids of predictions and references differ"),
        (lambda p: p[0].update(num_frames=7), "num_frames differs"),
        (lambda p: p[0]["trajectories"][0].pop("score"), "need a `score`"),
        (lambda p: p.append(dict(p[0])), "duplicate video_id"),
    ],
)
def test_bad_input_is_a_clear_value_error(mutate, message):
    gt = [video([track(1, range(6))])]
    pred = [video([track(1, range(6))])]
    mutate(pred)
    with pytest.raises(ValueError, match=message):
        chota(pred, gt)


def test_bad_arguments():
    gt = [video([track(1, range(6))])]
    with pytest.raises(ValueError, match="iou_type"):
        chota(gt, gt, iou_type="segm")
    with pytest.raises(ValueError, match="alphas"):
        chota(gt, gt, alphas=(0.0,))
    with pytest.raises(ValueError, match="caption_metrics"):
        chota(gt, gt, caption_metrics=("bleu",))
    with pytest.raises(TypeError, match="predictions"):
        chota("nope", gt)
    with pytest.raises(ValueError, match="mask_rle"):
        chota(gt, gt, iou_type="mask")


def test_missing_runtime_is_a_clear_error(monkeypatch):
    from captionformer_hf.metrics import caption_scores

    monkeypatch.setattr(caption_scores.shutil, "which", lambda name: None)
    monkeypatch.setattr(caption_scores.MeteorScorer, "_instance", None)
    gt = [video([track(1, range(6), caption="a b c d")])]
    with pytest.raises(caption_scores.CaptionMetricUnavailableError, match="Java runtime"):
        chota(gt, gt, caption_metrics=("meteor",))
    with pytest.raises(caption_scores.CaptionMetricUnavailableError, match="SPICE|Java"):
        chota(gt, gt, caption_metrics=("spice",))


def test_spice_without_corenlp_jars_is_a_clear_error():
    from captionformer_hf.metrics import caption_scores

    if caption_scores.spice_available():
        pytest.skip("SPICE's CoreNLP jars are installed here")
    gt = [video([track(1, range(6), caption="a b c d")])]
    with pytest.raises(caption_scores.CaptionMetricUnavailableError, match="CoreNLP"):
        chota(gt, gt, caption_metrics=("cider", "spice"))


def test_core_imports_neither_torch_nor_evaluate():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # as if torch and evaluate were not installed\n"
        "sys.modules['evaluate'] = None\n"
        "from captionformer_hf.metrics import compute_chota\n"
        "v = [{'video_id': 1, 'num_frames': 1, 'trajectories': []}]\n"
        "print(compute_chota(v, v, caption_metrics=('cider',))['CHOTA'])\n"
        "assert sys.modules['torch'] is None and sys.modules['evaluate'] is None\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ cross-checks
def random_videos(seed, num_videos=4, num_frames=12, num_tracks=4, with_captions=False):
    rng = np.random.default_rng(seed)
    words = "a the red blue green square circle moving left right up down bouncing still small big".split()
    refs, preds = [], []
    for v in range(num_videos):
        gt_tracks, pred_tracks = [], []
        next_pred_id = 100
        for t in range(num_tracks):
            start = rng.integers(0, num_frames // 2)
            end = rng.integers(start + 1, num_frames + 1)
            frames = [f for f in range(start, end) if rng.random() > 0.15]
            if not frames:
                continue
            x, y = rng.uniform(0, 80, 2)
            vx, vy = rng.uniform(-3, 3, 2)
            w, h = rng.uniform(8, 30, 2)
            caption = " ".join(rng.choice(words, rng.integers(3, 7))) if with_captions and rng.random() > 0.2 else ""
            gt_tracks.append({"track_id": t, "caption": caption, "frames": [
                {"frame_index": int(f), "box": [x + vx * f, y + vy * f, w, h]} for f in frames]})
            # prediction: noisy copy, sometimes split into two ids, frames dropped, random scores
            split = rng.integers(start, end + 1) if rng.random() < 0.4 else end + 1
            pieces = [[f for f in frames if f < split], [f for f in frames if f >= split]]
            for piece in pieces:
                kept = [f for f in piece if rng.random() > 0.1]
                if not kept:
                    continue
                noise = rng.normal(0, 2.5, (len(kept), 4))
                pred_caption = " ".join(rng.choice(words, rng.integers(2, 7))) if with_captions else ""
                pred_tracks.append({"track_id": next_pred_id, "caption": pred_caption, "score": float(rng.uniform(0.3, 1.0)), "frames": [
                    {"frame_index": int(f), "box": [x + vx * f + n[0], y + vy * f + n[1], max(1.0, w + n[2]), max(1.0, h + n[3])]}
                    for f, n in zip(kept, noise)]})
                next_pred_id += 1
        for _ in range(rng.integers(0, 3)):  # false positives
            f0 = int(rng.integers(0, num_frames))
            pred_tracks.append({"track_id": next_pred_id, "caption": "x y z", "score": float(rng.uniform(0.3, 1.0)), "frames": [
                {"frame_index": f, "box": list(rng.uniform(0, 90, 2)) + list(rng.uniform(5, 30, 2))} for f in range(f0, min(num_frames, f0 + 3))]})
            next_pred_id += 1
        order = rng.permutation(len(pred_tracks))
        refs.append({"video_id": f"v{v}", "num_frames": num_frames, "trajectories": gt_tracks})
        preds.append({"video_id": f"v{v}", "num_frames": num_frames, "trajectories": [pred_tracks[i] for i in order]})
    return preds, refs


def trackeval_hota(preds, refs, score_threshold):
    """TrackEval's HOTA on the same data (its own per-frame loop and combine)."""
    from trackeval.metrics import HOTA

    metric = HOTA()
    results = {}
    for pred, ref in zip(preds, refs):
        num_frames = ref["num_frames"]
        gt_det = [[] for _ in range(num_frames)]
        tr_det = [[] for _ in range(num_frames)]
        gt_ids = sorted({t["track_id"] for t in ref["trajectories"] if t["frames"]})
        kept = [t for t in pred["trajectories"] if t["score"] > score_threshold]
        tr_ids = sorted({t["track_id"] for t in kept if t["frames"]})
        for t in ref["trajectories"]:
            for fr in t["frames"]:
                gt_det[fr["frame_index"]].append((gt_ids.index(t["track_id"]), fr["box"]))
        for t in kept:
            for fr in t["frames"]:
                tr_det[fr["frame_index"]].append((tr_ids.index(t["track_id"]), fr["box"]))
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
    return results, metric.combine_sequences(results)


@pytest.mark.parametrize("seed", range(6))
def test_hota_equals_trackeval(seed):
    preds, refs = random_videos(seed)
    per_video, combined = trackeval_hota(preds, refs, 0.5)
    ours = compute_chota(preds, refs, alphas=TRACKEVAL_ALPHAS, caption_metrics=(), score_threshold=0.5)
    for field in ("HOTA", "DetA", "AssA", "DetRe", "DetPr", "AssRe", "AssPr", "LocA", "HOTA_TP", "HOTA_FN", "HOTA_FP"):
        np.testing.assert_allclose(ours["per_alpha"][field], combined[field], atol=1e-6, err_msg=field)
        for video_id, res in per_video.items():
            assert ours["per_video"][video_id][field] == pytest.approx(np.mean(res[field]), abs=1e-6), (video_id, field)
    # the single published alpha is TrackEval's alpha = 0.5 entry
    half = compute_chota(preds, refs, alphas=(0.5,), caption_metrics=(), score_threshold=0.5)
    assert half["DetA"] == pytest.approx(combined["DetA"][9], abs=1e-6)
    assert half["AssA"] == pytest.approx(combined["AssA"][9], abs=1e-6)


def test_dense_hota_sequence_equals_trackeval():
    """The public dense-array entry point (per-frame slots, -1 for empty ones) gives TrackEval's eval_sequence and
    matches only filled slots."""
    from trackeval.metrics import HOTA

    from captionformer_hf.metrics import hota_sequence

    rng = np.random.default_rng(5)
    num_frames, slots, num_gt, num_pred = 12, 5, 4, 6
    # a track appears at most once a frame
    gt_ids = np.stack([np.r_[rng.permutation(num_gt), [-1]] for _ in range(num_frames)])
    pred_ids = np.stack([rng.permutation(num_pred)[:slots] for _ in range(num_frames)])
    gt_ids[rng.random(gt_ids.shape) < 0.3] = -1
    pred_ids[rng.random(pred_ids.shape) < 0.3] = -1
    similarity = np.where(rng.random((num_frames, slots, slots)) < 0.5, rng.random((num_frames, slots, slots)), 0.0)
    similarity[gt_ids < 0] = 0.3  # garbage in empty slots must be ignored
    similarity[pred_ids[:, None, :].repeat(slots, 1) < 0] = 0.3
    ours, matches = hota_sequence(similarity, gt_ids, pred_ids, num_gt, num_pred, alphas=TRACKEVAL_ALPHAS)
    data = {"num_gt_dets": int((gt_ids >= 0).sum()), "num_tracker_dets": int((pred_ids >= 0).sum()),
            "num_gt_ids": num_gt, "num_tracker_ids": num_pred,
            "gt_ids": [row[row >= 0] for row in gt_ids], "tracker_ids": [row[row >= 0] for row in pred_ids],
            "similarity_scores": [similarity[f][gt_ids[f] >= 0][:, pred_ids[f] >= 0] for f in range(num_frames)]}
    theirs = HOTA().eval_sequence(data)
    for field in ("HOTA", "DetA", "AssA", "LocA", "HOTA_TP", "HOTA_FN", "HOTA_FP"):
        np.testing.assert_allclose(ours[field], theirs[field], atol=1e-9, err_msg=field)
    for frames, gt_slots, pred_slots in matches:
        assert (gt_ids[frames, gt_slots] >= 0).all() and (pred_ids[frames, pred_slots] >= 0).all()


def test_hota_equals_trackeval_with_crowded_frames():
    """Many overlapping objects: the per-frame assignment is not obvious and falls back to the Hungarian solver."""
    preds, refs = random_videos(42, num_videos=2, num_frames=20, num_tracks=12)
    _, combined = trackeval_hota(preds, refs, 0.3)
    ours = compute_chota(preds, refs, alphas=TRACKEVAL_ALPHAS, caption_metrics=(), score_threshold=0.3)
    for field in ("HOTA", "DetA", "AssA", "LocA", "HOTA_TP"):
        np.testing.assert_allclose(ours["per_alpha"][field], combined[field], atol=1e-6, err_msg=field)


@pytest.mark.parametrize("seed", range(5))
def test_cider_equals_pycocoevalcap(seed):
    from pycocoevalcap.cider.cider import Cider

    rng = np.random.default_rng(seed)
    words = "a the red blue green square circle moving left right up down bouncing still small big".split()
    sentences = [" ".join(rng.choice(words, rng.integers(1, 9))) for _ in range(12)] + [""]
    n = 40
    refs = [sentences[i] for i in rng.integers(0, 12, n)]  # non-empty GT captions
    cands = [sentences[i] for i in rng.integers(0, 13, n)]
    expected_mean, expected = Cider().compute_score({i: [r] for i, r in enumerate(refs)}, {i: [c] for i, c in enumerate(cands)})
    ours = cider_d_pair_scores(refs, cands)
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    # unique pairs with multiplicities give the same per-pair scores
    unique = {}
    for pair in zip(refs, cands):
        unique[pair] = unique.get(pair, 0) + 1
    compact = cider_d_pair_scores([r for r, _ in unique], [c for _, c in unique], list(unique.values()))
    lookup = dict(zip(unique, compact))
    np.testing.assert_allclose([lookup[p] for p in zip(refs, cands)], expected, atol=1e-6)


@pytest.mark.skipif(not HAS_JAVA, reason="METEOR needs Java")
def test_meteor_equals_pycocoevalcap(reference_meteor):
    from captionformer_hf.metrics import MeteorScorer

    refs = ["a red square moving left", "a blue circle bouncing", "a green triangle standing still", "a red square moving left"]
    cands = ["a red square moving right", "a blue circle", "the triangle is still", "a red square moving left"]
    _, expected = reference_meteor.compute_score({i: [r] for i, r in enumerate(refs)}, {i: [c] for i, c in enumerate(cands)})
    ours = MeteorScorer.shared().pair_scores(refs, cands)
    np.testing.assert_allclose(ours, expected, atol=1e-6)


@pytest.mark.skipif(not HAS_JAVA, reason="METEOR needs Java")
def test_capa_with_captions_matches_pycocoevalcap_on_matched_pairs(reference_meteor):
    """End to end on random videos with captions: per video, CapA_meteor equals pycocoevalcap's METEOR summed over
    the matched pairs that TrackEval-identical matching produces, for perfect-localisation predictions."""
    preds, refs = random_videos(7, num_videos=3, with_captions=True)
    r = compute_chota(preds, refs, caption_metrics=("cider", "meteor"), score_threshold=0.0)
    assert 0 < r["TP_with_caps"] <= r["HOTA_TP"]
    assert r["CapA"] == pytest.approx((r["CapA_cider"] + r["CapA_meteor"]) / 2)
    # a prediction identical to the GT: CapA_meteor is METEOR(gt, gt) averaged over all captioned detections
    perfect = [dict(v, trajectories=[dict(t, score=1.0) for t in v["trajectories"]]) for v in refs]
    r = compute_chota(perfect, refs, caption_metrics=("meteor",), score_threshold=0.5)
    pairs = [t["caption"] for v in refs for t in v["trajectories"] for _ in t["frames"] if t["caption"]]
    _, expected = reference_meteor.compute_score({i: [c] for i, c in enumerate(pairs)}, {i: [c] for i, c in enumerate(pairs)})
    assert r["TP_with_caps"] == len(pairs)
    assert r["CapA_meteor"] == pytest.approx(float(np.mean(expected)), abs=1e-6)


def test_the_array_path_of_box_parsing_gives_the_entry_by_entry_result(monkeypatch):
    """Well-formed trajectories are checked and parsed by the format's validator with array operations; the result is
    the one of its entry-by-entry checks, arrays and CHOTA alike (JSON numbers and numpy numbers, scores filtered,
    frames unordered, per-frame captions)."""
    import captionformer_hf.processing.trajectory_captionformer as trajectory_format

    rng = np.random.default_rng(5)
    videos = []
    for v in range(3):
        trajectories = []
        for t in range(4):
            frames = [int(f) for f in rng.permutation(20)[:12]]
            trajectories.append({"track_id": t, "score": float(rng.uniform(0.3, 1.0)), "caption": f"a thing {t}",
                                 "frames": [{"frame_index": f, "box": [np.float64(rng.uniform(0, 50)), float(rng.uniform(0, 50)),
                                                                       int(rng.integers(5, 20)), float(rng.uniform(5, 20))],
                                             **({"score": float(rng.uniform(0, 1))} if f % 3 else {}),
                                             **({"caption": "a frame caption"} if f % 5 == 0 else {})}
                                            for f in frames]})
        videos.append({"video_id": f"v{v}", "num_frames": 20, "trajectories": trajectories})
    videos[0]["trajectories"].append({"track_id": 4, "frames": []})
    fast = compute_chota(videos, videos, caption_metrics=("cider",), alphas=(0.3, 0.5, 0.7))
    fast_arrays = [trajectory_format.check_video(v, require_scores=True, require_boxes=True) for v in videos]
    calls = []
    array_path = trajectory_format._fast_trajectory
    monkeypatch.setattr(trajectory_format, "_fast_trajectory", lambda *args: calls.append(array_path(*args)))
    slow = compute_chota(videos, videos, caption_metrics=("cider",), alphas=(0.3, 0.5, 0.7))
    assert len(calls) == 2 * (3 * 4 + 1) and all(call is not None for call in calls)  # the array path took every one
    assert fast == slow
    for (num_frames, fast_tracks), video in zip(fast_arrays, videos):
        assert num_frames == 20
        slow_frames, slow_tracks = trajectory_format.check_video(video, require_scores=True, require_boxes=True)
        for a, b in zip(fast_tracks, slow_tracks, strict=True):
            for field in ("frame_indices", "boxes", "scores"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
                assert getattr(a, field).dtype == getattr(b, field).dtype
            assert (a.index, a.track_id, a.captions, a.masks) == (b.index, b.track_id, b.captions, b.masks)
        for t, track in enumerate(slow_tracks[:4]):  # a frame's own caption, else its trajectory's
            assert track.captions == ["a frame caption" if f % 5 == 0 else f"a thing {t}" for f in track.frame_indices]
    # a bool where a number belongs, in one box of many: refused by name (the entry-by-entry checks find it)
    monkeypatch.undo()
    videos[1]["trajectories"][2]["frames"][7]["box"][0] = True
    frame = videos[1]["trajectories"][2]["frames"][7]["frame_index"]
    with pytest.raises(TypeError, match=f"video 'v1', reference, track_id 2, frame {frame}: `box` must be a number, got bool True"):
        compute_chota(videos, videos, caption_metrics=("cider",))


def test_small_components_assigned_as_the_solver_would(monkeypatch):
    """The frame assignment of components with at most 2 x 2 detections is taken at once (the better diagonal); it
    must pick the same pairs as solving every component with linear_sum_assignment, also on exact ties (scores in
    quarters) and on 1 x 2 / 2 x 1 components."""
    import captionformer_hf.metrics.hota as hota

    rng = np.random.default_rng(3)
    solver_only = lambda gt, pred, score, rest, component: (np.zeros(0, np.int64), rest, component)  # noqa: E731
    decided = []
    small = hota._assign_small_components

    def counting(*args):
        result = small(*args)
        decided.append(len(result[0]))
        return result

    monkeypatch.setattr(hota, "_assign_small_components", counting)
    for trial in range(400):
        num_gt, num_pred = int(rng.integers(1, 25)), int(rng.integers(1, 25))
        pairs = np.unique(rng.integers(0, [num_gt, num_pred], (int(rng.integers(1, 50)), 2)), axis=0)
        gt, pred = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
        score = rng.integers(1, 4, len(gt)) / 4.0 if trial % 2 else rng.uniform(0, 1, len(gt))
        fast = hota._assign_pairs(gt, pred, score, num_gt, num_pred)
        with monkeypatch.context() as patch:
            patch.setattr(hota, "_assign_small_components", solver_only)
            reference = hota._assign_pairs(gt, pred, score, num_gt, num_pred)
        np.testing.assert_array_equal(fast, reference)
    assert sum(decided) > 100  # the fast path did take pairs (144 with this seed)
    # hand-computed: one GT detection over two predictions takes the better; a 2 x 2 takes the better diagonal
    gt, pred = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 2, 3, 2, 3])
    score = np.array([0.3, 0.6, 0.9, 0.2, 0.5, 0.4])  # diagonal 0.9 + 0.4 > anti-diagonal 0.2 + 0.5
    np.testing.assert_array_equal(hota._assign_pairs(gt, pred, score, 3, 4), [1, 2, 5])
