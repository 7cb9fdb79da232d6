"""Hostile and broken input, as a new user or an attacker would give it: every case gets one clear error (or a
bounded behaviour), before long work starts. The README's reliability table lists these cases."""

import functools
import http.server
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from captionformer_hf.cli import main
from captionformer_hf.data.synthetic import SyntheticVideoConfig, generate_video, write_video
from captionformer_hf.metrics import compute_chota
from captionformer_hf.processing import VideoFrames

try:
    import gradio

    GRADIO_VIDEOS = os.path.join(os.path.dirname(gradio.__file__), "media_assets", "videos")
except ImportError:  # pragma: no cover
    GRADIO_VIDEOS = None


def video(frames, **extra):
    return {"video_id": "v", "num_frames": 2, "height": 100, "width": 100, **extra, "trajectories": [
        {"track_id": 1, "score": 0.9, "caption": "a b", "frames": frames}]}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A 48-frame sample video (the sample-video defaults) and its ground truth."""
    folder = tmp_path_factory.mktemp("shapes")
    assert main(["sample-video", str(folder / "s.mp4"), "--seed", "3", "--frames", "48",
                 "--annotations", str(folder / "gt.json")]) == 0
    return folder


# ------------------------------------------------------------------------------------------------------- CHOTA
def test_chota_refuses_masks_that_do_not_fit_the_frame_instead_of_hanging():
    """pycocotools loops forever (holding the GIL, deaf to Ctrl-C) on an RLE that does not cover the frame: the check
    runs first. In a child process with a time limit, so that a regression fails instead of hanging the suite."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import numpy as np
        from pycocotools import mask as mask_utils
        from captionformer_hf.metrics import compute_chota
        small = mask_utils.encode(np.asfortranarray(np.ones((50, 50), np.uint8)))["counts"].decode()  # 50x50 RLE
        for counts in (small, "!!!garbage", ""):
            video = {"video_id": "v", "num_frames": 1, "height": 100, "width": 100, "trajectories": [
                {"track_id": 1, "score": 0.9, "frames": [{"frame_index": 0, "mask_rle": counts}]}]}
            try:
                compute_chota([video], [video], iou_type="mask", caption_metrics=())
                print("NO ERROR")
            except ValueError as error:
                print(error)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3, out.stderr[-2000:]
    assert lines[0].startswith("video 'v', reference, track_id 1, frame 0: bad mask RLE (its runs cover 2500 pixels, "
                               "a 100x100 frame has 10000)")
    assert all(line.startswith("video 'v', reference, track_id 1, frame 0:") for line in lines[1:]), lines


@pytest.mark.parametrize("mutate, error, message", [
    (lambda v: v["trajectories"][0]["frames"][0].update(box=["a", 0, 5, 5]), TypeError,
     r"video 'v', prediction, track_id 1, frame 0: `box` must be a number, got str 'a'"),
    (lambda v: v["trajectories"][0].update(score="high"), TypeError,
     r"video 'v', prediction, track_id 1: `score` must be a number, got str 'high'"),
    (lambda v: v["trajectories"][0].update(track_id=[1]), TypeError,
     r"video 'v', prediction: trajectory 0: `track_id` must be an integer or a string, got list"),
    (lambda v: v.update(video_id={"a": 1}), TypeError, r"prediction video `video_id` must be a string or an integer"),
    (lambda v: v["trajectories"][0]["frames"][0].update(caption=5), TypeError,
     r"video 'v', prediction, track_id 1, frame 0: `caption` must be a string, got int"),
])
def test_chota_names_where_a_value_is_wrong(mutate, error, message):
    good = video([{"frame_index": 0, "box": [0, 0, 5, 5]}, {"frame_index": 1, "box": [1, 0, 5, 5]}])
    bad = json.loads(json.dumps(good))
    mutate(bad)
    with pytest.raises(error, match=message):
        compute_chota([bad], [good], caption_metrics=("cider",))


def test_evaluating_nothing_is_an_error(tmp_path, capsys):
    (tmp_path / "empty.json").write_text("[]")
    assert main(["evaluate", str(tmp_path / "empty.json"), str(tmp_path / "empty.json"),
                 "--caption-metrics", "cider"]) == 2
    assert "captionformer evaluate: error: `references` holds no video: there is nothing to evaluate" in \
        capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ video files
