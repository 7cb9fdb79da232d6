"""`captionformer evaluate --protocol`: the benchmarks' published protocols."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from captionformer_hf.cli import main
from captionformer_hf.metrics import compute_chota
from captionformer_hf.metrics.formats import (
    coco_predictions_to_videos,
    coco_to_videos,
    load_videos,
    track_results_to_coco_videos,
    videos_to_track_results,
)
from captionformer_hf.metrics.protocols import evaluate_protocol, restrict_to_frames, smot_caption_pairs

H, W = 40, 60


def rle(x, y, w, h):
    mask = np.zeros((H, W), np.uint8)
    mask[y : y + h, x : x + w] = 1
    return mask_utils.encode(np.asfortranarray(mask))["counts"].decode()


def coco_gt(with_masks=True, captions=True):
    """Two videos of 4 annotated frames; video 1 has two objects."""
    images, annotations = [], []
    objects = {1: [(0, "a red dog running", (5, 5, 10, 10))], 2: [(0, "a cat sitting", (30, 10, 12, 12)),
                                                                 (1, "a bird flying up", (2, 20, 8, 8))]}
    image_id = 1
    for video_id, tracks in objects.items():
        for frame in range(4):
            images.append({"id": image_id, "video_id": video_id, "height": H, "width": W})
            for track_id, caption, (x, y, w, h) in tracks:
                annotation = {"id": len(annotations) + 1, "image_id": image_id, "track_id": track_id,
                              "bbox": [x + frame, y, w, h], "caption": caption if captions else "", "category_id": 1}
                if with_masks:
                    annotation["segmentation"] = {"size": [H, W], "counts": rle(x + frame, y, w, h)}
                annotations.append(annotation)
            image_id += 1
    return {"images": images, "annotations": annotations}


def predicted_videos(shift=1):
    """Trajectory-format predictions: good boxes/masks, one caption right, one partly, one false positive."""
    def track(track_id, caption, box, frames, score=0.9):
        x, y, w, h = box
        return {"track_id": track_id, "score": score, "category_id": 1, "caption": caption,
                "frames": [{"frame_index": f, "box": [x + f + shift, y, w, h], "score": score,
                            "mask_rle": rle(x + f + shift, y, w, h)} for f in frames]}
    return [
        {"video_id": 1, "num_frames": 4, "height": H, "width": W,
         "trajectories": [track(0, "a red dog running", (5, 5, 10, 10), range(4))]},
        {"video_id": 2, "num_frames": 4, "height": H, "width": W,
         "trajectories": [track(0, "a cat standing", (30, 10, 12, 12), range(4)),
                          track(1, "a bird flying up", (2, 20, 8, 8), range(3)),
                          track(2, "a plane", (40, 30, 5, 5), range(2), score=0.4)]},
    ]


def ref_per_track_to_coco(results, gt, masks=False):
    """The published convert_per_track_to_coco (threshold 0), re-implemented from reading it."""
    out = []
    for vid in sorted({r["video_id"] for r in results}):
        image_ids = [img["id"] for img in gt["images"] if img["video_id"] == vid]
        for track_id, track in enumerate([r for r in results if r["video_id"] == vid]):
            for f in range(len(image_ids)):
                score = track["score"] if masks else track["score_per_frame"][f]
                if score <= 0.0:
                    continue
                value = track["segmentations"][f] if masks else track["bbox"][f]
                if value is None:
                    continue
                entry = {"image_id": image_ids[f], "video_id": vid, "category_id": track["category_id"],
                         "score": score, "track_id": track_id, "caption": track["caption"]}
                entry["segmentation" if masks else "bbox"] = value
                out.append(entry)
    return out


@pytest.mark.parametrize("shuffled", [False, True])
@pytest.mark.parametrize("masks", [False, True])
def test_per_track_results_are_read_as_the_published_converter_does(masks, shuffled):
    """Frame f of a per-track result is the f-th image of its video in the ground truth's `images` order, as the
    published converter; `shuffled`: that order is not the image ids' (the GT's frames stay ordered by id)."""
    gt = coco_gt()
    if shuffled:
        gt = {**gt, "images": list(reversed(gt["images"]))}
    results = videos_to_track_results(predicted_videos(), masks=masks)
    if not masks:
        for result in results:
            result.pop("segmentations", None)
    ours = track_results_to_coco_videos(results, gt)
    reference = coco_predictions_to_videos(ref_per_track_to_coco(results, gt, masks=masks), gt)
    kwargs = {"iou_type": "mask" if masks else "box", "caption_metrics": ("cider",), "score_threshold": 0.0}
    a = compute_chota(ours, coco_to_videos(gt), **kwargs)
    b = compute_chota(reference, coco_to_videos(gt), **kwargs)
    for key in ("CHOTA", "DetA", "AssA", "CapA", "HOTA_TP", "HOTA_FP"):
        assert a[key] == pytest.approx(b[key], abs=1e-12), key
    assert a["CHOTA"] > 0 and a["DetA"] < 1  # (CIDEr is on its x10 scale: CapA may pass 1)
    if shuffled:  # the predictions were made on id order: read in reversed order they miss, as the release's would
        straight = compute_chota(track_results_to_coco_videos(results, coco_gt()), coco_to_videos(gt), **kwargs)
        assert a["DetA"] < straight["DetA"]


@pytest.mark.parametrize("name, iou_type", [("vidstg", "box"), ("lvviscap", "mask")])
def test_box_and_mask_protocols_are_chota_with_cider_at_threshold_zero(name, iou_type):
    gt = coco_to_videos(coco_gt())
    predictions = predicted_videos()
    result = evaluate_protocol(name, predictions, gt)
    expected = compute_chota(predictions, gt, iou_type=iou_type, caption_metrics=("cider",), score_threshold=0.0)
    assert result["CHOTA"] == expected["CHOTA"] and result["protocol"] == name
    assert "CapA_cider" in result and "CapA_meteor" not in result
    # the 0.4-score false positive counts (threshold 0): it lowers DetA compared with the default 0.5 threshold
    default = compute_chota(predictions, gt, iou_type=iou_type, caption_metrics=("cider",), score_threshold=0.5)
    assert result["DetA"] < default["DetA"]


def test_vln_keeps_the_sparse_frames_of_dense_predictions():
    gt = coco_to_videos(coco_gt())  # 4 annotated frames per video
    sparse = predicted_videos()  # what the model predicts on the annotated frames
    dense_frames = {1: [0, 3, 6, 9], 2: [1, 2, 5, 8]}  # the annotated frames inside 11-frame videos
    dense = []
    for video in sparse:
        frames = dense_frames[video["video_id"]]
        dense.append({**video, "num_frames": 11, "trajectories": [
            {**t, "frames": [dict(f, frame_index=frames[f["frame_index"]]) for f in t["frames"]]
             + [dict(t["frames"][0], frame_index=frames[-1] + 1)]}  # a detection on an unannotated frame
            for t in video["trajectories"]]})
    extended = {"videos": [{"id": v, "sparse_frame_indices": f} for v, f in dense_frames.items()]}
    result = evaluate_protocol("vln", dense, gt, sparse_frames=extended)
    assert result["CHOTA"] == pytest.approx(evaluate_protocol("vln", sparse, gt)["CHOTA"], abs=1e-12)
    assert restrict_to_frames(dense, dense_frames)[0]["num_frames"] == 4
    # as the published filter ([a for i, a in enumerate(track) if i in sparse_frame_indices]): order, repeats and
    # frames past the video's end do not change which frames are kept or their renumbering
    messy = {1: [9, 3, 0, 6, 3, 40], 2: [8, 1, 5, 2, 2]}
    assert restrict_to_frames(dense, messy) == restrict_to_frames(dense, dense_frames)
    extended_messy = {"videos": [{"id": v, "sparse_frame_indices": f} for v, f in messy.items()]}
    assert evaluate_protocol("vln", dense, gt, sparse_frames=extended_messy)["CHOTA"] == result["CHOTA"]
    with pytest.raises(ValueError, match="cover more frames than the sparse ground truth.*--sparse-frames"):
        evaluate_protocol("vln", dense, gt)


def test_bensmot_pairs_each_track_with_its_best_mean_iou_ground_truth():
    from pycocoevalcap.cider.cider import Cider

    gt = coco_to_videos(coco_gt())
    predictions = predicted_videos()
    refs, cands = smot_caption_pairs(predictions, gt)
    # video 1: the dog; video 2: cat -> cat, bird -> bird, the false positive overlaps nothing -> the first track
    assert cands == ["a red dog running", "a cat standing", "a bird flying up", "a plane"]
    assert refs == ["a red dog running", "a cat sitting", "a bird flying up", "a cat sitting"]
    result = evaluate_protocol("bensmot", predictions, gt)
    score, _ = Cider().compute_score({i: [r] for i, r in enumerate(refs)}, {i: [c] for i, c in enumerate(cands)})
    assert result["SMOT_CIDEr"] == pytest.approx(score, abs=1e-9) and result["SMOT_pairs"] == 4
    hota = compute_chota(predictions, gt, iou_type="box", caption_metrics=(), score_threshold=0.0)
    assert (result["DetA"], result["AssA"]) == (hota["DetA"], hota["AssA"])
    # BenSMOT defines no CHOTA: only the figures it defines are reported (CHOTA with the full CapA on request)
    assert "CHOTA" not in result and "CapA" not in result and "CHOTA" not in result["per_alpha"]
    assert all("CHOTA" not in video for video in result["per_video"].values())


def test_protocols_name_the_missing_annotations():
    with pytest.raises(ValueError, match="needs ground-truth masks.*video 1, track 0, frame 0"):
        evaluate_protocol("lvviscap", predicted_videos(), coco_to_videos(coco_gt(with_masks=False)))
    with pytest.raises(ValueError, match="ground truth has none"):
        evaluate_protocol("vidstg", predicted_videos(), coco_to_videos(coco_gt(captions=False)))
    with pytest.raises(ValueError, match="`protocol` must be one of"):
        evaluate_protocol("coco", predicted_videos(), coco_to_videos(coco_gt()))


def test_protocols_check_both_sides_with_the_format_validator():
    """A protocol and the size breakdown validate predictions and references before reading them (the size classes
    read mask areas with pycocotools, which must never see a bad RLE string)."""
    from captionformer_hf.metrics.protocols import size_breakdown

    predictions = predicted_videos()
    predictions[1]["trajectories"][1]["frames"][2]["mask_rle"] = "0"
    with pytest.raises(ValueError, match="video 2, prediction, track_id 1, frame 2: bad mask RLE"):
        evaluate_protocol("lvviscap", predictions, coco_to_videos(coco_gt()))
    predictions[1]["trajectories"][1]["frames"][2]["box"] = [1, 2, -3, 4]  # the box too: reported first
    with pytest.raises(ValueError, match="video 2, prediction, track_id 1, frame 2: box .* negative width"):
        size_breakdown(predictions, coco_to_videos(coco_gt()), iou_type="box", caption_metrics=())
    references = coco_to_videos(coco_gt())
    del references[0]["num_frames"]
    with pytest.raises(ValueError, match="video 1, reference: `num_frames` must be a positive integer, got None"):
        evaluate_protocol("vidstg", predicted_videos(), references)


def test_cli_protocol(tmp_path, capsys):
    (tmp_path / "gt.json").write_text(json.dumps(coco_gt()))
    results = videos_to_track_results(predicted_videos())
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "preds.json").write_text(json.dumps(predicted_videos()))
    for predictions in ("results.json", "preds.json"):  # the release's per-track format and ours
        assert main(["evaluate", str(tmp_path / predictions), str(tmp_path / "gt.json"), "--protocol", "vidstg",
                     "--out", str(tmp_path / "r.json")]) == 0
        saved = json.loads((tmp_path / "r.json").read_text())
        assert saved["protocol"] == "vidstg" and "CapA_cider" in saved
    expected = evaluate_protocol("vidstg", *load_videos(str(tmp_path / "preds.json"), str(tmp_path / "gt.json"))[:2])
    assert saved["CHOTA"] == pytest.approx(expected["CHOTA"])
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "preds.json"), str(tmp_path / "gt.json"), "--protocol", "vidstg",
                 "--iou-type", "mask"]) == 2
    assert "--protocol vidstg sets the evaluation settings; drop --iou-type" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "preds.json"), str(tmp_path / "gt.json"), "--full-capa"]) == 2
    assert "go with --protocol" in capsys.readouterr().err
    # --by-size: the per-size breakdown of the same settings, in the saved result and the printed summary
    from captionformer_hf.metrics.protocols import chota_by_object_size

    assert main(["evaluate", str(tmp_path / "preds.json"), str(tmp_path / "gt.json"), "--protocol", "vidstg",
                 "--by-size", "--out", str(tmp_path / "s.json")]) == 0
    saved = json.loads((tmp_path / "s.json").read_text())
    sizes = chota_by_object_size(*load_videos(str(tmp_path / "preds.json"), str(tmp_path / "gt.json"))[:2],
                                 iou_type="box", caption_metrics=("cider",), score_threshold=0.0)
    assert set(saved["by_size"]) == {"small", "medium", "large"}
    for size, row in saved["by_size"].items():
        assert row["CHOTA"] == pytest.approx(sizes["metrics"][size]["CHOTA"])
        assert row["gt_count"] == sizes["stats"][size]["gt_count"]
    assert saved["by_size"]["small"]["gt_count"] > 0 and "CHOTA small" in capsys.readouterr().out
    # without a protocol: the breakdown of the given settings
    from captionformer_hf.metrics.protocols import size_breakdown

    assert main(["evaluate", str(tmp_path / "preds.json"), str(tmp_path / "gt.json"), "--caption-metrics", "cider",
                 "--score-threshold", "0.6", "--by-size", "--out", str(tmp_path / "t.json")]) == 0
    expected = size_breakdown(*load_videos(str(tmp_path / "preds.json"), str(tmp_path / "gt.json"))[:2],
                              iou_type="box", alphas=(0.5,), caption_metrics=("cider",), score_threshold=0.6)
    saved = json.loads((tmp_path / "t.json").read_text())["by_size"]
    assert set(saved) == set(expected) and all(saved[size] == pytest.approx(expected[size]) for size in expected)


def test_detection_size_classes_as_the_release():
    """Box area w * h when positive, else the mask's area; [0, 30k) small, [30k, 200k) medium, [200k, inf) large."""
    from captionformer_hf.metrics.protocols import detection_size
    from captionformer_hf.processing import rle_encode

    assert detection_size({"box": [5, 5, 100, 100]}, 1000, 1000) == "small"
    assert detection_size({"box": [0, 0, 150, 200]}, 1000, 1000) == "medium"  # exactly 30,000
    assert detection_size({"box": [0, 0, 400, 500]}, 1000, 1000) == "large"  # exactly 200,000
    mask = np.zeros((1000, 1000), np.uint8)
    mask[:200, :200] = 1
    assert detection_size({"box": [0, 0, 0, 10], "mask_rle": rle_encode(mask)}, 1000, 1000) == "medium"  # 40,000
    assert detection_size({"box": [0, 0, 0, 0]}, 1000, 1000) is None


