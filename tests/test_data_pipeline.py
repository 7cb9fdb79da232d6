"""Training data: decoding only a clip's frames, augmentation consistent over a clip, pseudo-clips from images,
mixtures of datasets with sampling ratios, streaming."""

import numpy as np
import pytest
import torch

from captionformer_hf.data.augment import AugmentConfig, augment_clip, boxes_from_masks
from captionformer_hf.data.loader import (
    ClipSource,
    DVOCClipDataset,
    DVOCStreamingClips,
    MixtureSampler,
    collate_clips,
    unpack_labels,
    example_to_clips,
    read_video_frames,
)
from captionformer_hf.data.synthetic import SyntheticVideoConfig, build_synthetic_dataset, generate_video, write_video
from captionformer_hf.processing import VideoFrames
from captionformer_hf.toy import toy_processor


@pytest.fixture(scope="module")
def dataset():
    return build_synthetic_dataset(4, seed=5, splits={"train": 1.0})


@pytest.mark.parametrize("ext", ["mp4", "webm", "avi"])
def test_seeking_decodes_the_same_frames_as_a_full_decode(tmp_path, ext):
    video = generate_video(2, SyntheticVideoConfig(num_frames=40, fps=8))
    path = tmp_path / f"v.{ext}"
    write_video(video["frames"], path, fps=8)
    full = np.stack([f for _, f in VideoFrames(str(path))])
    for indices in ([0, 1, 2], [17, 18, 19, 20], [39], [5, 5, 6], [38, 39, 39]):
        np.testing.assert_array_equal(read_video_frames(str(path), indices), full[indices])
    np.testing.assert_array_equal(read_video_frames(path.read_bytes(), [30, 31]), full[[30, 31]])
    with pytest.raises(ValueError, match="no frame 45"):
        read_video_frames(str(path), [39, 45])


def test_clip_shapes_and_box_targets_follow_the_masks(dataset):
    processor = toy_processor(clip_length=4, size=96)
    example = dataset["train"][0]
    clips = example_to_clips(example, processor, clip_length=4, clips_per_video=2)
    assert [c["frame_indices"] for c in clips] == [[0, 1, 2, 3], [20, 21, 22, 23]]  # evenly spaced without randomness
    clip = clips[0]
    assert clip["pixel_values"].shape == (4, 3, 96, 128)
    targets = clip["labels"]
    n = len(targets["class_labels"])
    assert targets["mask_labels"].shape == (n, 4, 96, 128) and targets["boxes"].shape == (n, 4, 4)
    assert targets["caption_ids"].shape[0] == n and targets["valid"].shape == (n, 4)
    for i in range(n):
        for t in range(4):
            if targets["valid"][i, t]:
                ys, xs = torch.nonzero(targets["mask_labels"][i, t], as_tuple=True)
                cx = (xs.min() + xs.max() + 1) / 2 / 128
                assert abs(float(targets["boxes"][i, t, 0]) - float(cx)) < 0.02
    # the clip's pixels are the inference preprocessing of the same frames
    reader = processor.video_processor.open_video(example["video"]["bytes"])
    first = next(iter(processor.video_processor.iter_clip_batches(reader, clip_length=4)))
    torch.testing.assert_close(clip["pixel_values"], first.pixel_values_videos[0])


def test_augmentation_is_one_transform_for_the_whole_clip():
    frames = torch.zeros(3, 3, 40, 60, dtype=torch.uint8)
    masks = torch.zeros(1, 3, 40, 60, dtype=torch.uint8)
    for t in range(3):  # an object moving right; the frames carry the object's pixels too
        masks[0, t, 10:20, 5 + 5 * t : 15 + 5 * t] = 1
        frames[t, :, 10:20, 5 + 5 * t : 15 + 5 * t] = 200
    config = AugmentConfig(scale_range=(1.0, 1.0), crop_probability=1.0, crop_range=(0.7, 0.7), flip_probability=1.0,
                           brightness=0.0, contrast=0.0, saturation=0.0)
    g = torch.Generator().manual_seed(0)
    out_frames, out_masks, scale = augment_clip(frames, masks, config, g)
    assert scale == 1.0 and out_frames.shape[-2:] == (28, 42) and out_masks.shape[-2:] == (28, 42)
    # masks still cover the object's pixels in every frame (same crop and flip on frames and masks)
    for t in range(3):
        inside = out_masks[0, t].bool()
        assert inside.any() and (out_frames[t, 0][inside] == 200).all() and (out_frames[t, 0][~inside] == 0).all()
    # flipped: the object now moves left
    boxes, valid = boxes_from_masks(out_masks.bool())
    assert valid.all() and boxes[0, 0, 0] > boxes[0, 2, 0]
    # colour jitter is drawn once per clip: every frame gets the same factors
    jitter = AugmentConfig(scale_range=(1.0, 1.0), crop_probability=0.0, flip_probability=0.0)
    same = torch.full((3, 3, 8, 8), 100, dtype=torch.uint8)
    jittered, _, _ = augment_clip(same, torch.zeros(0, 3, 8, 8, dtype=torch.uint8), jitter, torch.Generator().manual_seed(3))
    assert (jittered == jittered[0]).all() and not (jittered == 100).all()