def _truncated(tmp_path, name: str):
    if name == "world.mp4":  # the first 30 % of a 901-frame mp4 whose index comes first
        if GRADIO_VIDEOS is None:
            pytest.skip("gradio's sample videos are not installed")
        data, keep = open(os.path.join(GRADIO_VIDEOS, name), "rb").read(), 0.3
    else:  # our own: an avi, whose header declares the frame count; 70 % of it (its first frame is a large share)
        write_video(generate_video(1, SyntheticVideoConfig(num_frames=60))["frames"], tmp_path / "full.avi", fps=8)
        data, keep = (tmp_path / "full.avi").read_bytes(), 0.7
    path = tmp_path / f"cut-{name}"
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("name, declared", [("world.mp4", 901), ("shapes.avi", 60)])
def test_a_truncated_file_is_refused_unless_allowed(tmp_path, name, declared):
    path = _truncated(tmp_path, name)
    with pytest.raises(ValueError, match=rf"is truncated: its container declares {declared} frames but only \d+ can "
                                         r"be read; pass allow_truncated=True \(command line: --allow-truncated\)"):
        VideoFrames(str(path))
    reader = VideoFrames(str(path), allow_truncated=True)
    decoded = sum(1 for _ in reader)
    assert reader.truncated and 0 < decoded < declared and reader.num_source_frames == decoded
    assert reader.warnings == [f"`video`: {path} is truncated: its container declares {declared} frames but only "
                               f"{reader.warnings[0].split('only ')[1].split(' can')[0]} can be read"]


def test_the_command_line_refuses_a_truncated_file_or_warns_in_the_result(toy_model_dir, tmp_path, capsys):
    path = _truncated(tmp_path, "shapes.avi")
    out = tmp_path / "out.json"
    assert main(["caption", str(path), "--model", toy_model_dir, "--out", str(out), "-q"]) == 2
    assert "is truncated" in capsys.readouterr().err and not out.exists()
    assert main(["caption", str(path), "--model", toy_model_dir, "--out", str(out), "-q", "--allow-truncated",
                 "--max-new-tokens", "2"]) == 0
    result = json.loads(out.read_text())
    assert result["warnings"][0].endswith("can be read") and result["num_frames"] < 60
    assert "warning: `video`" in capsys.readouterr().err


def test_max_frames_reports_the_video_length_so_evaluation_works(toy_model_dir, shapes, tmp_path, capsys):
    out = tmp_path / "first10.json"
    assert main(["caption", str(shapes / "s.mp4"), "--model", toy_model_dir, "--max-frames", "10", "--out", str(out),
                 "-q", "--max-new-tokens", "2"]) == 0
    result = json.loads(out.read_text())
    assert result["num_frames"] == 48  # the video's length, not the 10 (or 11) frames processed
    assert max(f["frame_index"] for t in result["trajectories"] for f in t["frames"]) <= 9
    result["video_id"] = "s"
    (tmp_path / "pred.json").write_text(json.dumps([result]))
    gt = json.loads((shapes / "gt.json").read_text())
    gt["video_id"] = "s"
    (tmp_path / "gt.json").write_text(json.dumps([gt]))
    assert main(["evaluate", str(tmp_path / "pred.json"), str(tmp_path / "gt.json"), "--caption-metrics", "cider"]) == 0


