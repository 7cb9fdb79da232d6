"""Video processor, processor, pipeline, CLI and overlay rendering."""

import io
import json
import os

import numpy as np
import pytest
import torch
from conftest import run_without_the_package
from pycocotools import mask as mask_utils
from transformers import AutoProcessor, AutoVideoProcessor, pipeline

from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning, CaptionFormerProcessor, CaptionFormerVideoProcessor
from captionformer_hf.cli import main
from captionformer_hf.data.synthetic import SyntheticVideoConfig, generate_video, write_video
from captionformer_hf.processing import VideoFrames
from captionformer_hf.toy import toy_config, toy_processor

GRADIO_VIDEOS = None
try:
    import gradio

    GRADIO_VIDEOS = os.path.join(os.path.dirname(gradio.__file__), "media_assets", "videos")
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A synthetic 24-frame 96x128 video written as mp4, avi and webm, with its ground truth."""
    folder = tmp_path_factory.mktemp("videos")
    video = generate_video(3, SyntheticVideoConfig(num_frames=24, fps=8))
    paths = {}
    for ext in ("mp4", "avi", "webm"):
        paths[ext] = str(folder / f"sample.{ext}")
        write_video(video["frames"], paths[ext], fps=8)
    return video, paths


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = toy_config(clip_length=2, score_threshold=0.0, hysteresis_low=0.0, hysteresis_high=0.0, hysteresis_min_length=1)
    model = CaptionFormerForDenseVideoObjectCaptioning(config).eval()
    # an untrained LM may end a caption at once or emit only <unk>/<pad> or ids past the toy tokenizer's words (its
    # vocabulary is padded to 64); the tests check that captions reach the result, so they must have words
    model.generation_config.min_new_tokens = 2
    model.generation_config.suppress_tokens = [0, 1, *range(len(toy_processor().tokenizer), config.text_config.vocab_size)]
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    toy_processor(clip_length=2).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return pipeline("dense-video-object-captioning", model=tiny_model_dir)


# ------------------------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("ext", ["mp4", "avi", "webm"])
def test_decode_formats(sample, ext):
    video, paths = sample
    reader = VideoFrames(paths[ext])
    frames = [frame for _, frame in reader]
    assert len(frames) == 24 and (reader.height, reader.width) == (96, 128)
    assert reader.video_fps == pytest.approx(8.0)
    assert np.abs(frames[5].astype(int) - video["frames"][5]).mean() < 8  # lossy codecs, same picture


def test_decode_file_like_bytes_and_sampling(sample):
    _, paths = sample
    data = open(paths["mp4"], "rb").read()
    assert len(list(VideoFrames(io.BytesIO(data)))) == 24
    assert len(list(VideoFrames(data))) == 24
    assert [i for i, _ in VideoFrames(paths["mp4"], fps=4)] == list(range(0, 24, 2))
    assert [i for i, _ in VideoFrames(paths["mp4"], num_frames=4)] == [0, 8, 15, 23]
    assert [i for i, _ in VideoFrames(paths["webm"], num_frames=3)] == [0, 12, 23]  # frame count found by decoding
    assert [i for i, _ in VideoFrames(paths["mp4"], max_frames=5)] == [0, 1, 2, 3, 4]


def test_decode_errors(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        VideoFrames(str(tmp_path / "missing.mp4"))
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(2048))
    with pytest.raises(ValueError, match="could not"):
        VideoFrames(str(corrupt))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="could not"):
        VideoFrames(str(empty))
    with pytest.raises(ValueError, match="directory"):
        VideoFrames(str(tmp_path))
    with pytest.raises(ValueError, match="zero frames"):
        VideoFrames(np.zeros((0, 32, 32, 3), np.uint8))
    with pytest.raises(TypeError, match="dtype"):
        VideoFrames(np.zeros((2, 32, 32, 3), np.int32))
    with pytest.raises(ValueError, match="4 dimensions"):
        VideoFrames(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="out of range"):
        VideoFrames(np.zeros((1, 2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="out of range"):
        VideoFrames(np.zeros((1, 9000, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        VideoFrames(np.full((1, 32, 32, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="mutually exclusive"):
        VideoFrames(np.zeros((2, 32, 32, 3), np.uint8), num_frames=1, fps=2)
    with pytest.raises(TypeError, match="`video`"):
        VideoFrames(12)


# ------------------------------------------------------------------------------------------------ processors
def test_video_processor_call_and_round_trip(tmp_path):
    processor = CaptionFormerVideoProcessor(size={"shortest_edge": 64, "longest_edge": 128}, clip_length=2)
    video = (np.random.default_rng(0).random((3, 48, 80, 3)) * 255).astype(np.uint8)
    short = (np.random.default_rng(1).random((2, 48, 80, 3)) * 255).astype(np.uint8)
    out = processor([video, short], return_tensors="pt")
    # 48x80 -> 64x106 (aspect kept, truncated), padded to 64x128; the shorter video padded in time with its last frame
    assert out["pixel_values_videos"].shape == (2, 3, 3, 64, 128)
    assert out["original_sizes"].tolist() == [[48, 80]] * 2 and out["content_sizes"].tolist() == [[64, 106]] * 2
    assert out["num_frames"].tolist() == [3, 2]
    mask = out["pixel_mask"]  # the content of each video, for the model (no sizes: the sizes are post-processing's)
    assert mask.shape == (2, 64, 128) and bool(mask[:, :, :106].all()) and not bool(mask[:, :, 106:].any())
    pixels = out["pixel_values_videos"]
    assert torch.all(pixels[:, :, :, :, 106:] == 0)  # padding
    torch.testing.assert_close(pixels[1, 2], pixels[1, 1])
    expected = (torch.tensor(video[0, 0, 0] / 255.0) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(pixels[0, 0, :, 0, 0].double(), expected, atol=0.05, rtol=0)
    processor.save_pretrained(tmp_path)
    loaded = AutoVideoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, CaptionFormerVideoProcessor)
    assert loaded.to_dict() == processor.to_dict()
    torch.testing.assert_close(loaded([video, short], return_tensors="pt")["pixel_values_videos"], pixels)


def test_clip_batches_match_batch_processing(sample):
    _, paths = sample
    processor = CaptionFormerVideoProcessor(size={"shortest_edge": 64, "longest_edge": 128}, clip_length=5)
    reader = processor.open_video(paths["avi"])
    batches = list(processor.iter_clip_batches(reader, batch_size=2))
    # 24 frames: two batches of 2 clips of 5, then the 4 remaining frames as a clip of their own
    assert [tuple(b.pixel_values_videos.shape[:2]) for b in batches] == [(2, 5), (2, 5), (1, 4)]
    assert batches[0].frame_indices == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]] and batches[-1].frame_indices == [[20, 21, 22, 23]]
    assert batches[0].geometry.original_size == (96, 128) and batches[0].content_size == (64, 85)
    frames = np.stack([f for _, f in VideoFrames(paths["avi"])])
    whole = processor(frames, return_tensors="pt")["pixel_values_videos"][0]
    streamed = torch.cat([b.pixel_values_videos.flatten(0, 1) for b in batches])
    torch.testing.assert_close(streamed, whole)
    half = list(processor.iter_clip_batches(processor.open_video(paths["avi"]), batch_size=3, dtype=torch.bfloat16))
    assert half[0].pixel_values_videos.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="`batch_size`"):
        next(processor.iter_clip_batches(processor.open_video(paths["avi"]), batch_size=0))


def test_threaded_decoding_equals_the_caller_thread_and_stops_early(sample):
    import threading

    _, paths = sample
    threaded = [(i, f) for i, f in VideoFrames(paths["mp4"], prefetch=4)]
    direct = [(i, f) for i, f in VideoFrames(paths["mp4"], prefetch=0)]
    assert [i for i, _ in threaded] == [i for i, _ in direct] == list(range(24))
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(threaded, direct))
    reader = VideoFrames(paths["mp4"], prefetch=2)
    for index, _ in reader:
        if index == 3:
            break
    del _
    import gc

    gc.collect()
    assert not any(t.name == "captionformer-decode" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(ValueError, match="`prefetch`"):
        VideoFrames(paths["mp4"], prefetch=-1)


def test_post_process_maps_boxes_to_the_original_video_and_names_labels():
    from captionformer_hf import CaptionFormerVideoOutput

    processor = CaptionFormerVideoProcessor(size={"shortest_edge": 64, "longest_edge": 128})
    # original 48x80 -> content 64x106 inside a 64x128 input
    outputs = CaptionFormerVideoOutput(
        track_ids=torch.tensor([3]), scores=torch.tensor([0.9]), category_ids=torch.tensor([1]),
        frame_track_indices=torch.tensor([0, 0]), frame_indices=torch.tensor([7, 9]),
        frame_boxes=torch.tensor([[30 / 128, 24 / 64, 20 / 128, 16 / 64], [1.0, 1.0, 0.5, 0.5]]),
        frame_scores=torch.tensor([0.9, 0.8]), num_frames=10, input_size=(64, 128),
    )
    masks = {(3, 7): "m7", (3, 9): "m9", (4, 7): "other track"}
    result = processor.post_process_dense_captions(outputs, original_size=(48, 80), id2label={1: "dog"},
                                                   mask_rles=masks)
    (trajectory,) = result["trajectories"]
    assert (trajectory["track_id"], trajectory["category"], trajectory["category_id"]) == (3, "dog", 1)
    first, second = trajectory["frames"]
    assert (first["frame_index"], first["mask_rle"], first["score"]) == (7, "m7", 0.9)
    sx, sy = 80 / 106, 48 / 64
    assert first["box"] == pytest.approx([20 * sx, 16 * sy, 20 * sx, 16 * sy], abs=0.01)
    # a box partly outside the content is clipped to the frame: x from (128 - 32) * sx to 80
    assert second["box"] == pytest.approx([96 * sx, 48 * sy, 80 - 96 * sx, 48 - 48 * sy], abs=0.01)
    no_masks = processor.post_process_dense_captions(outputs, original_size=(48, 80))
    assert "mask_rle" not in no_masks["trajectories"][0]["frames"][0]
    with pytest.raises(ValueError, match="no mask for track 3 in frame 9"):
        processor.post_process_dense_captions(outputs, original_size=(48, 80), mask_rles={(3, 7): "m7"})


@pytest.mark.parametrize("method", ["runs", "pycocotools", "auto"])
def test_mask_encoder_equals_pycocotools_on_the_resized_masks(method):
    """The device path (resize, threshold, run boundaries with torch; what CUDA runs) and the CPU path (pycocotools
    on the binary masks) give pycocotools' RLE of the same masks, one mask at a time."""
    from captionformer_hf.processing import VideoGeometry
    from captionformer_hf.processing.video_processing_captionformer import ClipMaskEncoder

    torch.manual_seed(0)
    geometry = VideoGeometry(original_size=(50, 70), content_size=(40, 56), padded_size=(64, 64))
    logits = torch.randn(7, 16, 16) * 3
    logits[0] = -5  # empty mask
    logits[1] = 5  # full mask
    encoder = ClipMaskEncoder(geometry, max_chunk_bytes=40_000, method=method)  # several chunks
    strings = encoder(logits)
    binary = encoder.binary_masks(logits).numpy().astype(np.uint8)
    expected = [mask_utils.encode(np.asfortranarray(m))["counts"].decode() for m in binary]
    assert strings == expected
    assert binary[0].sum() == 0 and binary[1].all() and 0 < binary[2].mean() < 1
    # the resize is the released code's: bilinear to the padded input, crop to the content, bilinear to the original
    step = torch.nn.functional.interpolate(logits[:, None], size=(64, 64), mode="bilinear", align_corners=False)
    step = torch.nn.functional.interpolate(step[..., :40, :56], size=(50, 70), mode="bilinear", align_corners=False)
    assert np.array_equal(binary, (step[:, 0] > 0).numpy())
    columns = encoder.binary_masks(logits, column_major=True)
    assert columns.shape == (7, 70, 50) and columns.is_contiguous()
    assert np.array_equal(columns.numpy(), binary.transpose(0, 2, 1).astype(bool))
    assert encoder(logits[:0]) == []


