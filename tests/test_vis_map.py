"""LV-VIS's VIS mAP: on single-frame videos it must equal pycocotools' COCOeval (segm) with the same area ranges; the
video-specific parts (spatio-temporal IoU, mean areas, base / novel) against hand-computed values."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from captionformer_hf.metrics.vis_map import AREA_RANGES, spatio_temporal_iou, video_instance_map


def rle(mask):
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


def box_mask(h, w, y0, x0, y1, x1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def random_single_frame_data(seed, num_videos=12, size=300, categories=3):
    """Videos of one frame (= images), objects of every area range (small < 128², medium < 256², large), predictions
    near, off, duplicated and missing, with tied scores."""
    rng = np.random.default_rng(seed)
    refs, preds = [], []
    for v in range(num_videos):
        ref_tracks, pred_tracks = [], []
        for t in range(int(rng.integers(0, 5))):
            side = int(rng.choice([40, 150, 280]))
            y0, x0 = (int(rng.integers(0, size - side + 1)) for _ in range(2))
            gt = box_mask(size, size, y0, x0, y0 + side, x0 + side)
            category = int(rng.integers(1, categories + 1))
            ref_tracks.append({"track_id": t, "category_id": category,
                               "frames": [{"frame_index": 0, "mask_rle": rle(gt)}]})
            for _ in range(int(rng.integers(0, 3))):  # 0-2 predictions per object, shifted
                dy, dx = (int(rng.integers(-side // 3, side // 3 + 1)) for _ in range(2))
                yy, xx = min(max(y0 + dy, 0), size - side), min(max(x0 + dx, 0), size - side)
                pred_category = category if rng.random() < 0.8 else int(rng.integers(1, categories + 1))
                pred_tracks.append({"track_id": len(pred_tracks), "category_id": pred_category,
                                    "score": float(np.round(rng.random(), 1)),  # ties
                                    "frames": [{"frame_index": 0, "mask_rle": rle(box_mask(size, size, yy, xx, yy + side, xx + side))}]})
        for _ in range(int(rng.integers(0, 2))):  # a false positive somewhere
            side = int(rng.choice([30, 200]))
            pred_tracks.append({"track_id": len(pred_tracks), "category_id": int(rng.integers(1, categories + 1)),
                                "score": float(rng.random()),
                                "frames": [{"frame_index": 0, "mask_rle": rle(box_mask(size, size, 0, 0, side, side))}]})
        common = {"video_id": v, "height": size, "width": size, "num_frames": 1}
        refs.append({**common, "trajectories": ref_tracks})
        preds.append({**common, "trajectories": pred_tracks})
    return refs, preds, categories


def coco_eval(refs, preds, categories):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for video in refs:
        images.append({"id": video["video_id"], "height": video["height"], "width": video["width"]})
        for track in video["trajectories"]:
            segmentation = {"size": [video["height"], video["width"]], "counts": track["frames"][0]["mask_rle"]}
            annotations.append({"id": len(annotations) + 1, "image_id": video["video_id"], "category_id": track["category_id"],
                                "segmentation": segmentation, "area": float(mask_utils.area(
                                    {**segmentation, "counts": segmentation["counts"].encode()})),
                                "iscrowd": 0, "bbox": [0, 0, 1, 1]})
    for video in preds:
        for track in video["trajectories"]:
            results.append({"image_id": video["video_id"], "category_id": track["category_id"], "score": track["score"],
                            "segmentation": {"size": [video["height"], video["width"]],
                                             "counts": track["frames"][0]["mask_rle"]}})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": c} for c in range(1, categories + 1)]}
    gt.createIndex()
    dt = gt.loadRes(results) if results else COCO()
    evaluator = COCOeval(gt, dt, "segm")
    evaluator.params.areaRng = [list(AREA_RANGES[k]) for k in ("all", "small", "medium", "large")]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return dict(zip(["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"],
                    evaluator.stats))


@pytest.mark.parametrize("seed", range(4))
def test_single_frame_videos_equal_cocoeval(seed):
    refs, preds, categories = random_single_frame_data(seed)
    ours = video_instance_map(preds, refs)
    expected = coco_eval(refs, preds, categories)
    assert ours.keys() == expected.keys()
    for key in expected:
        assert ours[key] == pytest.approx(expected[key], abs=1e-12), key
    assert 0 < ours["AP"] < 1 and ours["APs"] != ours["APl"]  # the case is not degenerate


def test_spatio_temporal_iou_by_hand():
    a = [{"size": [4, 4], "counts": rle(box_mask(4, 4, 0, 0, 2, 2)).encode()}, None,
         {"size": [4, 4], "counts": rle(box_mask(4, 4, 0, 0, 4, 4)).encode()}]
    b = [{"size": [4, 4], "counts": rle(box_mask(4, 4, 0, 0, 2, 1)).encode()},
         {"size": [4, 4], "counts": rle(box_mask(4, 4, 0, 0, 1, 1)).encode()}, None]
    # frame 0: intersection 2, union 4; frame 1: only b (1); frame 2: only a (16) -> 2 / 21
    assert spatio_temporal_iou(a, b) == pytest.approx(2 / 21)
    assert spatio_temporal_iou([None], [None]) == 0.0


def test_a_video_is_matched_over_all_its_frames_and_ranked_by_its_mean_area():
    """Two 3-frame ground truths: one prediction follows the first (IoU 1), one matches the second on 2 of its 3
    frames (IoU 2/3: a match at 0.50-0.65, 4 of 10 thresholds); the second's mean area decides its size class."""
    h = w = 300
    big = box_mask(h, w, 0, 0, 150, 150)  # 22,500 px: medium (>= 128² = 16,384)
    small = box_mask(h, w, 200, 200, 250, 250)  # 2,500 px: small

    def trajectory(track_id, masks, score=None):
        out = {"track_id": track_id, "category_id": 1,
               "frames": [{"frame_index": i, "mask_rle": rle(m)} for i, m in enumerate(masks) if m is not None]}
        return out if score is None else {**out, "score": score}

    common = {"video_id": "v", "height": h, "width": w, "num_frames": 3}
    refs = [{**common, "trajectories": [trajectory(0, [big, big, big]), trajectory(1, [small, small, small])]}]
    preds = [{**common, "trajectories": [trajectory(0, [big, big, big], 0.9), trajectory(1, [small, small, None], 0.8)]}]
    result = video_instance_map(preds, refs, categories=[{"id": 1, "partition": 2}])
    # at the 4 thresholds <= 0.65 both match (precision 1 at every recall level), above only the first: recall 1/2,
    # precision 1 up to recall 0.5 (51 of 101 levels) then 0
    expected_ap = (4 * 1.0 + 6 * 51 / 101) / 10
    assert result["AP"] == pytest.approx(expected_ap)
    assert result["AP50"] == pytest.approx(1.0) and result["AP75"] == pytest.approx(51 / 101)
    assert result["APs"] == pytest.approx(0.4) and result["APm"] == pytest.approx(1.0) and result["APl"] == -1
    assert result["AR100"] == pytest.approx((4 * 1.0 + 6 * 0.5) / 10) and result["AR1"] == pytest.approx(0.5)
    assert result["APn"] == result["AP"] and result["APb"] == -1