def test_frames_larger_than_max_side_are_downscaled_while_decoding(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (3, 360, 640, 3), dtype=np.uint8)
    write_video(frames, tmp_path / "wide.mp4", fps=8)
    reader = VideoFrames(str(tmp_path / "wide.mp4"), max_side=128)
    decoded = [f for _, f in reader]
    assert reader.downscaled and (reader.height, reader.width) == (72, 128)
    assert [f.shape for f in decoded] == [(72, 128, 3)] * 3
    with pytest.raises(ValueError, match="has 3 frames; at most 2 can be decoded"):
        VideoFrames(str(tmp_path / "wide.mp4"), max_decoded_frames=2)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_folder(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_urls_are_read_once_and_size_capped(http_folder):
    folder, url = http_folder
    write_video(generate_video(0, SyntheticVideoConfig(num_frames=8))["frames"], folder / "v.mp4", fps=8)
    size = (folder / "v.mp4").stat().st_size
    assert len(list(VideoFrames(f"{url}/v.mp4"))) == 8
    with pytest.raises(ValueError, match=rf"{url}/v.mp4 is {size / 1024:.1f} KiB, more than the "
                                         rf"{(size - 1) / 1024:.1f} KiB allowed \(`max_download_bytes`\)"):
        VideoFrames(f"{url}/v.mp4", max_download_bytes=size - 1)
    with pytest.raises(ValueError, match=r"could not download .*/missing.mp4 \(HTTP 404 File not found\)"):
        VideoFrames(f"{url}/missing.mp4")


def test_overlays_keep_a_fractional_frame_rate(tmp_path):
    import av

    from captionformer_hf.visualization import render_overlay

    frames = [(i, np.zeros((32, 32, 3), np.uint8)) for i in range(30)]
    render_overlay(frames, {"trajectories": []}, tmp_path / "o.mp4", fps=30000 / 1001)
    with av.open(str(tmp_path / "o.mp4")) as container:
        assert container.streams.video[0].average_rate == 30000 / 1001 or \
            abs(float(container.streams.video[0].average_rate) - 29.97) < 1e-3


# ------------------------------------------------------------------------------------------------ command line
def test_command_line_errors_are_one_line(toy_model_dir, shapes, tmp_path, capsys, monkeypatch):
    def run(*argv):
        code = main(list(argv))
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("\n") == 1, err
        return code, err

    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: no retries
    code, err = run("caption", str(shapes / "s.mp4"), "--model", "someone/not-a-model", "-q")
    assert code == 2 and err.startswith("captionformer caption: error: ")
    assert run("caption", str(tmp_path), "-q") == (2, f"captionformer caption: error: `video`: {tmp_path} is a "
                                                      "directory, not a video file\n")
    code, err = run("caption", str(shapes / "s.mp4"), "--model", toy_model_dir, "--fps", "inf", "-q")
    assert code == 2 and "`fps` must be a positive finite number, got inf" in err
    (tmp_path / "pt.json").write_text(json.dumps({"videos": [{"length": 2}], "annotations": []}))
    assert run("evaluate", str(tmp_path / "pt.json"), str(tmp_path / "pt.json"), "--caption-metrics", "cider") == (
        2, "captionformer evaluate: error: ground truth `videos[0]` has no `id`\n")
    code, err = run("predict", "--dataset", str(tmp_path / "no-such-dataset"), "--out", str(tmp_path / "p.json"))
    assert code == 2 and not (tmp_path / "p.json.parts").exists()  # nothing left behind


def test_every_error_reaches_the_command_line_as_one_line():
    from captionformer_hf.cli import describe_error

    assert describe_error(ValueError("Validation error for field 'x':\n    TypeError: expected int")) == \
        "Validation error for field 'x': TypeError: expected int"
    assert describe_error(FileNotFoundError(2, "No such file or directory", "/x/y")) == "No such file or directory: /x/y"
    assert describe_error(KeyError("caption")) == "missing key 'caption'"
    assert describe_error(AttributeError("'list' object has no attribute 'height'\nmore")) == \
        "AttributeError: 'list' object has no attribute 'height'"


def test_outputs_are_checked_before_the_work(shapes, tmp_path, capsys, monkeypatch):
    import captionformer_hf.defaults as defaults

    monkeypatch.setattr(defaults, "load_pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "file").write_text("")
    assert main(["caption", str(shapes / "s.mp4"), "--out", str(tmp_path / "file" / "x.json"), "-q"]) == 2
    assert "`--out`: cannot write into" in capsys.readouterr().err
    assert main(["caption", str(shapes / "s.mp4"), "--render", str(tmp_path), "-q",
                 "--out", str(tmp_path / "ok.json")]) == 2
    assert f"`--render`: {tmp_path} is a directory" in capsys.readouterr().err


def test_outputs_get_the_permissions_of_a_plain_write(tmp_path):
    """The temporary file and folder of an atomic write are private; what lands at the path is not."""
    import stat

    from captionformer_hf.utils import atomic_directory, atomic_write_json

    old = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "result.json", {"a": 1})
        with atomic_directory(tmp_path / "folder") as folder:
            (Path(folder) / "x").write_text("")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "result.json").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "folder").st_mode) == 0o750


def test_json_output_never_holds_non_finite_numbers(tmp_path):
    from captionformer_hf.utils import atomic_write_json

    with pytest.raises(ValueError, match="non-finite number"):
        atomic_write_json(tmp_path / "x.json", {"fps": float("inf")})
    assert not (tmp_path / "x.json").exists()