def test_mask_encoder_chunks_by_device_by_default(monkeypatch):
    """``max_chunk_bytes=None``: 16 MiB chunks on the CPU (the strings do not depend on the chunking); a bad budget is
    refused by name."""
    from captionformer_hf.processing import VideoGeometry
    from captionformer_hf.processing.video_processing_captionformer import ClipMaskEncoder

    geometry = VideoGeometry(original_size=(480, 640), content_size=(480, 640), padded_size=(480, 640))
    logits = torch.randn(12, 30, 40, generator=torch.Generator().manual_seed(0))
    encoder = ClipMaskEncoder(geometry)
    sizes = []
    binary_masks = ClipMaskEncoder.binary_masks
    monkeypatch.setattr(ClipMaskEncoder, "binary_masks", lambda self, x, **kw: sizes.append(len(x)) or
                        binary_masks(self, x, **kw))
    strings = encoder(logits)
    # a 480x640 mask takes 4 * (480 * 640 + 480 * 640) + 2 * 480 * 640 bytes: 5 fit in 16 MiB
    assert ClipMaskEncoder.CPU_CHUNK_BYTES == 16 * 2**20 and sizes == [5, 5, 2]
    sizes.clear()
    assert ClipMaskEncoder(geometry, max_chunk_bytes=1 << 30)(logits) == strings and sizes == [12]
    for bad in (0, True, 2.5):
        with pytest.raises(ValueError, match="`max_chunk_bytes` must be a positive integer, got "):
            ClipMaskEncoder(geometry, max_chunk_bytes=bad)


