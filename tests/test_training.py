"""Training with accelerate: resume, checkpoints, accelerate's settings, multi-process schedule, data mixtures,
stages, loss options, errors."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from captionformer_hf.training import TrainingConfig, state_fingerprint, train

TINY = {"clip_length": 2, "num_labels": 4, "segmenter_overrides": {"train_num_points": 64}}
HARNESS = os.path.join(os.path.dirname(__file__), "train_harness.py")


def config(tmp_path, name, **kwargs):
    values = dict(output_dir=str(tmp_path / name), synthetic_videos=6, synthetic_frames=8, clips_per_video=1,
                  model_overrides=TINY, max_steps=6, batch_size=2, log_every=1, save_every=2, input_size=64, seed=3,
                  num_workers=0)
    values.update(kwargs)
    return TrainingConfig(**values)


class Interrupt(Exception):
    pass


def stop_after(steps):
    def callback(event, state):
        if event == "step_end" and state["step"] >= steps:
            raise Interrupt  # as a kill right after this step (its checkpoint, if any, is written)
    return callback


def test_interrupted_run_resumes_without_replaying_data(tmp_path, monkeypatch):
    from captionformer_hf.data.loader import DVOCClipDataset

    loaded = []
    real = DVOCClipDataset.__getitem__
    monkeypatch.setattr(DVOCClipDataset, "__getitem__", lambda self, key: (loaded.append(key), real(self, key))[1])
    reference = train(config(tmp_path, "straight"))
    straight = list(loaded)
    with pytest.raises(Interrupt):
        train(config(tmp_path, "interrupted"), callbacks=[stop_after(3)])
    assert sorted(os.listdir(tmp_path / "interrupted" / "checkpoints")) == ["step-2"]  # step 3 was not saved
    loaded.clear()
    resumed = train(config(tmp_path, "interrupted"))
    assert resumed["steps"] == 6
    # the 2 batches (4 clips) consumed before the checkpoint were skipped, not loaded; the rest is the same data
    assert loaded == straight[4:]
    assert state_fingerprint(resumed["model"]) == state_fingerprint(reference["model"])
    assert resumed["history"][-1]["loss"] == pytest.approx(reference["history"][-1]["loss"], rel=1e-6)
    assert [h["lr"] for h in resumed["history"]] == [h["lr"] for h in reference["history"][2:]]
    from transformers import AutoModel, AutoProcessor

    final = tmp_path / "interrupted" / "final"
    assert state_fingerprint(AutoModel.from_pretrained(final)) == state_fingerprint(reference["model"])
    AutoProcessor.from_pretrained(final)
    assert json.loads((final / "training_history.json").read_text())["config"]["max_steps"] == 6
    assert sorted(os.listdir(tmp_path / "interrupted" / "checkpoints")) == ["step-4", "step-6"]


def test_every_checkpoint_loads_with_from_pretrained(tmp_path):
    from transformers import AutoModel, AutoProcessor

    four = train(config(tmp_path, "four", max_steps=4, keep_checkpoints=5))
    checkpoint = tmp_path / "four" / "checkpoints" / "step-4"
    assert state_fingerprint(AutoModel.from_pretrained(checkpoint), parameters_only=True) == state_fingerprint(
        four["model"], parameters_only=True)
    AutoProcessor.from_pretrained(checkpoint)
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 4
    AutoModel.from_pretrained(tmp_path / "four" / "checkpoints" / "step-2")


@pytest.mark.parametrize("damage", ["truncated weights", "empty RNG state"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(tmp_path, damage, caplog):
    reference = train(config(tmp_path, "straight"))
    with pytest.raises(Interrupt):
        train(config(tmp_path, "damaged", keep_checkpoints=3), callbacks=[stop_after(4)])
    state = tmp_path / "damaged" / "checkpoints" / "step-4" / "state"
    if damage == "truncated weights":
        weights = next(p for p in state.iterdir() if p.name.startswith("model"))
        weights.write_bytes(weights.read_bytes()[:100])  # truncated by a crash of the disk
    else:
        next(p for p in state.iterdir() if p.name.startswith("random_states")).write_bytes(b"")
    with caplog.at_level("WARNING", logger="captionformer_hf"):
        resumed = train(config(tmp_path, "damaged", keep_checkpoints=3))
    assert "step-4 cannot be resumed from" in caplog.text  # reported, not skipped silently
    assert resumed["steps"] == 6
    assert state_fingerprint(resumed["model"]) == state_fingerprint(reference["model"])


def test_only_damaged_checkpoints_start_afresh_exactly_as_a_fresh_run(tmp_path, caplog):
    """Every checkpoint damaged (an unreadable trainer state, weights cut after part of them loaded): the run starts
    afresh, and ends with the very weights of a run that never had checkpoints."""
    reference = train(config(tmp_path, "straight"))
    with pytest.raises(Interrupt):
        train(config(tmp_path, "damaged", keep_checkpoints=3), callbacks=[stop_after(4)])
    checkpoints = tmp_path / "damaged" / "checkpoints"
    (checkpoints / "step-4" / "trainer_state.json").write_text("{not json")
    state = checkpoints / "step-2" / "state"
    optimizer = next(p for p in state.iterdir() if p.name.startswith("optimizer"))
    optimizer.write_bytes(optimizer.read_bytes()[:100])  # the model loads from it, then the optimizer fails
    with caplog.at_level("WARNING", logger="captionformer_hf"):
        resumed = train(config(tmp_path, "damaged", keep_checkpoints=3))
    assert "trainer_state.json is not valid JSON" in caplog.text and "starting afresh" in caplog.text
    assert resumed["steps"] == 6 and resumed["resumed_at"] == 0
    assert state_fingerprint(resumed["model"]) == state_fingerprint(reference["model"])


def test_accelerate_settings_apply_unless_the_recipe_sets_them(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # as `accelerate launch --mixed_precision bf16`
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")
    result = train(config(tmp_path, "env", max_steps=2))
    assert result["accelerator"].mixed_precision == "bf16" and result["accelerator"].gradient_accumulation_steps == 2
    history = json.loads((tmp_path / "env" / "final" / "training_history.json").read_text())
    assert (history["mixed_precision"], history["gradient_accumulation_steps"]) == ("bf16", 2)
    recipe = train(config(tmp_path, "recipe", max_steps=2, mixed_precision="no", gradient_accumulation_steps=1))
    assert recipe["accelerator"].mixed_precision == "no" and recipe["accelerator"].gradient_accumulation_steps == 1


def _launch(tmp_path, name, processes, **values):
    out = tmp_path / name
    values = dict(output_dir=str(out / "run"), synthetic_videos=8, synthetic_frames=8, clips_per_video=1,
                  model_overrides=TINY, max_steps=4, log_every=1, save_every=4, input_size=64, num_workers=0,
                  warmup_steps=1, **values)
    if processes == 1:
        command = [sys.executable, HARNESS]
    else:
        # on a machine without GPU, --multi_gpu starts the processes (torchrun) that the trainer runs with gloo;
        # accelerate 1.x's --cpu starts a single process whatever --num_processes says
        launcher = shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")
        command = [launcher, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", HARNESS]
    result = subprocess.run(command + [json.dumps(values), str(out)], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]


def test_two_processes_follow_the_one_process_schedule(tmp_path):
    (one,) = _launch(tmp_path, "one", 1, batch_size=4)
    two = _launch(tmp_path, "two", 2, batch_size=2)  # the same global batch
    assert two[0]["processes"] == 2 and two[0]["fingerprint"] == two[1]["fingerprint"]  # ranks stay in sync
    assert two[0]["lr"] == two[1]["lr"] == one["lr"]  # one scheduler step per optimizer step
    assert one["lr"][0] > 0 and one["lr"][-1] < one["lr"][1]  # warmup then cosine decay to the end


def test_a_mixture_of_datasets_with_ratios_and_streaming(tmp_path):
    from captionformer_hf.cli import main

    for name, frames in (("videos", "8"), ("images", "1")):
        assert main(["data", "synthetic", "--num-videos", "6", "--out", str(tmp_path / name), "--frames", frames,
                     "-q"]) == 0
    datasets = [{"path": str(tmp_path / "videos"), "ratio": 0.7}, {"path": str(tmp_path / "images"), "ratio": 0.3}]
    result = train(config(tmp_path, "mix", datasets=datasets, max_steps=3, augment={"scale_range": [0.8, 1.2]},
                          epoch_size=10))
    assert result["steps"] == 3
    streamed = train(config(tmp_path, "stream", datasets=[dict(d, streaming=True) for d in datasets], max_steps=3))
    assert streamed["steps"] == 3


def test_stages(tmp_path):
    seg = train(config(tmp_path, "seg", stage="segmentation", max_steps=2))
    assert "loss_caption" not in seg["history"][-1] and "loss_mask" in seg["history"][-1]
    assert not any(p.requires_grad for p in seg["model"].model.caption_head.parameters())
    cap = train(config(tmp_path, "cap", stage="captioning", max_steps=2))
    assert set(k for k in cap["history"][-1] if k.startswith("loss_")) == {"loss_caption"}
    assert not any(p.requires_grad for p in cap["model"].model.segmenter.parameters())
    # video stage: batch_size videos of clips_per_video clips each (2 videos x 3 clips a step)
    video = train(config(tmp_path, "video", stage="video", max_steps=2, clips_per_video=3, batch_size=2))
    assert video["history"][-1]["loss_caption"] > 0


def test_release_loss_options_backbone_lr_and_gradient_checkpointing(tmp_path):
    overrides = dict(TINY, class_loss="release_bce", objectness_loss="weighted_ce", class_frequencies=[5, 1, 2, 9])
    result = train(config(tmp_path, "release", model_overrides=overrides, max_steps=2, backbone_lr_multiplier=0.1,
                          gradient_checkpointing=True, warmup_steps=0, scheduler="constant"))
    assert result["model"].config.class_loss == "release_bce" and torch.isfinite(torch.tensor(result["history"][-1]["loss"]))
    optimizer = result["accelerator"]._optimizers[0]
    assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx([1e-4, 1e-3])


def test_chota_evaluation_during_training(tmp_path):
    result = train(config(tmp_path, "eval", max_steps=2, eval_every=2, eval_videos=1, eval_split="train"))
    evals = [h for h in result["history"] if "eval/CHOTA" in h]
    assert evals and 0.0 <= evals[0]["eval/CHOTA"] <= 1.0 and "eval/DetA" in evals[0]


def test_tensorboard_logs_are_written(tmp_path):
    pytest.importorskip("tensorboard")
    train(config(tmp_path, "tb", max_steps=2, report_to="tensorboard"))
    events = [f for _, _, files in os.walk(tmp_path / "tb") for f in files if f.startswith("events.out.tfevents")]
    assert events


def test_config_and_data_errors(tmp_path, monkeypatch):
    import importlib.util

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
    with pytest.raises(ValueError, match=r"`datasets\[0\]`: unknown keys \['weight'\]"):
        TrainingConfig(datasets=[{"path": "a", "weight": 2}])
    with pytest.raises(ValueError, match="must sum to a positive number"):
        TrainingConfig(datasets=[{"path": "a", "ratio": 0}, {"path": "b", "ratio": 0}])
    with pytest.raises(ValueError, match=r"`augment`: unknown keys \['rotate'\]"):
        TrainingConfig(augment={"rotate": 10})
    import datasets

    from captionformer_hf.data.synthetic import build_synthetic_dataset

    train_split = build_synthetic_dataset(2, seed=1, splits={"train": 1.0})["train"]
    rows = [dict(e, trajectories=[{k: v for k, v in t.items() if k != "caption"} for t in e["trajectories"]]) for e in train_split]
    (tmp_path / "nocaptions" / "data").mkdir(parents=True)
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "nocaptions" / "data" / "train-00000-of-00001.parquet"))
    with pytest.raises(ValueError, match=r"lacks what stage 'end_to_end' needs: \['trajectories.caption'\]"):
        train(config(tmp_path, "nocap", dataset=str(tmp_path / "nocaptions")))
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("tensorboard") else real_find(name, *a))
    with pytest.raises(ValueError, match="pip install tensorboard"):
        train(config(tmp_path, "notb", report_to="tensorboard"))