# -------------------------------------------------------------------------------------------------------- data
def test_data_synthetic_checks_before_generating_and_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["data", "synthetic", "--out", str(out), "--num-videos", "3", "--shard-size", "0", "-q"]) == 2
    assert "`max_shard_size` (--shard-size) must be a positive integer, got 0" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # no videos folder, no temporary folder
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["data", "synthetic", "--out", str(out), "--num-videos", "3", "-q"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["syn"] and os.listdir(out) == ["keep.txt"]


@pytest.mark.parametrize("file_name, message", [
    ("../outside.jpg", "leaves the frames folder"),
    ("/etc/hostname", "leaves the frames folder"),
    ("link.jpg", "is a link out of the frames folder"),
    ("notes.jpg", "is not an image"),
])
def test_data_convert_reads_only_images_inside_the_frames_folder(tmp_path, file_name, message, capsys):
    from PIL import Image

    frames = tmp_path / "frames"
    frames.mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.jpg")
    os.symlink(tmp_path / "outside.jpg", frames / "link.jpg")
    (frames / "notes.jpg").write_text("not a picture")
    annotations = {"videos": [{"id": 1, "height": 8, "width": 8, "file_names": [file_name]}], "annotations": [],
                   "categories": []}
    (tmp_path / "ann.json").write_text(json.dumps(annotations))
    assert main(["data", "convert", "--format", "lvvis", "--split", f"train={tmp_path / 'ann.json'}:{frames}",
                 "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_data_convert_names_a_missing_field(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "frames").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "frames" / "0.jpg")
    annotations = {"videos": [{"id": 7, "width": 8, "file_names": ["0.jpg"]}], "annotations": [], "categories": []}
    (tmp_path / "ann.json").write_text(json.dumps(annotations))
    assert main(["data", "convert", "--format", "lvvis", "--split",
                 f"train={tmp_path / 'ann.json'}:{tmp_path / 'frames'}", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == "captionformer data: error: video 7: missing `height`\n"


# ----------------------------------------------------------------------------------- round two: nothing is lost
def test_an_output_never_replaces_the_input_or_another_output(toy_model_dir, shapes, tmp_path, capsys):
    video = str(shapes / "s.mp4")
    before = (shapes / "s.mp4").read_bytes()
    for extra, message in ((["--render", video], "`--render` is the input `VIDEO`"),
                           (["--out", video], "`--out` is the input `VIDEO`"),
                           (["--out", str(tmp_path / "x"), "--render", str(tmp_path / "x")],
                            "`--out` and `--render` are the same file")):
        assert main(["caption", video, "--model", toy_model_dir, *extra]) == 2
        assert message in capsys.readouterr().err
    assert (shapes / "s.mp4").read_bytes() == before and not (tmp_path / "x").exists()


def test_a_second_writer_of_the_same_output_is_refused(tmp_path):
    from captionformer_hf.utils import OutputLock

    out = tmp_path / "x.json"
    with OutputLock(out):
        assert (tmp_path / "x.json.lock").read_text() == str(os.getpid())
        # another process's lock: its pid file names a live process (pid 1 lives as long as the machine)
        (tmp_path / "y.json.lock").write_text("1")
        with pytest.raises(ValueError, match=r"y.json is being written by another process \(pid 1\)"):
            OutputLock(tmp_path / "y.json").acquire()
    assert not (tmp_path / "x.json.lock").exists()  # released
    (tmp_path / "z.json.lock").write_text("999999999")  # a crashed writer's stale lock is taken over
    with OutputLock(tmp_path / "z.json") as lock:
        assert lock.held


def test_predict_refuses_to_resume_with_other_settings_or_beside_a_running_writer(toy_model_dir, tmp_path, capsys):
    assert main(["data", "synthetic", "--num-videos", "3", "--out", str(tmp_path / "data"), "--frames", "4",
                 "-q"]) == 0
    args = ["predict", "--model", toy_model_dir, "--dataset", str(tmp_path / "data"), "--split", "train",
            "--out", str(tmp_path / "p.json"), "--max-new-tokens", "1", "-q"]
    parts = tmp_path / "p.json.parts"
    parts.mkdir()
    (parts / "settings.json").write_text(json.dumps({"predict": {"threshold": 0.1}}))
    (parts / "00000000.json").write_text("{}")
    assert main(args) == 2
    assert "were made with other settings" in capsys.readouterr().err
    (parts / "settings.json").unlink()
    assert main(args) == 2
    assert "settings are unknown" in capsys.readouterr().err
    for name in os.listdir(parts):
        (parts / name).unlink()
    (tmp_path / "p.json.lock").write_text("1")  # pid 1: alive, another writer
    assert main(args) == 2
    assert "is being written by another process" in capsys.readouterr().err
    (tmp_path / "p.json.lock").unlink()
    assert main(args) == 0 and not (tmp_path / "p.json.lock").exists()


def test_space_build_overwrite_replaces_only_a_folder_it_built(tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    assert main(["space", "build", "chota", "--out", str(precious), "--overwrite"]) == 2
    assert "is not a folder this command wrote" in capsys.readouterr().err
    assert (precious / "thesis.tex").read_text() == "years of work"
    assert main(["space", "build", "chota", "--out", str(tmp_path / "space")]) == 0
    assert main(["space", "build", "chota", "--out", str(tmp_path / "space"), "--overwrite"]) == 0


# ---------------------------------------------------------------------------- results in the promised units
def test_max_side_results_are_in_the_source_pixels(tmp_path):
    """A video downscaled while decoding (max_side) is reported in its own pixels: height and width, boxes and masks
    equal those of the full-size run (up to resampling), and the ground truth of the source matches them."""
    from captionformer_hf.data.synthetic import sample_video_config
    from captionformer_hf.defaults import load_pipeline
    from captionformer_hf.processing.trajectory_captionformer import rle_decode

    video = generate_video(5, sample_video_config(num_frames=6))
    path = tmp_path / "v.mp4"
    write_video(video["frames"], path, fps=8)
    pipe = load_pipeline()
    full = pipe(str(path), threshold=0.0, max_new_tokens=1)
    small = pipe(str(path), threshold=0.0, max_new_tokens=1, max_side=128)  # decoded at 96x128
    assert (small["height"], small["width"]) == (full["height"], full["width"]) == (192, 256)
    assert len(small["trajectories"]) == len(full["trajectories"]) >= 1
    # the model sees the same 96x128 input either way: the same boxes, in the source's pixels (not the 96x128 ones)
    for a, b in zip(full["trajectories"], small["trajectories"]):
        for fa, fb in zip(a["frames"], b["frames"]):
            assert fa["frame_index"] == fb["frame_index"]
            assert fb["box"] == pytest.approx(fa["box"], abs=3.0)
    first = small["trajectories"][0]["frames"][0]
    mask = rle_decode(first["mask_rle"], 192, 256)  # the mask is a 192x256 one
    assert mask.shape == (192, 256) and mask.any()
    # evaluated against the source's own ground truth, the downscaled run keeps its detections
    truth = [{"video_id": "v", "num_frames": 6, "trajectories": [
        {"track_id": t["track_id"], "caption": t["caption"], "frames": [{"frame_index": f["frame_index"],
                                                                          "box": f["box"]} for f in t["frames"]]}
        for t in video["trajectories"]]}]
    scores = [compute_chota([{**r, "video_id": "v"}], truth, caption_metrics=("cider",), score_threshold=0.0)["DetA"]
              for r in (full, small)]
    assert scores[1] > 0.5 * scores[0] > 0


def test_bad_array_values_and_frame_rates_are_refused():
    from captionformer_hf.processing import VideoFrames

    frames = np.full((2, 32, 32, 3), 128.0)
    reader = VideoFrames(frames)  # a float array in 0-255 is taken as it is, not multiplied by 255
    assert next(iter(reader))[1].max() == 128
    assert next(iter(VideoFrames(frames / 255)))[1].max() == 128
    with pytest.raises(ValueError, match=r"values in \[0, 1\] or \[0, 255\], got \[-1, 128\]"):
        VideoFrames(np.concatenate([frames, -np.ones((1, 32, 32, 3))]))
    for fps in (0, -8, float("nan")):
        with pytest.raises(ValueError, match="`video_fps` must be a positive finite number"):
            VideoFrames(frames.astype(np.uint8), video_fps=fps)


def test_a_huge_frame_is_refused_or_downscaled_before_it_is_decoded_at_full_size(tmp_path):
    import resource

    big = np.zeros((1, 4000, 4000, 3), np.uint8)
    write_video(big, tmp_path / "big.mp4", fps=1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reader = VideoFrames(str(tmp_path / "big.mp4"), max_side=256)
    frame = next(iter(reader))[1]
    assert frame.shape == (256, 256, 3)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 150  # no 4000x4000 RGB array (48 MB) nor its float copy (192 MB) was made


def test_a_damaged_model_is_refused_at_load_naming_the_bad_tensors(toy_model_dir, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning

    weights = load_file(os.path.join(toy_model_dir, "model.safetensors"))
    cases = {
        "half": ({k: v for i, (k, v) in enumerate(sorted(weights.items())) if i % 2}, "weights missing from the checkpoint"),
        "int": ({k: (v.round().long() if k.endswith("classifier.weight") else v) for k, v in weights.items()},
                "weights stored as integers (model.segmenter.class_head.classifier.weight)"),
        "nan": ({k: (v.clone().fill_(float("nan")) if k.endswith("objectness_head.weight") else v)
                 for k, v in weights.items()}, "NaN or infinite values (model.segmenter.objectness_head.weight)"),
    }
    for name, (state, message) in cases.items():
        folder = tmp_path / name
        shutil.copytree(toy_model_dir, folder)
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(ValueError, match=r"the checkpoint is damaged: .*" + message.replace("(", r"\(").replace(")", r"\)")):
            CaptionFormerForDenseVideoObjectCaptioning.from_pretrained(folder)
    video = np.zeros((2, 32, 32, 3), np.uint8)
    write_video(video, tmp_path / "v.mp4", fps=2)
    assert main(["caption", str(tmp_path / "v.mp4"), "--model", str(tmp_path / "nan"), "--out",
                 str(tmp_path / "r.json")]) == 2
    error = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if "error" in line]
    assert error == ["captionformer caption: error: the checkpoint is damaged: weights with NaN or infinite values "
                     "(model.segmenter.objectness_head.weight)"]


def test_chota_work_is_bounded_before_anything_is_allocated():
    """8,000 boxes in one frame, 10^8 frames declared in 162 bytes, thousands of alphas: refused at once, by name."""
    import time

    from captionformer_hf.metrics.chota_core import MAX_ALPHAS, MAX_DETECTIONS_PER_FRAME, MAX_FRAMES_PER_VIDEO

    crowded = {"video_id": "v", "num_frames": 1, "trajectories": [
        {"track_id": i, "score": 1.0, "caption": "a", "frames": [{"frame_index": 0, "box": [0, 0, 5, 5]}]}
        for i in range(MAX_DETECTIONS_PER_FRAME + 1)]}
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"video 'v', reference, frame 0: 1001 detections in one frame, more than"):
        compute_chota([crowded], [crowded], caption_metrics=("cider",))
    long = {"video_id": "v", "num_frames": 10**8, "trajectories": []}
    with pytest.raises(ValueError, match=f"`num_frames` is 100000000, more than the {MAX_FRAMES_PER_VIDEO}"):
        compute_chota([long], [long], caption_metrics=("cider",))
    ok = {"video_id": "v", "num_frames": 1, "trajectories": []}
    with pytest.raises(ValueError, match=f"`alphas` holds 5000 thresholds, more than {MAX_ALPHAS}"):
        compute_chota([ok], [ok], caption_metrics=("cider",), alphas=[0.5] * 5000)
    assert time.perf_counter() - start < 5


def test_inputs_that_are_not_regular_files_and_wrong_flag_values_are_refused(tmp_path, toy_model_dir):
    from captionformer_hf.defaults import load_pipeline

    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="is not a regular file"):
        VideoFrames(str(fifo))
    pipe = load_pipeline(toy_model_dir)
    with pytest.raises(TypeError, match="`return_masks` must be True or False, got 'no'"):
        pipe(np.zeros((2, 32, 32, 3), np.uint8), return_masks="no")


def test_a_trickling_download_stops_at_its_deadline(monkeypatch):
    """A server that sends a byte now and then cannot hold the caller: the whole download has a deadline."""
    import socket
    import time

    from captionformer_hf.processing import video_processing_captionformer as vp

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    stop = threading.Event()

    def trickle():
        connection, _ = listener.accept()
        connection.recv(4096)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\n\r\n")
        while not stop.is_set():
            try:
                connection.sendall(b"x")
            except OSError:
                break
            time.sleep(0.05)
        connection.close()

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"took longer than 1 s"):
        vp._download(f"http://127.0.0.1:{listener.getsockname()[1]}/v.mp4", 1 << 30, max_seconds=1)
    stop.set()
    assert time.monotonic() - start < 5
    listener.close()


def test_demo_requests_leave_no_files_behind(toy_model_dir, shapes, tmp_path, monkeypatch):
    from captionformer_hf.defaults import load_pipeline
    from captionformer_hf.spaces.demo import DemoHandler, DemoLimits

    handler = DemoHandler(load_pipeline(toy_model_dir), DemoLimits(max_frames=4), work_root=str(tmp_path / "work"))
    handler(str(shapes / "s.mp4"), 0.5, 0, 4)
    assert len(os.listdir(tmp_path / "work")) == 1
    with pytest.raises(ValueError):
        handler(str(tmp_path / "missing.mp4"), 0.5, 0, 4)
    old = os.path.join(tmp_path / "work", os.listdir(tmp_path / "work")[0])
    os.utime(old, (0, 0))  # a request older than RESULT_SECONDS
    handler(str(shapes / "s.mp4"), 0.5, 0, 4)
    assert len(os.listdir(tmp_path / "work")) == 1 and not os.path.exists(old)


def test_data_split_names_cannot_leave_the_output_or_merge(tmp_path, capsys):
    from captionformer_hf.data.schema import load_parquet_dataset, write_parquet_shards
    from captionformer_hf.data.synthetic import build_synthetic_dataset

    for bad in ("../../x", "train-extra", "a/b", ""):
        assert main(["data", "convert", "--format", "lvvis", "--split", f"{bad}=a.json:frames",
                     "--out", str(tmp_path / "out")]) == 2
        assert "use letters, digits and underscores" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob("*.parquet"))
    data = build_synthetic_dataset(4, seed=1, splits={"train": 0.5, "train_extra": 0.5})
    write_parquet_shards(data, str(tmp_path / "two"))
    loaded = load_parquet_dataset(str(tmp_path / "two"))
    assert {name: len(split) for name, split in loaded.items()} == {"train": 2, "train_extra": 2}


def test_data_convert_refuses_frames_of_another_size_than_declared(tmp_path, capsys):
    from PIL import Image

    frames = tmp_path / "frames" / "v1"
    frames.mkdir(parents=True)
    Image.new("RGB", (64, 48)).save(frames / "0.jpg")
    annotations = {"videos": [{"id": 1, "height": 96, "width": 128, "file_names": ["v1/0.jpg"]}], "annotations": []}
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    assert main(["data", "convert", "--format", "lvvis", "--split", f"train={tmp_path / 'a.json'}:{tmp_path / 'frames'}",
                 "--out", str(tmp_path / "out")]) == 2
    assert "video 1: frame file 'v1/0.jpg' is 64x48 but the annotations declare 128x96" in capsys.readouterr().err


def test_evaluate_takes_the_single_video_json_of_caption(toy_model_dir, shapes, tmp_path, capsys):
    assert main(["caption", str(shapes / "s.mp4"), "--model", toy_model_dir, "--out", str(tmp_path / "one.json"),
                 "--max-new-tokens", "1", "-q"]) == 0
    assert main(["evaluate", str(tmp_path / "one.json"), str(shapes / "gt.json"), "--caption-metrics", "cider"]) == 0
    assert "CHOTA" in capsys.readouterr().out


@pytest.mark.parametrize("extension", [".webm", ".mkv", ".mov"])
def test_truncation_and_length_in_containers_that_declare_no_frame_count(tmp_path, extension):
    """webm / mkv / mov: the container's duration against the time its packets reach, and the packets as the frame
    count (so --max-frames reports the video's length, not the frames read)."""
    frames = generate_video(2, SyntheticVideoConfig(num_frames=40))["frames"]
    full = tmp_path / f"full{extension}"
    if extension == ".webm":
        write_video(frames, full, fps=8)
    else:
        _write_container(frames, full, "matroska" if extension == ".mkv" else "mov")
    reader = VideoFrames(str(full), max_frames=5)
    assert sum(1 for _ in reader) == 5 and reader.num_source_frames == 40 and not reader.truncated
    cut = tmp_path / f"cut{extension}"
    data = full.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.8)])
    with pytest.raises(ValueError, match="is truncated|could not open|zero frames|no video stream"):
        VideoFrames(str(cut))  # refused: truncated (or, for a container whose index is at its end, unreadable)
    if extension != ".mov":  # webm and mkv keep their duration at the start: the cut is found and named
        with pytest.raises(ValueError, match=r"is truncated: its container declares 5.00 s but its frames end at"):
            VideoFrames(str(cut))
        reader = VideoFrames(str(cut), allow_truncated=True)
        assert reader.truncated and 0 < sum(1 for _ in reader) < 40