def test_processor_round_trip_and_captions(tmp_path):
    processor = toy_processor(clip_length=2)
    encoded = processor(text=["a red square moving to the left", ""])
    assert encoded["caption_ids"].shape[0] == 2
    end = processor.tokenizer.eos_token_id
    assert encoded["caption_ids"][0, int(encoded["caption_attention_mask"][0].sum()) - 1] == end
    assert encoded["caption_attention_mask"][1].sum() == 0
    assert processor.decode_caption(encoded["caption_ids"][0]) == "a red square moving to the left"
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, CaptionFormerProcessor)
    assert loaded.video_processor.to_dict() == processor.video_processor.to_dict()
    assert loaded.decode_caption(encoded["caption_ids"][0]) == "a red square moving to the left"
    with pytest.raises(ValueError, match="videos"):
        processor()


# ---------------------------------------------------------------------------------------------------- pipeline
def check_result(result, num_frames, height, width):
    assert (result["num_frames"], result["height"], result["width"]) == (num_frames, height, width)
    assert result["trajectories"]
    for trajectory in result["trajectories"]:
        assert isinstance(trajectory["caption"], str) and trajectory["caption"]
        for frame in trajectory["frames"]:
            assert 0 <= frame["frame_index"] < num_frames
            x, y, w, h = frame["box"]
            assert 0 <= x <= width and 0 <= y <= height and w >= 0 and h >= 0
            mask = mask_utils.decode({"size": [height, width], "counts": frame["mask_rle"].encode()})
            assert mask.shape == (height, width)


