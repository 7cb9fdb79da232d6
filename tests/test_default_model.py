"""The embedded default model: it loads offline and captions a generated sample video with the expected objects."""

import pytest

from captionformer_hf.data.synthetic import COLORS, SHAPES, SyntheticVideoConfig, generate_video, write_video
from captionformer_hf.defaults import default_model_path, load_pipeline


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline()


def test_default_model_is_shipped_small_and_loads(pipe):
    import os

    folder = default_model_path()
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    assert size < 5e6
    assert pipe.model.config.id2label == {0: "square", 1: "circle", 2: "triangle", 3: "star"}
    assert "toy" in open(os.path.join(folder, "README.md")).read()


def test_default_model_captions_a_sample_video(pipe, tmp_path):
    # the sample of `captionformer sample-video` (seed 0): one purple circle, visible in all 48 frames
    video = generate_video(0, SyntheticVideoConfig(height=192, width=256, num_frames=48, min_size=28, max_size=52))
    path = tmp_path / "sample.mp4"
    write_video(video["frames"], path, fps=8)
    result = pipe(str(path))
    assert len(result["trajectories"]) == len(video["tracks"]) == 1
    trajectory = result["trajectories"][0]
    words = trajectory["caption"].split()
    assert any(w in COLORS for w in words) and any(w in SHAPES for w in words)
    assert trajectory["category"] in SHAPES
    assert "purple" in words  # the object's colour
    assert len(trajectory["frames"]) >= 40  # tracked through the occluder


def sample_path(tmp_path):
    video = generate_video(0, SyntheticVideoConfig(height=192, width=256, num_frames=48, min_size=28, max_size=52))
    path = tmp_path / "sample.mp4"
    write_video(video["frames"], path, fps=8)
    return str(path)


def assert_same_result(a, b, box_tolerance):
    assert len(a["trajectories"]) == len(b["trajectories"])
    for x, y in zip(a["trajectories"], b["trajectories"]):
        assert x["caption"] == y["caption"] and x["category"] == y["category"]
        assert [f["frame_index"] for f in x["frames"]] == [f["frame_index"] for f in y["frames"]]
        for fx, fy in zip(x["frames"], y["frames"]):
            assert fx["box"] == pytest.approx(fy["box"], abs=box_tolerance)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_on_cpu_gives_the_float32_result(pipe, tmp_path, dtype):
    import torch

    path = sample_path(tmp_path)
    half = load_pipeline(dtype=getattr(torch, dtype))
    assert half.model.dtype == getattr(torch, dtype)
    assert_same_result(pipe(path), half(path), box_tolerance=1.0)


def _cuda():
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="needs CUDA")
def test_cpu_and_cuda_agree(pipe, tmp_path):
    path = sample_path(tmp_path)
    on_gpu = load_pipeline(device="cuda")
    assert on_gpu.model.device.type == "cuda"
    assert_same_result(pipe(path), on_gpu(path), box_tolerance=0.1)


@pytest.mark.skipif(not _cuda(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_cuda_in_every_dtype(pipe, tmp_path, dtype):
    import torch

    path = sample_path(tmp_path)
    on_gpu = load_pipeline(device="cuda", dtype=getattr(torch, dtype))
    assert_same_result(pipe(path), on_gpu(path), box_tolerance=1.0)