def _write_container(frames, path, container_format):
    import av

    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_a_variable_frame_rate_video_is_sampled_by_its_timestamps(tmp_path):
    import fractions

    import av

    path = tmp_path / "vfr.mkv"
    frames = np.random.default_rng(0).integers(0, 255, (30, 64, 64, 3), dtype=np.uint8)
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = fractions.Fraction(1, 1000)
        moment = 0
        for i, frame in enumerate(frames):  # 15 frames 20 ms apart, then 15 frames 100 ms apart
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts, video_frame.time_base = moment, fractions.Fraction(1, 1000)
            moment += 20 if i < 15 else 100
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    reader = VideoFrames(str(path), fps=5)
    indices = [index for index, _ in reader]
    # one frame every 200 ms of the video's own time: frame 0 (0 s), 10 (0.2 s), then 15 (0.3 s is the first at or
    # past 0.4 s? no: 0.3 < 0.4), 16 (0.4 s), 18 (0.6 s), 20, 22, ...
    assert indices == [0, 10, 16, 18, 20, 22, 24, 26, 28]
    assert 16 < reader.video_fps < 19  # the rate the timestamps give (30 frames over about 1.7 s), not 30


# ------------------------------------------------------------------------------------------- messages locate
def _locates(message: str) -> bool:
    """A message locates its problem when it names a field or argument (`...`, --flag, VIDEO), a file or folder
    (a path), or a video / track / frame / annotation."""
    import re

    return bool(re.search(r"`[^`]+`|--[a-z]|/|\.json|\.mp4|\bvideo '|\btrack|\bframe \d|\bannotation |\bimage |"
                          r"\bargument |\bsplit ", message))


