"""The trajectory format module: RLE codec (byte for byte against pycocotools), validation, no torch."""

import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from captionformer_hf.processing.trajectory_captionformer import (
    check_rle,
    encode_runs,
    mask_runs,
    rle_area,
    rle_decode,
    rle_encode,
    rle_runs,
    rle_to_box,
    validate_video,
)


def coco(mask):
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


def random_masks(seed):
    rng = np.random.default_rng(seed)
    masks = []
    for kind in range(6):
        h, w = rng.integers(1, 40, 2)
        if kind == 0:
            mask = rng.random((h, w)) < 0.5  # many short runs
        elif kind == 1:
            mask = np.zeros((h, w), bool)
        elif kind == 2:
            mask = np.ones((h, w), bool)
        elif kind == 3:  # a rectangle: long runs with negative deltas
            mask = np.zeros((h, w), bool)
            mask[rng.integers(0, h) :, rng.integers(0, w) :] = True
        elif kind == 4:
            mask = np.zeros((h, w), bool)
            mask[0, 0] = True  # foreground first: an empty leading run
        else:
            mask = rng.random((h, w)) < 0.05
        masks.append(mask)
    return masks


@pytest.mark.parametrize("seed", range(20))
def test_encode_and_decode_equal_pycocotools(seed):
    for mask in random_masks(seed):
        expected = coco(mask)
        assert rle_encode(mask) == expected
        decoded = rle_decode(expected, *mask.shape)
        assert decoded.dtype == np.uint8 and np.array_equal(decoded, mask)
        assert rle_area(expected) == int(mask.sum())
        assert rle_to_box(expected, *mask.shape) == pytest.approx(
            mask_utils.toBbox({"size": list(mask.shape), "counts": expected.encode()}).tolist()
        )


def test_large_masks_and_batches():
    big = np.zeros((1080, 1920), bool)
    big[100:900, 300:1500] = True
    big[500, 1700] = True
    assert rle_encode(big) == coco(big)
    stack = np.random.default_rng(0).random((12, 30, 17)) < 0.3
    assert rle_encode(stack) == [coco(m) for m in stack]
    runs, offsets = mask_runs(stack)
    assert encode_runs(runs, offsets) == [coco(m) for m in stack]
    assert rle_runs(coco(stack[0])).sum() == 30 * 17


@pytest.mark.parametrize(
    "counts, message",
    [("!!!garbage", "outside the COCO RLE code"), ("", "cover 0 pixels"), ("0k", "truncated"),
     (coco(np.ones((50, 50), bool)), "cover 2500 pixels, a 100x100 frame has 10000"), (12, "string")],
)
def test_bad_rle_is_a_clear_error(counts, message):
    with pytest.raises(ValueError, match=message):
        check_rle(counts, 100, 100, "video 'v', track 1, frame 0")
    with pytest.raises(ValueError, match="video 'v'"):
        rle_decode(counts, 100, 100, where="video 'v'")


def video():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:6] = True
    return {"video_id": "v", "num_frames": 3, "height": 10, "width": 10, "trajectories": [
        {"track_id": 1, "score": 0.9, "caption": "a dog", "frames": [
            {"frame_index": 0, "box": [3, 2, 3, 3], "mask_rle": coco(mask), "score": 0.8}]}]}