def test_images_become_pseudo_clips_with_camera_motion():
    processor = toy_processor(clip_length=3, size=64)
    image = build_synthetic_dataset(1, seed=2, splits={"train": 1.0}, config=SyntheticVideoConfig(num_frames=1))["train"][0]
    assert image["num_frames"] == 1
    source = ClipSource(build_synthetic_dataset(1, seed=2, splits={"train": 1.0},
                                                config=SyntheticVideoConfig(num_frames=1))["train"])
    dataset = DVOCClipDataset([source], processor, clip_length=3, augment=AugmentConfig(scale_range=(1.0, 1.0)))
    clip = dataset[(0, 0, 11)]
    assert clip["frame_indices"] == [0, 0, 0] and clip["pixel_values"].shape[0] == 3
    # three different views of one image (independent crops), the same objects in each
    assert not torch.equal(clip["pixel_values"][0], clip["pixel_values"][1])
    assert clip["labels"]["valid"].shape[1] == 3 and clip["labels"]["valid"].any()
    assert torch.equal(dataset[(0, 0, 11)]["pixel_values"], clip["pixel_values"])  # a function of the key


def test_packed_labels_round_trip_to_the_clip_targets(dataset):
    processor = toy_processor(clip_length=2, size=64)
    clips = [example_to_clips(dataset["train"][i], processor, clip_length=2)[0] for i in range(3)]
    # a clip of another size (padded by the collate), and one without objects
    clips[1] = {**clips[1], "pixel_values": clips[1]["pixel_values"][..., :40],
                "labels": {**clips[1]["labels"], "mask_labels": clips[1]["labels"]["mask_labels"][..., :40]}}
    empty = {k: v[:0] for k, v in clips[2]["labels"].items()}
    empty["caption_ids"] = empty["caption_attention_mask"] = torch.zeros(0, 1, dtype=torch.long)
    clips.append({**clips[2], "labels": empty})
    batch = collate_clips(clips)
    packed = batch["packed_labels"]
    assert packed["mask_labels"].dtype == torch.uint8 and packed["counts"].tolist() == [
        len(c["labels"]["class_labels"]) for c in clips]
    targets = unpack_labels(packed, "cpu")
    width = batch["pixel_values_videos"].shape[-1]
    assert len(targets) == 4 and targets[3]["class_labels"].shape == (0,)
    for clip, target in zip(clips, targets):
        expected = clip["labels"]
        w = expected["mask_labels"].shape[-1]
        assert target["mask_labels"].dtype == torch.float32
        torch.testing.assert_close(target["mask_labels"][..., :w], expected["mask_labels"].float())
        assert not target["mask_labels"][..., w:].any()
        scale = torch.tensor([w / width, 1, w / width, 1])  # boxes renormalised to the padded width
        torch.testing.assert_close(target["boxes"], expected["boxes"] * scale)
        for key in ("class_labels", "valid", "track_ids", "caption_ids", "caption_attention_mask"):
            assert torch.equal(target[key], expected[key]), key


def test_workers_forked_after_the_parent_decoded_do_not_hang(dataset):
    # the parent decodes first (its frame converter starts threads that a forked worker does not inherit)
    processor = toy_processor(clip_length=2, size=64)
    mixture = DVOCClipDataset([ClipSource(dataset["train"])], processor, clip_length=2)
    key = (0, 0, 5)
    in_parent = mixture[key]
    loader = torch.utils.data.DataLoader(mixture, sampler=[key, (0, 1, 6), (0, 2, 7), (0, 3, 8)], batch_size=1,
                                         num_workers=2, collate_fn=collate_clips, timeout=120,
                                         multiprocessing_context="fork")
    batches = list(loader)
    assert len(batches) == 4
    torch.testing.assert_close(batches[0]["pixel_values_videos"][0], in_parent["pixel_values"])


