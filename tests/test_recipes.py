"""The real-size training recipes run, at tiny size: their Hub components replaced by tiny Mask2Former and BLIP-2
checkpoints built here, their datasets by small synthetic ones."""

import json
import os

import pytest

from captionformer_hf.cli import main
from captionformer_hf.toy import toy_tokenizer
from captionformer_hf.training import TrainingConfig, train

RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
    )

    root = tmp_path_factory.mktemp("components")
    segmenter = Mask2FormerForUniversalSegmentation(Mask2FormerConfig(
        backbone_config={"model_type": "swin", "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
                         "window_size": 4, "image_size": 64, "out_features": ["stage1", "stage2", "stage3", "stage4"]},
        feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_layers=1, decoder_layers=3, num_queries=5,
        dim_feedforward=64, encoder_feedforward_dim=64, num_attention_heads=2, train_num_points=64,
        id2label={0: "square", 1: "circle", 2: "triangle", 3: "star"},
    ))
    segmenter.save_pretrained(root / "mask2former")
    text = {"model_type": "opt", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1, "ffn_dim": 32,
            "num_attention_heads": 2, "word_embed_proj_dim": 16, "max_position_embeddings": 128, "pad_token_id": 1,
            "bos_token_id": 2, "eos_token_id": 2}
    blip2 = Blip2ForConditionalGeneration(Blip2Config(
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        qformer_config={"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32},
        text_config=text, num_query_tokens=4,
    ))
    blip2.save_pretrained(root / "blip2")
    toy_tokenizer().save_pretrained(root / "blip2")
    for name, frames in (("videos", "8"), ("images", "1")):
        assert main(["data", "synthetic", "--num-videos", "4", "--out", str(root / name), "--frames", frames, "-q"]) == 0
    return root


def recipe(name, components, tmp_path, **extra):
    with open(os.path.join(RECIPES, name)) as f:
        values = json.load(f)
    paths = {"lviscap": "images", "coco": "images", "lvviscap": "videos"}
    values["datasets"] = [dict(d, path=str(components / paths[d["name"]])) for d in values["datasets"]]
    if values.get("model") == "components":
        values["segmenter"], values["blip2"] = str(components / "mask2former"), str(components / "blip2")
    values.update(output_dir=str(tmp_path / name), max_steps=1, batch_size=2, input_size=64, save_every=1,
                  warmup_steps=0, eval_every=0, num_workers=0, log_every=1, **extra)
    return TrainingConfig(**values)


def test_paper_recipes_run_at_tiny_size(components, tmp_path):
    pretrain = train(recipe("paper_pretrain.json", components, tmp_path))
    assert pretrain["steps"] == 1 and "loss_caption" in pretrain["history"][-1]
    assert pretrain["model"].config.box_head_layers == 4
    # the LV-VISCap recipe continues from the pretraining's final model
    lvviscap = recipe("paper_lvviscap.json", components, tmp_path, model=str(tmp_path / "paper_pretrain.json" / "final"))
    assert train(lvviscap)["model"].config.clip_length == 5
    end_to_end = train(recipe("paper_end_to_end.json", components, tmp_path))
    assert end_to_end["model"].config.class_loss == "release_bce"


def test_accelerate_config_is_an_8_gpu_bf16_launch():
    import yaml

    with open(os.path.join(RECIPES, "accelerate_8gpu.yaml")) as f:
        values = yaml.safe_load(f)
    assert (values["num_processes"], values["mixed_precision"], values["distributed_type"]) == (8, "bf16", "MULTI_GPU")


def test_a_model_continues_with_longer_clips(toy_config):
    import torch

    from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning

    torch.manual_seed(0)
    model = CaptionFormerForDenseVideoObjectCaptioning(toy_config(clip_length=2)).eval()
    model.set_clip_length(3)
    assert model.config.clip_length == 3 and model.model.segmenter.box_head(torch.zeros(1, 32)).shape == (1, 12)
    with torch.no_grad():
        boxes = model(torch.randn(1, 3, 3, 64, 64)).pred_boxes
    assert boxes.shape[2] == 3 and torch.allclose(boxes[:, :, 0], boxes[:, :, 2])  # one box head for every frame
    with pytest.raises(ValueError, match="`clip_length`"):
        model.set_clip_length(0)