def test_every_error_of_the_hostile_inputs_names_where_the_problem_is(toy_model_dir, shapes, tmp_path, capsys):
    (tmp_path / "video-only.json").write_text('[{"video_id": "v"}]')
    (tmp_path / "odd.json").write_text('{"doesnotexist": 1}')
    (tmp_path / "bad-frames.json").write_text('[{"video_id": "v", "num_frames": "x", "trajectories": []}]')
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "text.mp4").write_text("not a video")
    cases = [
        ["evaluate", str(tmp_path / "video-only.json"), str(tmp_path / "video-only.json"), "--caption-metrics", "cider"],
        ["evaluate", str(tmp_path / "odd.json"), str(tmp_path / "odd.json"), "--caption-metrics", "cider"],
        ["evaluate", str(tmp_path / "bad-frames.json"), str(tmp_path / "bad-frames.json"), "--caption-metrics", "cider"],
        ["evaluate", str(tmp_path / "garbage.json"), str(shapes / "gt.json"), "--caption-metrics", "cider"],
        ["evaluate", str(tmp_path / "odd.json"), str(shapes / "gt.json"), "--alphas", "2", "--caption-metrics", "cider"],
        ["train", "--config", str(tmp_path / "odd.json")],
        ["train", "--config", str(tmp_path / "garbage.json")],
        ["train", "--max-steps", "0"],
        ["caption", str(tmp_path / "missing.mp4"), "--model", toy_model_dir],
        ["caption", str(tmp_path / "text.mp4"), "--model", toy_model_dir],
        ["caption", str(shapes / "s.mp4"), "--model", str(tmp_path / "no-model")],
        ["caption", str(shapes / "s.mp4"), "--model", toy_model_dir, "--fps", "-1"],
        ["data", "convert", "--format", "lvvis", "--split", f"train={tmp_path / 'odd.json'}:{tmp_path}",
         "--out", str(tmp_path / "converted")],
        ["data", "synthetic", "--num-videos", "0", "--out", str(tmp_path / "s")],
        ["predict", "--model", toy_model_dir, "--dataset", str(tmp_path), "--out", str(tmp_path / "p.json")],
        ["space", "push", str(tmp_path), "--repo-id", "me/x"],
        ["annotate", "--dataset", str(tmp_path), "--cache", str(tmp_path / "c.jsonl")],
    ]
    for args in cases:
        assert main(args) == 2, args
        lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if ": error:" in line]
        assert len(lines) == 1, (args, lines)
        assert _locates(lines[0]), lines[0]
