"""Official-format converters, the `captionformer evaluate` CLI and the evaluate module."""

import json
from pathlib import Path

import pytest

from captionformer_hf.cli import main
from captionformer_hf.metrics import compute_chota
from captionformer_hf.metrics.formats import (
    coco_predictions_to_videos,
    coco_to_videos,
    load_videos,
    track_results_to_videos,
    ytvis_to_videos,
)

ROOT = Path(__file__).resolve().parents[1]

COCO_GT = {
    "images": [
        # video 7 has images 12, 10, 11 (frame order = sorted image ids: 10, 11, 12); video 8 one image
        {"id": 12, "video_id": 7, "height": 100, "width": 200},
        {"id": 10, "video_id": 7, "height": 100, "width": 200},
        {"id": 11, "video_id": 7, "height": 100, "width": 200},
        {"id": 20, "video_id": 8, "height": 50, "width": 50},
    ],
    "annotations": [
        {"id": 1, "image_id": 10, "bbox": [0, 0, 10, 10], "track_id": 3, "caption": "a dog running"},
        {"id": 2, "image_id": 11, "bbox": [1, 0, 10, 10], "track_id": 3, "caption": "a dog running"},
        {"id": 3, "image_id": 12, "bbox": [2, 0, 10, 10], "track_id": 3, "caption": "a dog running"},
        {"id": 4, "image_id": 12, "bbox": [50, 50, 20, 20], "track_id": 4, "caption": ""},
        {"id": 5, "image_id": 20, "bbox": [5, 5, 5, 5], "track_id": 1, "caption": "a cat"},
    ],
}
COCO_PRED = [
    {"image_id": 10, "bbox": [0, 0, 10, 10], "track_id": 30, "caption": "a dog running\nmore", "score": 0.9},
    {"image_id": 11, "bbox": [1, 0, 10, 10], "track_id": 30, "caption": "a dog running", "score": 0.9},
    {"image_id": 12, "bbox": [2, 0, 10, 10], "track_id": 31, "caption": "a dog", "score": 0.9},
    {"image_id": 12, "bbox": [80, 80, 5, 5], "track_id": 32, "caption": "noise", "score": 0.3},
]

YTVIS_GT = {
    "videos": [{"id": 1, "length": 3, "height": 40, "width": 40}],
    "annotations": [
        {"id": 9, "video_id": 1, "category_id": 2, "bboxes": [[0, 0, 5, 5], None, [2, 2, 5, 5]], "caption": "a ball"},
    ],
}
YTVIS_RESULTS = [
    {"video_id": 1, "score": 0.8, "category_id": 2, "bboxes": [[0, 0, 5, 5], [1, 1, 5, 5], [2, 2, 5, 5]], "caption": "a ball"},
]


def test_coco_frames_round_trip():
    refs = coco_to_videos(COCO_GT)
    by_id = {v["video_id"]: v for v in refs}
    assert by_id[7]["num_frames"] == 3 and by_id[8]["num_frames"] == 1
    assert (by_id[7]["height"], by_id[7]["width"]) == (100, 200)
    dog = next(t for t in by_id[7]["trajectories"] if t["track_id"] == 3)
    assert [f["frame_index"] for f in dog["frames"]] == [0, 1, 2]
    assert dog["frames"][2]["box"] == [2.0, 0.0, 10.0, 10.0] and dog["frames"][0]["caption"] == "a dog running"
    other = next(t for t in by_id[7]["trajectories"] if t["track_id"] == 4)
    assert [f["frame_index"] for f in other["frames"]] == [2]
    preds = coco_predictions_to_videos(COCO_PRED, COCO_GT)
    by_id_pred = {v["video_id"]: v for v in preds}
    assert by_id_pred[8]["trajectories"] == []  # every GT video present
    assert {t["track_id"] for t in by_id_pred[7]["trajectories"]} == {30, 31, 32}
    r = compute_chota(preds, refs, caption_metrics=("cider",))
    # video 7: GT dets 4, pred dets 3 kept (score 0.3 dropped); video 8: 1 GT det missed
    assert (r["HOTA_TP"], r["HOTA_FN"], r["HOTA_FP"]) == (3, 2, 0)
    assert r["TP_with_caps"] == 3


def test_coco_errors_name_the_annotation():
    bad = dict(COCO_GT, annotations=[{"id": 99, "image_id": 1234, "bbox": [0, 0, 1, 1], "track_id": 1}])
    with pytest.raises(ValueError, match="annotation 99"):
        coco_to_videos(bad)
    with pytest.raises(ValueError, match="track_id"):
        coco_to_videos(dict(COCO_GT, annotations=[{"id": 5, "image_id": 10, "bbox": [0, 0, 1, 1]}]))


