"""Video processor, processor, pipeline, CLI and overlay rendering."""

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from transformers import AutoProcessor, AutoVideoProcessor, pipeline

from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning, CaptionFormerProcessor, CaptionFormerVideoProcessor
from captionformer_hf.cli import main
from captionformer_hf.data.synthetic import SyntheticVideoConfig, generate_video, write_video
from captionformer_hf.processing import VideoFrames
from captionformer_hf.testing_utils import tiny_config, tiny_processor

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
    config = tiny_config(clip_length=2, score_threshold=0.0, hysteresis_low=0.0, hysteresis_high=0.0, hysteresis_min_length=1)
    model = CaptionFormerForDenseVideoObjectCaptioning(config).eval()
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    tiny_processor(clip_length=2).save_pretrained(folder)
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
    out = processor(video, return_tensors="pt")
    # 48x80 -> 64x106 (aspect kept, truncated), padded to 64x128; 3 frames -> 4 (clips of 2, last frame repeated)
    assert out["pixel_values_videos"].shape == (1, 4, 3, 64, 128)
    assert out["original_sizes"].tolist() == [[48, 80]] and out["content_sizes"].tolist() == [[64, 106]]
    pixels = out["pixel_values_videos"]
    assert torch.all(pixels[0, :, :, :, 106:] == 0)  # padding
    torch.testing.assert_close(pixels[0, 3], pixels[0, 2])
    expected = (torch.tensor(video[0, 0, 0] / 255.0) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(pixels[0, 0, :, 0, 0].double(), expected, atol=0.05, rtol=0)
    processor.save_pretrained(tmp_path)
    loaded = AutoVideoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, CaptionFormerVideoProcessor)
    assert loaded.to_dict() == processor.to_dict()
    torch.testing.assert_close(loaded(video, return_tensors="pt")["pixel_values_videos"], pixels)


def test_streaming_clips_match_batch_processing(sample):
    _, paths = sample
    processor = CaptionFormerVideoProcessor(size={"shortest_edge": 64, "longest_edge": 128}, clip_length=5)
    reader = processor.open_video(paths["avi"])
    clips = list(processor.iter_clips(reader))
    assert [c.shape[0] for c, _ in clips] == [5, 5, 5, 5, 4]
    assert clips[-1][1] == [20, 21, 22, 23]
    frames = np.stack([f for _, f in VideoFrames(paths["avi"])])
    batch = processor(frames, return_tensors="pt")["pixel_values_videos"][0]
    torch.testing.assert_close(torch.cat([c for c, _ in clips]), batch[:24])


def test_post_process_maps_boxes_and_masks_to_the_original_video():
    processor = CaptionFormerVideoProcessor(size={"shortest_edge": 64, "longest_edge": 128})
    # original 48x80 -> content 64x106 inside a 64x128 input
    mask = np.zeros((64, 128), np.uint8)
    mask[16:32, 20:40] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))["counts"].decode()
    raw = {"input_size": [64, 128], "trajectories": [{"track_id": 3, "score": 0.9, "caption_ids": [5], "frames": [
        {"frame_index": 0, "box": [30 / 128, 24 / 64, 20 / 128, 16 / 64], "mask_rle": rle, "score": 0.9}]}]}
    result = processor.post_process_dense_captions(raw, original_size=(48, 80), frame_indices=[7])
    frame = result["trajectories"][0]["frames"][0]
    assert frame["frame_index"] == 7
    sx, sy = 80 / 106, 48 / 64
    assert frame["box"] == pytest.approx([20 * sx, 16 * sy, 20 * sx, 16 * sy], abs=0.01)
    decoded = mask_utils.decode({"size": [48, 80], "counts": frame["mask_rle"].encode()})
    assert decoded.shape == (48, 80)
    ys, xs = np.nonzero(decoded)
    assert abs(xs.min() - 20 * sx) <= 1 and abs(xs.max() + 1 - 40 * sx) <= 1
    assert abs(ys.min() - 16 * sy) <= 1 and abs(ys.max() + 1 - 32 * sy) <= 1


def test_processor_round_trip_and_captions(tmp_path):
    processor = tiny_processor(clip_length=2)
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
    script = textwrap.dedent(
        f"""
        import json, sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] == "captionformer_hf":
                    raise ImportError("blocked")
        sys.meta_path.insert(0, Block())
        from transformers import pipeline
        pipe = pipeline(model={str(tmp_path / 'repo')!r}, trust_remote_code=True)
        result = pipe({paths['mp4']!r}, max_new_tokens=3)
        assert "captionformer_hf" not in sys.modules
        assert result == json.load(open({str(tmp_path / 'expected.json')!r})), "different result"
        print("REMOTE-PIPELINE-OK")
        """
    )
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert "REMOTE-PIPELINE-OK" in out.stdout, out.stderr[-3000:]


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
