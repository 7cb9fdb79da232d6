"""`captionformer predict`: a dataset split through predict_video, sharded over processes, resumable."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning
from captionformer_hf.cli import main
from captionformer_hf.processing import validate_video
from captionformer_hf.toy import toy_config, toy_processor


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    assert main(["data", "synthetic", "--num-videos", "5", "--out", str(root / "data"), "--frames", "6",
                 "--seed", "3", "-q"]) == 0
    torch.manual_seed(0)
    config = toy_config(clip_length=2, score_threshold=0.0, hysteresis_low=0.0, hysteresis_high=0.0,
                         hysteresis_min_length=1, max_caption_length=4)
    CaptionFormerForDenseVideoObjectCaptioning(config).eval().save_pretrained(root / "model")
    toy_processor(clip_length=2).save_pretrained(root / "model")
    return root


def predict_args(root, out, *extra):
    return ["predict", "--model", str(root / "model"), "--dataset", str(root / "data"), "--split", "train",
            "--out", str(out), "--max-new-tokens", "2", "-q", *extra]


def test_predict_writes_both_formats_in_dataset_order(setup, tmp_path, capsys):
    from captionformer_hf.data.schema import load_parquet_dataset

    out = tmp_path / "preds.json"
    assert main(predict_args(setup, out)) == 0
    videos = json.loads(out.read_text())
    split = load_parquet_dataset(str(setup / "data"))["train"]
    assert [v["video_id"] for v in videos] == list(split["video_id"])
    for video, example in zip(videos, split):
        validate_video(video, require_scores=True)
        assert (video["num_frames"], video["height"], video["width"]) == (
            example["num_frames"], example["height"], example["width"])
        assert video["trajectories"]
    results = json.loads((tmp_path / "preds.results.json").read_text())
    assert len(results) == sum(len(v["trajectories"]) for v in videos)
    first, video = results[0], videos[0]
    assert len(first["bbox"]) == len(first["segmentations"]) == len(first["score_per_frame"]) == video["num_frames"]
    listed = {f["frame_index"]: f for f in video["trajectories"][0]["frames"]}
    for index, box in enumerate(first["bbox"]):
        assert (box is None) == (index not in listed)
        if box is not None:
            assert box == listed[index]["box"]
            assert first["segmentations"][index] == {"size": [video["height"], video["width"]],
                                                     "counts": listed[index]["mask_rle"]}
    assert not (tmp_path / "preds.json.parts").exists()  # removed once the outputs are written
    assert "4 videos" in capsys.readouterr().out  # the train split of 5 synthetic videos


def test_a_killed_run_resumes_without_redoing_finished_videos(setup, tmp_path, monkeypatch):
    import captionformer_hf.prediction as trainer  # predict_example lives beside predict_dataset

    straight = tmp_path / "straight.json"
    assert main(predict_args(setup, straight)) == 0
    real = trainer.predict_example
    calls = []

    def dies_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill in the middle of the third video
        calls.append(args[2]["video_id"])
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "predict_example", dies_after_two)
    out = tmp_path / "resumed.json"
    assert main(predict_args(setup, out)) == 130  # the command line reports the interruption (exit status 130)
    parts = sorted(os.listdir(tmp_path / "resumed.json.parts"))
    assert parts == ["00000000.json", "00000001.json", "settings.json"] and not out.exists()
    parts = parts[:2]
    stamps = {name: os.stat(tmp_path / "resumed.json.parts" / name).st_mtime_ns for name in parts}
    calls.clear()
    monkeypatch.setattr(trainer, "predict_example", lambda *a, **k: (calls.append(a[2]["video_id"]), real(*a, **k))[1])
    assert main(predict_args(setup, out)) == 0
    assert len(calls) == 2  # only the two videos that were not finished
    assert json.loads(out.read_text()) == json.loads(straight.read_text())
    assert stamps  # the finished parts were read, not rewritten (they are gone with the folder now)


def test_two_processes_give_the_same_file_as_one(setup, tmp_path):
    one = tmp_path / "one.json"
    assert main(predict_args(setup, one)) == 0
    launcher = shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")
    two = tmp_path / "two.json"
    command = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "captionformer_hf.cli",
               *predict_args(setup, two)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads(two.read_text()) == json.loads(one.read_text())
    assert json.loads((tmp_path / "two.results.json").read_text()) == json.loads((tmp_path / "one.results.json").read_text())


def test_bad_arguments_fail_before_any_work(setup, tmp_path, capsys):
    args = predict_args(setup, tmp_path / "p.json")
    args[args.index("--split") + 1] = "validation"
    assert main(args) == 2
    assert "no split 'validation'" in capsys.readouterr().err
    (tmp_path / "dir.json").mkdir()
    assert main(predict_args(setup, tmp_path / "dir.json")) == 2
    assert "is a directory" in capsys.readouterr().err
    args = predict_args(setup, tmp_path / "p.json")
    args[args.index("--dataset") + 1] = str(tmp_path / "dir.json" / ".." / "p.json")
    (tmp_path / "p.json").write_text("[]")
    assert main(args) == 2
    assert "is a file" in capsys.readouterr().err


def test_predict_then_evaluate_against_the_dataset_and_its_exported_references(tmp_path, capsys):
    """captionformer predict -> captionformer evaluate PRED DATASET --split: the ground truth is read from the dataset
    folder; data export-references writes the same ground truth as JSON; the pipeline's video_id makes its output the
    format evaluate takes."""
    import json

    from captionformer_hf.cli import main
    from captionformer_hf.data.synthetic import build_synthetic_dataset
    from captionformer_hf.data.schema import write_parquet_shards
    from captionformer_hf.metrics import compute_chota

    data = build_synthetic_dataset(4, seed=3, splits={"test": 1.0})
    folder = tmp_path / "data"
    write_parquet_shards(data, str(folder))
    assert main(["data", "export-references", str(folder), "--split", "test", "--out", str(tmp_path / "gt.json")]) == 0
    references = json.loads((tmp_path / "gt.json").read_text())
    assert [v["video_id"] for v in references] == [e["video_id"] for e in data["test"]]
    assert references[0]["trajectories"][0]["caption"] == data["test"][0]["trajectories"][0]["caption"]
    # the ground truth as predictions: every figure of a perfect result, from the folder and from the JSON alike
    (tmp_path / "pred.json").write_text(json.dumps([
        {**v, "trajectories": [{**t, "score": 1.0} for t in v["trajectories"]]} for v in references]))
    capsys.readouterr()
    for ground_truth in ([str(folder), "--split", "test"], [str(tmp_path / "gt.json")]):
        assert main(["evaluate", str(tmp_path / "pred.json"), *ground_truth, "--caption-metrics", "cider",
                     "--out", str(tmp_path / "r.json")]) == 0
        result = json.loads((tmp_path / "r.json").read_text())
        assert (result["DetA"], result["AssA"]) == (1.0, 1.0)
    assert main(["evaluate", str(tmp_path / "pred.json"), str(tmp_path / "gt.json"), "--split", "test"]) == 2
    assert "--split goes with a dataset" in capsys.readouterr().err


def test_pipeline_video_id_gives_the_evaluation_format(toy_model_dir):
    import numpy as np

    from captionformer_hf.defaults import load_pipeline
    from captionformer_hf.metrics import compute_chota

    pipe = load_pipeline(toy_model_dir)
    video = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    result = pipe(video, video_id="clip-7", max_new_tokens=2)
    assert result["video_id"] == "clip-7"
    both = pipe([video, video], video_id=["a", "b"], max_new_tokens=2)
    assert [r["video_id"] for r in both] == ["a", "b"]
    compute_chota(both, both, caption_metrics=("cider",))  # taken as it is
    import pytest

    with pytest.raises(ValueError, match="one id per video"):
        pipe([video, video], video_id=["a"], max_new_tokens=2)


def test_post_processing_returns_the_whole_trajectory_format(toy_model_dir):
    """The step-by-step flow (processor, session, forward, finalize, post-processing) gives a whole video of the
    trajectory format, num_frames and fps included, valid as it is."""
    import numpy as np

    from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning, CaptionFormerProcessor

    model = CaptionFormerForDenseVideoObjectCaptioning.from_pretrained(toy_model_dir).eval()
    processor = CaptionFormerProcessor.from_pretrained(toy_model_dir)
    vp = processor.video_processor
    frames = vp.open_video(np.zeros((6, 48, 64, 3), np.uint8), video_fps=6.0)
    geometry = vp.geometry(frames)
    session = model.init_video_session()
    masks = {}
    with torch.no_grad():
        for batch in vp.iter_clip_batches(frames, model.config.clip_length):
            outputs = model(**batch.model_inputs(), video_session=session)
            masks.update(processor.post_process_clip_masks(outputs, geometry))
        video = model.finalize_video_session(session, max_new_tokens=2)
    result = processor.post_process_dense_captions(video, geometry.original_size, geometry.content_size,
                                                   id2label=model.config.id2label, mask_rles=masks, num_frames=6,
                                                   fps=6.0,
                                                   video_id="v")
    assert (result["video_id"], result["num_frames"], result["height"], result["width"], result["fps"]) == (
        "v", 6, 48, 64, 6.0)
    validate_video(result, require_scores=True)


def test_inference_loads_no_training_code(toy_model_dir):
    """Captioning a video never imports the losses, the Hungarian matcher of training or the trainer (they load on
    first use); training still reaches them through `model.criterion`."""
    import subprocess
    import sys

    code = f"""