def test_per_track_round_trip():
    refs = ytvis_to_videos(YTVIS_GT)
    assert refs[0]["num_frames"] == 3
    assert [f["frame_index"] for f in refs[0]["trajectories"][0]["frames"]] == [0, 2]
    preds = track_results_to_videos(YTVIS_RESULTS, YTVIS_GT)
    assert preds[0]["trajectories"][0]["score"] == 0.8
    r = compute_chota(preds, refs, caption_metrics=("cider",))
    assert (r["HOTA_TP"], r["HOTA_FN"], r["HOTA_FP"]) == (2, 0, 1)
    with pytest.raises(ValueError, match="score"):
        track_results_to_videos([{"video_id": 1, "bboxes": [[0, 0, 1, 1]]}], YTVIS_GT)
    # the release's per-track results name the boxes `bbox` (videos_to_track_results writes them so): the same
    # detections as `bboxes`, never a silent DetA 0
    released = [{("bbox" if k == "bboxes" else k): v for k, v in r.items()} for r in YTVIS_RESULTS]
    assert track_results_to_videos(released, YTVIS_GT) == preds
    with pytest.raises(ValueError, match="neither per-frame boxes"):
        track_results_to_videos([{"video_id": 1, "score": 0.5, "boxes": [[0, 0, 1, 1]]}], YTVIS_GT)


def test_load_videos_detects_formats(tmp_path):
    for gt, pred, name in ((COCO_GT, COCO_PRED, "coco-frames"), (YTVIS_GT, YTVIS_RESULTS, "per-track")):
        (tmp_path / "gt.json").write_text(json.dumps(gt))
        (tmp_path / "pred.json").write_text(json.dumps(pred))
        _, _, detected = load_videos(tmp_path / "pred.json", tmp_path / "gt.json")
        assert detected == name
    native = [{"video_id": "a", "num_frames": 1, "trajectories": []}]
    assert load_videos(native, {"videos": native})[2] == "trajectories"
    with pytest.raises(ValueError, match="not found"):
        load_videos(tmp_path / "missing.json", tmp_path / "gt.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_videos(tmp_path / "pred.json", tmp_path / "broken.json")


def test_cli_evaluate(tmp_path, capsys):
    (tmp_path / "gt.json").write_text(json.dumps(COCO_GT))
    (tmp_path / "pred.json").write_text(json.dumps(COCO_PRED))
    out = tmp_path / "res.json"
    code = main(["evaluate", str(tmp_path / "pred.json"), str(tmp_path / "gt.json"), "--caption-metrics", "cider", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "CHOTA" in printed and "DetA" in printed
    saved = json.loads(out.read_text())
    assert saved["HOTA_TP"] == 3 and "per_video" in saved
    # user errors are one clear line, exit code 2
    code = main(["evaluate", str(tmp_path / "nope.json"), str(tmp_path / "gt.json"), "--caption-metrics", "cider"])
    assert code == 2 and "file not found" in capsys.readouterr().err


def test_evaluate_module_matches_the_core():
    evaluate = pytest.importorskip("evaluate")
    from captionformer_hf.metrics import chota_module_path

    module = evaluate.load(chota_module_path())  # shipped inside the package
    preds = coco_predictions_to_videos(COCO_PRED, COCO_GT)
    refs = coco_to_videos(COCO_GT)
    direct = compute_chota(preds, refs, caption_metrics=("cider",), alphas=(0.5, 0.75))
    via_evaluate = module.compute(predictions=preds, references=refs, caption_metrics=["cider"], alphas=[0.5, 0.75])
    assert via_evaluate == direct
    # incremental: add() one video, add_batch() the others; the same result
    module.add(prediction=preds[0], reference=refs[0])
    module.add_batch(predictions=preds[1:], references=refs[1:])
    assert module.compute(caption_metrics=["cider"], alphas=[0.5, 0.75]) == direct
    # across processes a video travels as its JSON text (numpy numbers included)
    module.num_process = 2
    import numpy as np

    stored = module._store({**preds[0], "num_frames": np.int64(preds[0]["num_frames"])}, "predictions")
    assert module._load(stored) == preds[0]
    module.num_process = 1
    with pytest.raises(TypeError, match="must be a list of videos"):
        module.add_batch(predictions=preds[0], references=refs[0])
    with pytest.raises(TypeError, match="must be a video dict"):
        module.add(prediction=[preds[0]], reference=refs[0])