def test_pipeline_input_types_agree(pipe, sample):
    video, paths = sample
    from_path = pipe(paths["mp4"], max_new_tokens=3)
    check_result(from_path, 24, 96, 128)
    decoded = np.stack([f for _, f in VideoFrames(paths["mp4"])])
    from_array = pipe(decoded, max_new_tokens=3)
    from PIL import Image

    from_pil = pipe([Image.fromarray(f) for f in decoded], max_new_tokens=3)
    with open(paths["mp4"], "rb") as handle:
        from_file = pipe(handle, max_new_tokens=3)
    strip = lambda r: {k: v for k, v in r.items() if k != "fps"}  # noqa: E731  (arrays carry no fps)
    assert strip(from_array) == strip(from_path) == strip(from_pil) == strip(from_file)


def test_pipeline_batch_equals_one_by_one(pipe, sample):
    _, paths = sample
    rng = np.random.default_rng(1)
    other = (rng.random((5, 40, 60, 3)) * 255).astype(np.uint8)
    batched = pipe([paths["avi"], other], max_new_tokens=3, return_masks=False)
    single = [pipe(paths["avi"], max_new_tokens=3, return_masks=False), pipe(other, max_new_tokens=3, return_masks=False)]
    assert batched == single
    assert all("mask_rle" not in f for t in batched[0]["trajectories"] for f in t["frames"])


def test_pipeline_batch_size_equals_one_by_one(pipe, sample):
    _, paths = sample
    videos = [paths["mp4"], paths["avi"], paths["webm"]]
    batched = pipe(videos, batch_size=2, max_new_tokens=3)
    assert isinstance(batched, list) and len(batched) == 3
    assert batched == [pipe(video, max_new_tokens=3) for video in videos]