def test_chota_by_object_size_scores_each_class_on_its_own_detections():
    from captionformer_hf.metrics.protocols import chota_by_object_size

    def video(tracks):
        return {"video_id": 1, "num_frames": 3, "height": 1000, "width": 1000, "trajectories": [
            {"track_id": i, "caption": caption, "score": 0.9,
             "frames": [{"frame_index": f, "box": box, "score": 0.9} for f in range(3)]}
            for i, (caption, box) in enumerate(tracks)]}

    small, large = [0, 0, 100, 100], [300, 300, 500, 500]
    references = [video([("a small red square", small), ("a big blue circle", large)])]
    # the small object found exactly; the large one predicted smaller (160,000 px²: medium), so large has no
    # prediction and medium no reference
    predictions = [video([("a small red square", small), ("a big blue circle", [300, 300, 400, 400])])]
    kwargs = {"iou_type": "box", "caption_metrics": ("meteor",), "score_threshold": 0.0}
    result = chota_by_object_size(predictions, references, **kwargs)
    assert result["stats"] == {"small": {"gt_count": 3, "pred_count": 3}, "medium": {"gt_count": 0, "pred_count": 3},
                               "large": {"gt_count": 3, "pred_count": 0}}
    small_result = result["metrics"]["small"]
    assert small_result["DetA"] == pytest.approx(1.0) and small_result["AssA"] == pytest.approx(1.0)
    alone = compute_chota([video([("a small red square", small)])], [video([("a small red square", small)])], **kwargs)
    assert small_result["CHOTA"] == pytest.approx(alone["CHOTA"], abs=1e-12) and alone["CHOTA"] > 0
    for size in ("medium", "large"):
        assert result["metrics"][size] == {"CHOTA": 0.0, "HOTA": 0.0, "DetA": 0.0, "AssA": 0.0}


