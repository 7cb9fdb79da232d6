"""Every publishable save (pipeline, converter, trainer) works without this package and carries a model card."""

from pathlib import Path
import json

import numpy as np
import pytest
import torch
import yaml
from conftest import run_without_the_package

from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning
from captionformer_hf.defaults import load_pipeline
from captionformer_hf.hub import push_folder, save_for_hub
from captionformer_hf.toy import toy_config, toy_processor

METADATA = ("pipeline_tag", "library_name", "license", "base_model", "datasets", "tags")


def card_metadata(folder):
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def check_without_the_package(folder, tmp_path, video):
    """`pipeline(model=folder, trust_remote_code=True)` in a process where captionformer_hf cannot be imported
    gives what the package's own pipeline gives."""
    expected = load_pipeline(str(folder))(video, max_new_tokens=2)
    np.save(tmp_path / "video.npy", video)
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    run_without_the_package(
        f"""
        import json
        import numpy as np
        from transformers import pipeline
        pipe = pipeline(model={str(folder)!r}, trust_remote_code=True)
        result = pipe(np.load({str(tmp_path / 'video.npy')!r}), max_new_tokens=2)
        assert result == json.load(open({str(tmp_path / 'expected.json')!r})), "different result"
        """,
        tmp_path,
    )
    assert expected["trajectories"]


@pytest.fixture(scope="module")
def model_and_processor():
    torch.manual_seed(0)
    config = toy_config(clip_length=2, score_threshold=0.0, hysteresis_low=0.0, hysteresis_high=0.0,
                         hysteresis_min_length=1)
    return CaptionFormerForDenseVideoObjectCaptioning(config).eval(), toy_processor(clip_length=2)


VIDEO = (np.random.default_rng(0).random((4, 48, 64, 3)) * 255).astype(np.uint8)


def test_save_for_hub_folder_is_self_contained_with_a_card(model_and_processor, tmp_path):
    model, processor = model_and_processor
    folder = tmp_path / "hub"
    folder.mkdir()
    save_for_hub(model, processor, folder, base_model="Salesforce/blip2-opt-2.7b", datasets=["me/lvviscap"],
                 tags=["end_to_end"])
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"]["dense-video-object-captioning"]["impl"] == (
        "pipeline_captionformer.DenseVideoObjectCaptioningPipeline")
    names = {p.name for p in folder.iterdir()}
    assert {"pipeline_captionformer.py", "inference_captionformer.py", "trajectory_captionformer.py",
            "modeling_captionformer.py", "processor_config.json", "model.safetensors"} <= names
    meta = card_metadata(folder)
    assert all(meta.get(key) for key in METADATA), meta
    assert meta["pipeline_tag"] == "video-text-to-text" and meta["library_name"] == "transformers"
    assert meta["datasets"] == ["me/lvviscap"] and "end_to_end" in meta["tags"] and "custom_code" in meta["tags"]
    check_without_the_package(folder, tmp_path, VIDEO)


def test_pipeline_push_to_hub_uploads_the_self_contained_folder(model_and_processor, monkeypatch, tmp_path):
    from pathlib import Path

    from huggingface_hub import HfApi

    from captionformer_hf import DenseVideoObjectCaptioningPipeline

    model, processor = model_and_processor
    pipe = DenseVideoObjectCaptioningPipeline(model=model, processor=processor, task="dense-video-object-captioning")
    uploads = []

    class Repo:
        repo_id = "me/captionformer"

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: Repo())

    def upload_folder(self, folder_path, repo_id, **kwargs):
        folder = Path(folder_path)
        uploads.append((repo_id, folder, {p.name for p in folder.iterdir()},
                        card_metadata(folder) if (folder / "README.md").exists() else None))

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    pipe.push_to_hub("me/captionformer", base_model="Salesforce/blip2-opt-2.7b", datasets=["me/lvviscap"])
    (repo, _, names, meta), = uploads
    assert repo == "me/captionformer" and {"pipeline_captionformer.py", "config.json", "README.md"} <= names
    assert all(meta.get(key) for key in METADATA)
    push_folder(tmp_path, "me/other")  # the trainer's and the converter's pushes go through push_folder
    assert uploads[-1][:2] == ("me/other", tmp_path)


def test_converter_output_is_self_contained(tmp_path):
    from captionformer_hf.convert_captionformer_original_to_hf import convert_original_checkpoint, write_converted
    from captionformer_hf.toy import toy_tokenizer
    from official_checkpoint import official_style_state_dict

    heads = {"segmenter": 2, "vision": 2, "qformer": 2, "text": 2}
    model, _ = convert_original_checkpoint(official_style_state_dict(seed=1), preset="vln", num_heads=heads)
    model.config.hysteresis_low = model.config.hysteresis_high = model.config.presence_threshold = 0.0
    model.config.hysteresis_min_length = 1
    model.config.caption_score_threshold = 0.0
    folder = write_converted(model, tmp_path / "converted", tokenizer=toy_tokenizer(), preset="vln")
    meta = card_metadata(folder)
    assert all(meta.get(key) for key in METADATA if key != "datasets"), meta
    # VLN is a benchmark, not a Hub dataset id: no `datasets` metadata, the card's text names it
    assert "datasets" not in meta or not meta["datasets"]
    assert meta["base_model"] == ["Salesforce/blip2-opt-2.7b"] and "vln" in meta["tags"]
    text = (folder / "README.md").read_text()
    assert "VLN evaluation config" in text and "THIS_REPO_OR_FOLDER" not in text
    assert f"pipeline(model={str(tmp_path / 'converted')!r}" in text  # the usage names the folder
    assert "pip install torch torchvision 'transformers>=5.20' av scipy" in text
    check_without_the_package(folder, tmp_path, VIDEO)


def test_trainer_final_folder_is_self_contained(tmp_path):
    from captionformer_hf.training import TrainingConfig, train

    config = TrainingConfig(output_dir=str(tmp_path / "run"), synthetic_videos=4, synthetic_frames=6, max_steps=1,
                            batch_size=1, clips_per_video=1, save_every=1, input_size=64,
                            model_overrides={"clip_length": 2, "score_threshold": 0.0, "hysteresis_low": 0.0,
                                             "hysteresis_high": 0.0, "hysteresis_min_length": 1})
    train(config)
    folder = tmp_path / "run" / "final"
    meta = card_metadata(folder)
    assert all(meta.get(key) for key in ("pipeline_tag", "library_name", "license", "tags"))
    assert (folder / "training_history.json").exists() and (folder / "pipeline_captionformer.py").exists()
    check_without_the_package(folder, tmp_path, VIDEO)


def test_cards_name_the_repository_and_the_embedded_default_keeps_its_own(tmp_path, monkeypatch):
    import huggingface_hub

    from captionformer_hf.defaults import default_model_path, load_pipeline

    pipe = load_pipeline()
    pipe.save_pretrained(tmp_path / "copy")
    own = (Path(default_model_path()) / "README.md").read_text()
    assert (tmp_path / "copy" / "README.md").read_text() == own  # still says what its toy domain is
    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, folder_path, repo_id, **kwargs):
            uploaded["card"] = (Path(folder_path) / "README.md").read_text()
            return "https://huggingface.co/me/model/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    pipe.push_to_hub("me/shapes-model", title="A model")  # a new card asked for: it names the repository
    assert "pipeline(model='me/shapes-model', trust_remote_code=True)" in uploaded["card"]
    assert "THIS_REPO_OR_FOLDER" not in uploaded["card"]
