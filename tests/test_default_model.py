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