def test_vis_map_refuses_what_it_cannot_score():
    common = {"video_id": "v", "height": 4, "width": 4, "num_frames": 1}
    ref = {**common, "trajectories": [{"track_id": 0, "category_id": 1, "frames": [{"frame_index": 0, "box": [0, 0, 1, 1]}]}]}
    with pytest.raises(ValueError, match="video 'v', reference, track_id 0, frame 0: `mask_rle` is needed"):
        video_instance_map([], [ref])
    good = {**common, "trajectories": [{"track_id": 0, "category_id": 1,
                                         "frames": [{"frame_index": 0, "mask_rle": rle(np.ones((4, 4)))}]}]}
    unscored = {**common, "trajectories": [dict(good["trajectories"][0])]}
    with pytest.raises(ValueError, match="needs a `score`"):
        video_instance_map([unscored], [good])
    with pytest.raises(ValueError, match="lacks"):
        video_instance_map([{**good, "video_id": "w"}], [good])
    # the format's validator checks every mask before pycocotools reads it (a string whose runs do not cover the
    # frame would make it loop or read garbage), and the masks must have the video's size
    for frame, message in [
        ({"frame_index": 0, "mask_rle": "0"}, r"video 'v', prediction, track_id 0, frame 0: bad mask RLE"),
        ({"frame_index": 0, "mask_rle": {"counts": [0, 6], "size": [2, 3]}},
         r"video 'v', prediction, track_id 0, frame 0: a 2x3 mask in a 4x4 video"),
    ]:
        bad = {**common, "trajectories": [{"track_id": 0, "category_id": 1, "score": 0.5, "frames": [frame]}]}
        with pytest.raises(ValueError, match=message):
            video_instance_map([bad], [good])
    with pytest.raises(ValueError, match="video 'v', reference: the VIS mAP needs the video's `height` and `width`"):
        video_instance_map([], [{**{k: v for k, v in good.items() if k != "height"},
                                 "trajectories": [{**good["trajectories"][0], "frames": []}]}])
    with pytest.raises(ValueError, match="track_id 0: the VIS mAP needs an integer `category_id`, got None"):
        video_instance_map([], [{**good, "trajectories": [{"track_id": 0, "frames": []}]}])


def test_captionformer_evaluate_vis_map(tmp_path, capsys):
    """`captionformer evaluate --vis-map`: the metric of the same videos in the saved result and the summary, base /
    novel from the ground truth's LV-VIS categories."""
    import json

    from captionformer_hf.cli import main

    refs, preds, _ = random_single_frame_data(0)
    categories = [{"id": 1, "partition": 0}, {"id": 2, "partition": 2}, {"id": 3, "partition": 3}]
    for video in refs + preds:  # the protocol scores captions too
        for track in video["trajectories"]:
            track["caption"] = f"a thing of class {track['category_id']}"
    (tmp_path / "gt.json").write_text(json.dumps({"videos": refs, "categories": categories}))
    (tmp_path / "preds.json").write_text(json.dumps({"videos": preds}))
    assert main(["evaluate", str(tmp_path / "preds.json"), str(tmp_path / "gt.json"), "--protocol", "lvviscap",
                 "--vis-map", "--out", str(tmp_path / "r.json")]) == 0
    saved = json.loads((tmp_path / "r.json").read_text())["vis_map"]
    expected = video_instance_map(preds, refs, categories=categories)
    assert saved == pytest.approx(expected) and saved["APb"] != saved["APn"]
    assert "VIS AP  " in capsys.readouterr().out