@pytest.mark.parametrize(
    "mutate, error, message",
    [
        (lambda v: v.update(num_frames=0), ValueError, "`num_frames` must be a positive integer"),
        (lambda v: v["trajectories"][0]["frames"][0].update(frame_index=3), ValueError, r"track_id 1, frame 3: frame_index out of range \[0, 3\)"),
        (lambda v: v["trajectories"][0]["frames"][0].update(box=[0, 0, -1, 2]), ValueError, "negative width"),
        (lambda v: v["trajectories"][0]["frames"][0].update(box=["a", 0, 1, 2]), TypeError, "frame 0: `box` must be a number, got str 'a'"),
        (lambda v: v["trajectories"][0]["frames"][0].update(score="high"), TypeError, "frame 0: `score` must be a number, got str 'high'"),
        (lambda v: v["trajectories"][0]["frames"][0].update(mask_rle="!!"), ValueError, "frame 0: bad mask RLE"),
        (lambda v: v["trajectories"].append(dict(v["trajectories"][0])), ValueError, "duplicate track_id"),
        (lambda v: v["trajectories"][0].update(track_id=[1]), TypeError, "trajectory 0: `track_id` must be an integer or a string, got list"),
        (lambda v: v["trajectories"][0].update(caption=3), TypeError, "`caption` must be a string"),
        (lambda v: v["trajectories"][0]["frames"].append(dict(v["trajectories"][0]["frames"][0])), ValueError, "lists this frame twice"),
        (lambda v: v.pop("height"), ValueError, "needs the video's `height`"),
    ],
)
def test_validation_names_the_problem(mutate, error, message):
    good = video()
    validate_video(good)
    bad = video()
    mutate(bad)
    with pytest.raises(error, match=message):
        validate_video(bad)


def test_scores_and_masks_can_be_required():
    v = video()
    del v["trajectories"][0]["score"], v["trajectories"][0]["frames"][0]["score"]
    validate_video(v)
    with pytest.raises(ValueError, match="need a `score`"):
        validate_video(v, require_scores=True)
    del v["trajectories"][0]["frames"][0]["mask_rle"]
    with pytest.raises(ValueError, match="`mask_rle` is needed"):
        validate_video(v, require_masks=True)


def test_the_format_module_imports_neither_torch_nor_pycocotools():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['pycocotools'] = None\n"
        "from captionformer_hf.processing.trajectory_captionformer import rle_encode, rle_decode\n"
        "import numpy as np\n"
        "m = np.eye(4, dtype=bool)\n"
        "assert (rle_decode(rle_encode(m), 4, 4) == m).all()\n"
        "print('OK')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().endswith("OK"), out.stderr[-2000:]


def test_check_video_returns_each_trajectory_as_checked_arrays():
    """The one validator (datasets, CHOTA, the CLI) returns what it checked: frames in listed order, boxes, scores
    falling back to the trajectory's, captions falling back to the trajectory's then "", masks with their size;
    the fields a use needs are required on request, naming the frame."""
    from captionformer_hf.processing.trajectory_captionformer import check_video

    video = {"video_id": "v", "num_frames": 5, "height": 4, "width": 3, "trajectories": [
        {"track_id": 7, "score": 0.5, "caption": "a cat", "frames": [
            {"frame_index": 3, "box": [1, 2, 3, 4], "score": 0.9, "caption": "a cat sits"},
            {"frame_index": 1, "box": [0, 0, 1, 1]}]},
        {"track_id": "b", "frames": [{"frame_index": 0, "mask_rle": {"counts": [2, 10], "size": [4, 3]}}]}]}
    num_frames, (cat, other) = check_video(video)
    assert num_frames == 5
    assert (cat.index, cat.track_id, cat.frame_indices.tolist()) == (0, 7, [3, 1])
    assert cat.boxes.tolist() == [[1, 2, 3, 4], [0, 0, 1, 1]] and cat.scores.tolist() == [0.9, 0.5]
    assert cat.captions == ["a cat sits", "a cat"] and cat.masks is None
    assert (other.index, other.track_id, other.boxes, other.scores, other.captions) == (1, "b", None, None, [""])
    assert other.masks == [([2, 10], (4, 3))]
    for kwargs, message in [
        ({"require_scores": True}, "video 'v', track_id 'b', frame 0: predictions need a `score`"),
        ({"require_boxes": True}, r"video 'v', track_id 'b', frame 0: `box` \[x, y, w, h\] is needed"),
        ({"require_masks": True}, "video 'v', track_id 7, frame 3: `mask_rle` is needed"),
        ({"max_frames": 4}, "video 'v': `num_frames` is 5, more than the 4 frames"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_video(video, **kwargs)
    video["trajectories"][1]["frames"][0]["mask_rle"]["counts"] = [2, 9]
    with pytest.raises(ValueError, match="frame 0: bad mask RLE \\(its runs cover 11 pixels, a 4x3 frame has 12\\)"):
        check_video(video)