import sys, numpy as np
from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning, CaptionFormerProcessor, predict_video
model = CaptionFormerForDenseVideoObjectCaptioning.from_pretrained({str(toy_model_dir)!r}).eval()
processor = CaptionFormerProcessor.from_pretrained({str(toy_model_dir)!r})
predict_video(model, processor, np.zeros((4, 48, 64, 3), np.uint8), max_new_tokens=2)
training = ("captionformer_hf.modeling.loss_captionformer", "captionformer_hf.modeling.matching_captionformer",
            "captionformer_hf.training", "captionformer_hf.training.trainer")
print("loaded:", [name for name in training if name in sys.modules])
model.criterion
print("after criterion:", "captionformer_hf.modeling.loss_captionformer" in sys.modules)
print("state dict:", [k for k in model.state_dict() if "criterion" in k])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "loaded: []" in out.stdout and "after criterion: True" in out.stdout and "state dict: []" in out.stdout


def test_masks_encoded_in_a_worker_thread_give_the_same_result(toy_model_dir, monkeypatch):
    """The accelerator path (each batch's masks encoded in a worker thread, at most MAX_PENDING_MASK_BATCHES waiting)
    gives the result of encoding in the loop, here forced on the CPU with many small batches."""
    import numpy as np

    from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning, CaptionFormerProcessor, predict_video
    from captionformer_hf.processing import inference_captionformer

    model = CaptionFormerForDenseVideoObjectCaptioning.from_pretrained(toy_model_dir).eval()
    processor = CaptionFormerProcessor.from_pretrained(toy_model_dir)
    video = (np.random.default_rng(0).random((9, 48, 64, 3)) * 255).astype(np.uint8)
    kwargs = {"threshold": 0.0, "caption": False, "tracker_overrides": {"hysteresis_low": 0.0, "hysteresis_high": 0.0,
                                                                         "hysteresis_min_length": 1}}
    in_loop = predict_video(model, processor, video, overlap_masks=False, **kwargs)
    waiting = []
    original = processor.video_processor.post_process_clip_masks

    def slow(*args, **kw):  # the worker falls behind the loop: the bound on waiting batches is what holds
        import time

        time.sleep(0.05)
        waiting.append(1)
        return original(*args, **kw)

    monkeypatch.setattr(processor.video_processor, "post_process_clip_masks", slow)
    overlapped = predict_video(model, processor, video, overlap_masks=True, **kwargs)
    assert overlapped == in_loop and len(waiting) == 9 // model.config.clip_length + (9 % model.config.clip_length > 0)
    assert sum(len(f.get("mask_rle", "")) > 0 for t in in_loop["trajectories"] for f in t["frames"]) > 0
    monkeypatch.setattr(inference_captionformer, "MAX_PENDING_MASK_BATCHES", 0)  # each batch waited for at once
    assert predict_video(model, processor, video, overlap_masks=True, **kwargs) == in_loop
    with pytest.raises(TypeError, match="`overlap_masks` must be True, False or None"):
        predict_video(model, processor, video, overlap_masks="yes", **kwargs)
