"""Training with accelerate: stages, resume after an interruption, two processes."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from captionformer_hf.training import TrainingConfig, state_fingerprint, train

TINY = {"clip_length": 2, "num_labels": 4, "segmenter_overrides": {"train_num_points": 64}}


def config(tmp_path, name, **kwargs):
    values = dict(output_dir=str(tmp_path / name), synthetic_videos=6, synthetic_frames=8, clips_per_video=1,
                  model_overrides=TINY, max_steps=6, batch_size=2, log_every=1, save_every=2, input_size=64, seed=3)
    values.update(kwargs)
    return TrainingConfig(**values)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    reference = train(config(tmp_path, "straight"))
    with pytest.raises(SystemExit):
        train(config(tmp_path, "interrupted", stop_after_steps=3))
    assert sorted(os.listdir(tmp_path / "interrupted" / "checkpoints")) == ["step-2"]  # step 3 was not saved
    resumed = train(config(tmp_path, "interrupted"))
    assert resumed["steps"] == 6
    assert state_fingerprint(resumed["model"]) == state_fingerprint(reference["model"])
    # logged losses of the replayed steps match too
    assert resumed["history"][-1]["loss"] == pytest.approx(reference["history"][-1]["loss"], rel=1e-6)
    # final model and processor saved, loadable
    from transformers import AutoModel, AutoProcessor

    final = tmp_path / "interrupted" / "final"
    assert state_fingerprint(AutoModel.from_pretrained(final)) == state_fingerprint(reference["model"])
    AutoProcessor.from_pretrained(final)
    history = json.loads((final / "training_history.json").read_text())
    assert history["config"]["max_steps"] == 6
    # only the newest checkpoints are kept
    assert sorted(os.listdir(tmp_path / "interrupted" / "checkpoints")) == ["step-4", "step-6"]


def test_stages(tmp_path):
    seg = train(config(tmp_path, "seg", stage="segmentation", max_steps=2))
    assert "loss_caption" not in seg["history"][-1] and "loss_mask" in seg["history"][-1]
    assert not any(p.requires_grad for p in seg["model"].model.caption_head.parameters())
    cap = train(config(tmp_path, "cap", stage="captioning", max_steps=2))
    assert set(k for k in cap["history"][-1] if k.startswith("loss_")) == {"loss_caption"}
    assert not any(p.requires_grad for p in cap["model"].model.segmenter.parameters())
    video = train(config(tmp_path, "video", stage="video", max_steps=2, clips_per_video=2, batch_size=2))
    assert video["history"][-1]["loss_caption"] > 0
    with pytest.raises(ValueError, match="batch_size == clips_per_video"):
        config(tmp_path, "bad", stage="video", clips_per_video=2, batch_size=3)


def test_chota_evaluation_during_training(tmp_path):
    result = train(config(tmp_path, "eval", max_steps=2, eval_every=2, eval_videos=1, eval_split="train"))
    evals = [h for h in result["history"] if "eval/CHOTA" in h]
    assert evals and 0.0 <= evals[0]["eval/CHOTA"] <= 1.0 and "eval/DetA" in evals[0]


def test_config_file_and_errors(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"max_steps": 3, "stage": "segmentation"}))
    assert TrainingConfig.from_file(str(path), max_steps=5).max_steps == 5
    path.write_text(json.dumps({"max_stepz": 3}))
    with pytest.raises(ValueError, match="unknown training config keys"):
        TrainingConfig.from_file(str(path))
    with pytest.raises(ValueError, match="`stage`"):
        TrainingConfig(stage="everything")
    with pytest.raises(ValueError, match="`max_steps`"):
        TrainingConfig(max_steps=0)


def test_two_processes_with_accelerate_launch(tmp_path):
    launcher = shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")
    out = tmp_path / "ddp"
    command = [
        # on a machine without GPU, --multi_gpu starts 2 processes (torchrun) that the trainer runs with gloo;
        # accelerate 1.x's --cpu starts a single process whatever --num_processes says
        launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "-m", "captionformer_hf.cli", "train",
        "--output-dir", str(out), "--synthetic-videos", "6", "--synthetic-frames", "8", "--clips-per-video", "1",
        "--model-overrides", json.dumps(TINY), "--max-steps", "3", "--batch-size", "1", "--save-every", "3",
        "--input-size", "64", "--write-fingerprints", "true",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    fingerprints = [(out / f"fingerprint-rank{r}.txt").read_text() for r in (0, 1)]
    assert fingerprints[0] == fingerprints[1]
    assert (out / "final" / "model.safetensors").exists()