def test_bensmot_language_scores_as_the_release_script():
    """eval_vu.py's quirks kept: BLEU over characters (captions passed as strings), METEOR with each caption one
    token (an exact match scores 0.5), ROUGE-L and CIDEr-D from pycocoevalcap."""
    from nltk.translate.bleu_score import corpus_bleu

    from captionformer_hf.metrics.protocols import smot_language_scores

    gts, preds = ["a red square", "a cat sitting"], ["a red circle", "a cat sitting"]
    scores = smot_language_scores(gts, preds, ("bleu", "rouge"))
    characters = corpus_bleu([[list(g)] for g in gts], [list(p) for p in preds])
    words = corpus_bleu([[g.split()] for g in gts], [p.split() for p in preds])
    assert scores["bleu"] == pytest.approx(characters, abs=1e-12) and abs(characters - words) > 0.05
    # ROUGE-L by hand (beta 1.2): "a red square" / "a red circle": LCS 2 of 3 words, P = R = 2/3 -> F = 2/3; exact: 1
    assert scores["rouge"] == pytest.approx((2 / 3 + 1) / 2, abs=1e-9)
    assert smot_language_scores(["a cat, sitting."], ["a cat sitting"], ("meteor",))["meteor"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="pair one to one"):
        smot_language_scores(gts, preds[:1])
    result = evaluate_protocol("bensmot", predicted_videos(), coco_to_videos(coco_gt()))
    refs, cands = smot_caption_pairs(predicted_videos(), coco_to_videos(coco_gt()))
    assert result["SMOT_BLEU"] == pytest.approx(smot_language_scores(refs, cands, ("bleu",))["bleu"])
    assert result["SMOT_ROUGE"] == pytest.approx(smot_language_scores(refs, cands, ("rouge",))["rouge"])
    assert 0 < result["SMOT_ROUGE"] < 1