def test_pipeline_passes_generation_arguments(pipe, sample):
    _, paths = sample
    seen = []
    generate = pipe.model.language_model.generate

    def spy(*args, **kwargs):
        seen.append(kwargs["generation_config"])
        return generate(*args, **kwargs)

    pipe.model.language_model.generate = spy
    try:
        one = pipe(paths["mp4"], generate_kwargs={"max_new_tokens": 1}, return_masks=False)
        pipe(paths["mp4"], do_sample=True, top_k=3, temperature=0.7, max_new_tokens=2, return_masks=False)
    finally:
        pipe.model.language_model.generate = generate
    assert seen[0].max_new_tokens == 1 and all(len(t["caption"].split()) <= 1 for t in one["trajectories"])
    assert (seen[1].do_sample, seen[1].top_k, seen[1].temperature, seen[1].max_new_tokens) == (True, 3, 0.7, 2)
    with pytest.raises(ValueError, match="given twice"):
        pipe(paths["mp4"], max_new_tokens=2, generate_kwargs={"max_new_tokens": 3})
    with pytest.raises(TypeError, match="unexpected pipeline arguments: colour"):
        pipe(paths["mp4"], colour="red")
    with pytest.raises(TypeError, match="`generate_kwargs` must be a dict"):
        pipe(paths["mp4"], generate_kwargs=[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_pipeline_runs_in_every_dtype(tiny_model_dir, sample, dtype):
    _, paths = sample
    typed = pipeline("dense-video-object-captioning", model=tiny_model_dir, dtype=dtype)
    assert typed.model.dtype == dtype
    if dtype == torch.float16:  # transformers keeps these in fp32 under fp16 (`_keep_in_fp32_modules`)
        assert typed.model.model.caption_head.qformer.layernorm.weight.dtype == torch.float32
    result = typed(paths["mp4"], max_new_tokens=3, clip_batch_size=2)
    check_result(result, 24, 96, 128)


def test_model_call_on_processor_outputs(tiny_model_dir):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_model_dir).eval()
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    rng = np.random.default_rng(0)
    clip = (rng.random((2, 48, 80, 3)) * 255).astype(np.uint8)  # one clip of config.clip_length = 2 frames
    inputs = processor(videos=clip, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
        as_tuple = model(**inputs, return_dict=False)
    assert out.scores.shape == (1, model.config.segmenter_config.num_queries)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.object_queries)
    video = (rng.random((5, 48, 80, 3)) * 255).astype(np.uint8)
    with pytest.raises(ValueError, match=r"clip_length=2 frames, got 5.*predict_video"):
        model(**processor(videos=video, return_tensors="pt"))
    with pytest.raises(TypeError, match="unexpected arguments: colour"):
        model(**inputs, colour=1)


def test_pipeline_parameters_and_errors(pipe, sample, tmp_path):
    _, paths = sample
    few = pipe(paths["mp4"], max_frames=6, max_new_tokens=2)
    assert max(f["frame_index"] for t in few["trajectories"] for f in t["frames"]) < 6
    sampled = pipe(paths["mp4"], fps=4, max_new_tokens=2, return_masks=False)
    assert {f["frame_index"] for t in sampled["trajectories"] for f in t["frames"]} <= set(range(0, 24, 2))
    none = pipe(paths["mp4"], threshold=1.0)
    assert none["trajectories"] == []
    with pytest.raises(ValueError, match="file not found"):
        pipe(str(tmp_path / "missing.mp4"))
    with pytest.raises(ValueError, match="`threshold`"):
        pipe(paths["mp4"], threshold=3)
    with pytest.raises(ValueError, match=r"`presence_threshold` must be a number in \[0, 1\], got True"):
        pipe(paths["mp4"], presence_threshold=True)
    with pytest.raises(TypeError, match="dtype"):
        pipe(np.zeros((2, 32, 32, 3), np.int64))
    with pytest.raises(ValueError, match="4 dimensions"):
        pipe(np.zeros((2, 32, 32), np.uint8))


def test_pipeline_remote_code_without_the_package(pipe, tmp_path, sample):
    _, paths = sample
    pipe.save_pretrained(tmp_path / "repo")
    config = json.loads((tmp_path / "repo" / "config.json").read_text())
    assert config["custom_pipelines"]["dense-video-object-captioning"]["impl"] == "pipeline_captionformer.DenseVideoObjectCaptioningPipeline"
    expected = pipe(paths["mp4"], max_new_tokens=3)
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    run_without_the_package(
        f"""
        import json
        from transformers import pipeline
        pipe = pipeline(model={str(tmp_path / 'repo')!r}, trust_remote_code=True)
        result = pipe({paths['mp4']!r}, max_new_tokens=3)
        assert result == json.load(open({str(tmp_path / 'expected.json')!r})), "different result"
        """,
        tmp_path,
    )


@pytest.mark.skipif(GRADIO_VIDEOS is None, reason="gradio (its sample videos) is not installed")
# b.avi's header says 151 frames; 150 decode (the count reported is what decodes)
@pytest.mark.parametrize("name, frames, size", [("a.mp4", 209, (1080, 1920)), ("b.avi", 150, (270, 480)), ("world.mp4", 901, (270, 480))])
def test_real_sample_videos(pipe, name, frames, size):
    path = os.path.join(GRADIO_VIDEOS, name)
    result = pipe(path, num_frames=4, max_new_tokens=2, return_masks=name != "a.mp4")
    assert result["num_frames"] == frames and (result["height"], result["width"]) == size
    indices = sorted({f["frame_index"] for t in result["trajectories"] for f in t["frames"]})
    reader = VideoFrames(path, num_frames=4)
    assert set(indices) <= set(reader.sampled_indices(reader.total_frames))
    assert len(reader.sampled_indices(reader.total_frames)) == 4


# --------------------------------------------------------------------------------------------------------- CLI
def test_cli_caption_and_render(tiny_model_dir, sample, tmp_path, capsys):
    _, paths = sample
    out = tmp_path / "result.json"
    overlay = tmp_path / "overlay.mp4"
    code = main(["caption", paths["mp4"], "--model", tiny_model_dir, "--out", str(out), "--render", str(overlay),
                 "--max-new-tokens", "3", "--quiet"])
    assert code == 0
    result = json.loads(out.read_text())
    check_result(result, 24, 96, 128)
    assert result["video_id"] == "sample"
    rendered = [f for _, f in VideoFrames(str(overlay))]
    assert len(rendered) == 24 and rendered[0].shape == (96, 128, 3)
    original = [f for _, f in VideoFrames(paths["mp4"])]
    assert np.abs(rendered[0].astype(int) - original[0]).mean() > 5  # something was drawn
    assert "trajectories ->" in capsys.readouterr().out
    code = main(["caption", str(tmp_path / "nope.mp4"), "--model", tiny_model_dir, "--quiet"])
    assert code == 2 and "file not found" in capsys.readouterr().err


def test_cli_sample_video(tmp_path, capsys):
    code = main(["sample-video", str(tmp_path / "s.mp4"), "--frames", "12", "--seed", "5",
                 "--annotations", str(tmp_path / "gt.json")])
    assert code == 0
    assert len(list(VideoFrames(str(tmp_path / "s.mp4")))) == 12
    reference = json.loads((tmp_path / "gt.json").read_text())
    assert reference["num_frames"] == 12 and reference["trajectories"]
    assert "a " in capsys.readouterr().out
def test_detectron2_resize_convention_rounds_and_resizes_as_the_release():
    """Converted checkpoints resize as detectron2's ResizeShortestEdge: the rounded size (368 x 640 -> 480 x 835,
    where transformers' truncation gives 834) and PIL bilinear on uint8 frames."""
    import numpy as np
    from PIL import Image

    from captionformer_hf.processing.video_processing_captionformer import CaptionFormerVideoProcessor

    size = {"shortest_edge": 480, "longest_edge": 1333}
    release = CaptionFormerVideoProcessor(size=size, resize_convention="detectron2")
    default = CaptionFormerVideoProcessor(size=size)
    assert release.content_size(368, 640) == (480, 835) and default.content_size(368, 640) == (480, 834)
    assert release.content_size(640, 368) == (835, 480)
    assert release.content_size(100, 1000) == (133, 1333)  # the long side capped: 1333 x 133.3 -> rounded
    frames = np.random.default_rng(0).integers(0, 256, (2, 36, 64, 3), dtype=np.uint8)
    small = CaptionFormerVideoProcessor(size={"shortest_edge": 48, "longest_edge": 200}, resize_convention="detectron2",
                                        do_normalize=False, size_divisor=1)
    out = small.transform_frames(torch.from_numpy(frames).permute(0, 3, 1, 2))
    assert out.shape == (2, 3, 48, 85)  # 64 * 48 / 36 = 85.33 -> 85
    expected = np.stack([np.asarray(Image.fromarray(f).resize((85, 48), Image.BILINEAR)) for f in frames])
    torch.testing.assert_close(out, torch.from_numpy(expected).permute(0, 3, 1, 2).float() / 255, rtol=0, atol=1e-6)
    reloaded = CaptionFormerVideoProcessor.from_dict(release.to_dict())
    assert reloaded.resize_convention == "detectron2"
    with pytest.raises(ValueError, match="`resize_convention` must be one of"):
        CaptionFormerVideoProcessor(resize_convention="pil")
