import json

import pytest
import torch
from transformers import AutoConfig, Blip2QFormerConfig, Blip2VisionConfig, Mask2FormerConfig

import captionformer_hf  # noqa: F401  (registers the Auto classes)
from captionformer_hf import CaptionFormerConfig


def test_defaults_follow_the_paper():
    config = CaptionFormerConfig()
    assert isinstance(config.segmenter_config, Mask2FormerConfig)
    swin = config.segmenter_config.backbone_config
    # Swin-B as the paper and the official checkpoints
    assert swin.model_type == "swin" and (swin.embed_dim, swin.depths, list(swin.num_heads), swin.window_size) == (
        128, [2, 2, 18, 2], [4, 8, 16, 32], 12)
    assert config.segmenter_config.num_queries == 100 and config.segmenter_config.decoder_layers == 10
    assert (config.vision_config.hidden_size, config.vision_config.num_hidden_layers) == (1408, 39)
    assert config.vision_config.image_size == 364  # the release's CAPTIONING_HEAD.IMG_SIZE
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers, config.text_config.ffn_dim) == (
        2560, 32, 10240)  # OPT-2.7B
    assert config.video_inference_mode == "paper"
    assert isinstance(config.vision_config, Blip2VisionConfig)
    assert isinstance(config.qformer_config, Blip2QFormerConfig)
    assert config.text_config.model_type == "opt"
    assert config.num_query_tokens == 32
    weights = (
        config.dice_weight,
        config.mask_weight,
        config.class_weight,
        config.objectness_weight,
        config.bbox_l1_weight,
        config.giou_weight,
        config.caption_weight,
    )
    assert weights == (5.0, 5.0, 2.0, 2.0, 5.0, 2.0, 1.0)
    assert (config.k_match, config.t_match, config.hysteresis_low, config.hysteresis_high) == (7, 100, 0.4, 0.85)
    assert config.hysteresis_min_length == 3 and config.t_agg == 32
    # the Q-Former cross-attends to the vision encoder
    assert config.qformer_config.encoder_hidden_size == config.vision_config.hidden_size


def test_round_trip_through_json(tmp_path, toy_config):
    config = toy_config(clip_length=3, k_match=2, t_match=5, aggregation="mean", id2label={0: "a", 1: "b", 2: "c"})
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "captionformer"
    assert saved["auto_map"]["AutoConfig"] == "configuration_captionformer.CaptionFormerConfig"
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, CaptionFormerConfig)
    drop = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731
    assert drop(loaded.to_dict()) == drop(config.to_dict())
    assert loaded.segmenter_config.backbone_config.model_type == "resnet"
    assert loaded.id2label == {0: "a", 1: "b", 2: "c"}


def test_any_causal_lm_as_text_config(toy_config):
    config = toy_config(text_overrides={"model_type": "gpt2", "n_embd": 16, "n_layer": 1, "n_head": 2})
    assert config.text_config.model_type == "gpt2"


@pytest.mark.parametrize(
    "field, value",
    [
        ("clip_length", 0),
        ("clip_length", 1.5),
        ("box_head_layers", -1),
        ("objectness_head_layers", 0),
        ("caption_mask_convention", "inside"),
        ("num_query_tokens", -1),
        ("k_match", 0),
        ("t_agg", 0),
        ("score_threshold", 1.5),
        ("hysteresis_low", -0.1),
        ("dice_weight", -1.0),
        ("caption_weight", float("nan")),
        ("aggregation", "median"),
        ("caption_frame", "last"),
        ("duplicate_iou_threshold", 1.5),
        ("vision_post_layernorm_eps", 0.0),
        ("vision_image_std", [0.1, 0.0, 0.2]),
        ("segmenter_image_mean", [0.5, 0.5]),
        ("text_classifier_temperature", 0.0),
    ],
)
def test_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        CaptionFormerConfig(**{field: value})


def test_cross_field_validation():
    with pytest.raises(ValueError, match="`hysteresis_low`"):
        CaptionFormerConfig(hysteresis_low=0.9, hysteresis_high=0.5)
    with pytest.raises(ValueError, match="`k_match`"):
        CaptionFormerConfig(k_match=10, t_match=5)
    with pytest.raises(ValueError, match="segmenter_config.hidden_dim"):
        CaptionFormerConfig(segmenter_config={"hidden_dim": 30, "num_attention_heads": 8})
    with pytest.raises(ValueError, match="vision_config.image_size"):
        CaptionFormerConfig(vision_config={"image_size": 30, "patch_size": 14})
    with pytest.raises(ValueError, match="`text_config`"):
        CaptionFormerConfig(text_config={"model_type": "t5"})


def test_caption_frame_random_draws_a_frame_of_the_clip_at_inference():
    from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning
    from captionformer_hf.toy import toy_config

    model = CaptionFormerForDenseVideoObjectCaptioning(toy_config(clip_length=5, caption_frame="random"))
    torch.manual_seed(0)
    drawn = [model.caption_frame_index(5) for _ in range(200)]
    assert set(drawn) == {0, 1, 2, 3, 4}  # every frame of the clip, not always the middle one
    torch.manual_seed(0)
    assert [model.caption_frame_index(5) for _ in range(200)] == drawn  # from torch's global generator
    model.config.caption_frame = "first"
    assert model.caption_frame_index(5) == 0
    model.config.caption_frame = "middle"
    assert model.caption_frame_index(5) == 2