def test_mixture_sampler_follows_the_ratios_and_is_deterministic():
    sampler = MixtureSampler([10, 30], [0.8, 0.2], clips_per_video=2, seed=1, epoch_size=2000)
    keys = list(sampler)
    assert len(keys) == len(sampler) == 2000
    share = np.mean([k[0] == 0 for k in keys])
    assert 0.75 < share < 0.85
    assert all(0 <= k[1] < (10, 30)[k[0]] for k in keys)
    assert keys[0][:2] == keys[1][:2] and keys[0][2] != keys[1][2]  # 2 clips per drawn example, own seeds
    assert list(sampler) == keys  # the same epoch again
    sampler.set_epoch(1)
    assert list(sampler) != keys
    single = MixtureSampler([5], [1.0], clips_per_video=1, seed=0)
    assert sorted(k[1] for k in single) == list(range(5))
    with pytest.raises(ValueError, match="positive sum"):
        MixtureSampler([5, 5], [0, 0])
    with pytest.raises(ValueError, match="at least one example"):
        MixtureSampler([5, 0], [1, 1])


def test_map_style_and_streaming_clips_batch(dataset):
    processor = toy_processor(clip_length=4, size=96)
    mixture = DVOCClipDataset([ClipSource(dataset["train"])], processor, clip_length=4)
    loader = torch.utils.data.DataLoader(mixture, sampler=MixtureSampler([len(dataset["train"])], [1.0], 2, seed=1),
                                         batch_size=2, collate_fn=collate_clips)
    batch = next(iter(loader))
    assert batch["pixel_values_videos"].shape == (2, 4, 3, 96, 128)
    assert batch["video_ids"][0] == batch["video_ids"][1]  # the 2 clips of one drawn video
    streamed = DVOCStreamingClips(dataset["train"].to_iterable_dataset(), processor, clip_length=4, clips_per_video=2)
    clips = list(streamed)
    assert len(clips) == 8
    resumed = DVOCStreamingClips(dataset["train"].to_iterable_dataset(), processor, clip_length=4, clips_per_video=2,
                                 skip_examples=3)
    remaining = list(resumed)
    assert [c["video_id"] for c in remaining] == [c["video_id"] for c in clips[6:]]
    assert torch.equal(remaining[0]["pixel_values"], clips[6]["pixel_values"])


def test_video_level_items_are_time_ordered_clips_spread_over_the_video(tmp_path):
    """Video-level captioning reads each video's clips in time order, one from each of as many equal parts of the
    video; the collated batch says which video each clip comes from."""
    from captionformer_hf.data.loader import collate_clips, unpack_labels, video_clips
    from captionformer_hf.data.synthetic import SyntheticVideoConfig, synthetic_example
    from captionformer_hf.toy import toy_processor

    example = synthetic_example(3, "v", SyntheticVideoConfig(num_frames=24))
    processor = toy_processor(clip_length=2)
    for seed in range(3):
        clips = video_clips(example, processor, clip_length=2, count=4, seed=seed)
        starts = [clip["frame_indices"][0] for clip in clips]
        # 23 possible starts (0-22) in 4 parts
        assert all(low <= s <= high for s, (low, high) in zip(starts, [(0, 4), (5, 10), (11, 16), (17, 22)]))
        assert starts == sorted(starts)
    batch = collate_clips([video_clips(example, processor, 2, 2, seed=0), video_clips(example, processor, 2, 3, seed=1)])
    assert batch["pixel_values_videos"].shape[0] == 5
    assert [target["video_index"] for target in unpack_labels(batch["packed_labels"])] == [0, 0, 1, 1, 1]


def test_video_frames_read_is_the_one_random_access_decoder(tmp_path):
    """`VideoFrames.read` (what training clips use): the frames iteration gives, from files (probed or not) and
    arrays, in the asked order; clear errors for frames a video lacks, non-videos and sampling without a probe."""
    video = generate_video(4, SyntheticVideoConfig(num_frames=12, fps=8))
    path = tmp_path / "v.mp4"
    write_video(video["frames"], path, fps=8)
    full = np.stack([f for _, f in VideoFrames(str(path))])
    for probe in (True, False):
        np.testing.assert_array_equal(VideoFrames(str(path), probe=probe).read([9, 3, 3]), full[[9, 3, 3]])
    np.testing.assert_array_equal(VideoFrames(video["frames"]).read([11, 0]), video["frames"][[11, 0]])
    with pytest.raises(ValueError, match="no frame 12 \\(it has 12 frames\\)"):
        VideoFrames(str(path)).read([11, 12])
    with pytest.raises(ValueError, match="no frame 12 \\(it has fewer frames\\)"):
        VideoFrames(str(path), probe=False).read([12])
    with pytest.raises(ValueError, match="no frame 12"):
        VideoFrames(video["frames"]).read([12])
    with pytest.raises(ValueError, match="`indices`: frame indices must be >= 0"):
        VideoFrames(str(path)).read([-1])
    with pytest.raises(ValueError, match="`probe=False` is for random access"):
        VideoFrames(str(path), probe=False, num_frames=4)
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(ValueError, match="could not open"):
        VideoFrames(str(tmp_path / "text.mp4"), probe=False).read([0])
