"""Conversion of official CaptionFormer checkpoints (gabfstr/CaptionFormer).

The official state dict (``testing_utils.official_style_state_dict``) is built from the release's parameter names
and shapes (detectron2 D2 Swin, MSDeformAttnPixelDecoder, VideoMultiScaleMaskedTransformerDecoder, LAVIS EVA ViT-g /
BERT Q-Former, transformers OPT), with tiny sizes; reference computations below re-implement the release's
formulas, not this package's code."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning
from captionformer_hf.convert_captionformer_original_to_hf import (
    RELEASE_PRESETS,
    config_from_original,
    convert_original_checkpoint,
    load_original_state_dict,
    write_converted,
)
from captionformer_hf.modeling.captioning_captionformer import object_cross_attention_mask
from captionformer_hf.modeling.segmentation_captionformer import clip_pixel_values, temporal_sine_embedding
from official_checkpoint import official_style_state_dict

HEADS = {"segmenter": 2, "vision": 2, "qformer": 2, "text": 2}
SWIN = {"embed": 32, "depths": [1, 1, 2, 1], "heads": [1, 2, 2, 4], "window": 2}
HIDDEN, QUERIES, DEC_LAYERS, NUM_CLASSES = 32, 5, 3, 3
VISION, VISION_PATCHES, QFORMER, TEXT = 16, 16, 16, 16


def official_state_dict(seed: int = 0, box_layers: int = 0, with_lm: bool = True, box_only: bool = False):
    return official_style_state_dict(seed=seed, box_layers=box_layers, with_lm=with_lm, box_only=box_only)


def convert(sd, **kwargs):
    kwargs.setdefault("num_heads", HEADS)
    return convert_original_checkpoint(sd, **kwargs)


@pytest.fixture(scope="module")
def converted():
    sd = official_state_dict()
    model, report = convert(sd, preset="vln")
    return sd, model, report


def test_every_official_key_is_mapped_or_dropped_for_a_reason(converted):
    sd, model, report = converted
    assert report.ok
    assert report.unmapped == [] and report.missing == [] and report.unexpected == [] and report.shape_mismatches == []
    dropped = set(report.dropped)
    assert "criterion.empty_weight" in dropped
    assert "backbone.layers.2.blocks.1.attn.relative_position_index" in dropped
    assert "captioning_head.Qformer.bert.embeddings.word_embeddings.weight" in dropped
    assert "captioning_head.Qformer.bert.encoder.layer.1.intermediate.dense.weight" in dropped
    assert "captioning_head.Qformer.bert.encoder.layer.1.intermediate_query.dense.weight" not in dropped
    assert report.mapped == len(model.state_dict()) - 2  # every parameter but swin.layernorm (unused)
    assert set(report.unused_target) == {
        "model.segmenter.pixel_level_module.encoder.swin.layernorm.weight",
        "model.segmenter.pixel_level_module.encoder.swin.layernorm.bias",
    }


def test_config_is_read_from_shapes_and_follows_the_release(converted):
    _, model, _ = converted
    config = model.config
    seg = config.segmenter_config
    assert seg.backbone_config.depths == SWIN["depths"]
    assert seg.backbone_config.num_heads == SWIN["heads"]
    assert seg.backbone_config.window_size == SWIN["window"]
    assert seg.backbone_config.embed_dim == SWIN["embed"]
    assert (seg.decoder_layers, seg.num_queries, seg.hidden_dim, seg.dim_feedforward) == (DEC_LAYERS, QUERIES, 32, 48)
    assert (seg.encoder_layers, seg.encoder_feedforward_dim) == (1, 64)
    assert len(model.model.segmenter.transformer_module.decoder.layers) == DEC_LAYERS - 1
    assert config.num_labels == NUM_CLASSES
    assert (config.objectness_head_layers, config.box_head_layers) == (2, 0)
    assert model.model.segmenter.box_head is None
    assert config.caption_mask_convention == "release"
    assert config.vision_image_mean == config.segmenter_image_mean
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (32, 8)
    assert config.vision_config.intermediate_size == 40
    assert config.qformer_config.cross_attention_frequency == 2
    assert config.num_query_tokens == 4
    for key, value in RELEASE_PRESETS["vln"].items():
        assert getattr(config, key) == value
    assert model.generation_config.num_beams == 5


def test_tensors_land_where_the_release_uses_them(converted):
    sd, model, _ = converted
    ours = model.state_dict()
    swin = "model.segmenter.pixel_level_module.encoder.swin.encoder.layers.1.blocks.0.attention."
    qkv = sd["backbone.layers.1.blocks.0.attn.qkv.weight"]
    assert torch.equal(ours[swin + "q_proj.weight"], qkv[:64])
    assert torch.equal(ours[swin + "k_proj.weight"], qkv[64:128])
    assert torch.equal(ours[swin + "v_proj.weight"], qkv[128:])
    assert torch.equal(
        ours["model.segmenter.pixel_level_module.encoder.hidden_states_norms.stage3.weight"], sd["backbone.norm2.weight"]
    )
    dec = "model.segmenter.transformer_module.decoder.layers.1."
    in_proj = sd["sem_seg_head.predictor.transformer_self_attention_layers.1.self_attn.in_proj_weight"]
    assert torch.equal(ours[dec + "self_attn.k_proj.weight"], in_proj[32:64])
    assert torch.equal(
        ours[dec + "cross_attn.in_proj_weight"],
        sd["sem_seg_head.predictor.transformer_cross_attention_layers.1.multihead_attn.in_proj_weight"],
    )
    vit = "model.caption_head.vision_model.encoder.layers.0.self_attn.qkv.bias"
    b = "captioning_head.visual_encoder.blocks.0.attn."
    assert torch.equal(ours[vit], torch.cat([sd[b + "q_bias"], torch.zeros(VISION), sd[b + "v_bias"]]))
    assert torch.equal(
        ours["model.caption_head.qformer.encoder.layer.0.crossattention.attention.key.weight"],
        sd["captioning_head.Qformer.bert.encoder.layer.0.crossattention.self.key.weight"],
    )
    assert torch.equal(ours["model.caption_head.vision_model.post_layernorm.bias"], sd["captioning_head.ln_vision.bias"])
    # ln_vision is LAVIS's default nn.LayerNorm (eps 1e-5) while EVA's blocks use 1e-6: each its own
    vision = model.model.caption_head.vision_model
    assert vision.post_layernorm.eps == 1e-5 and vision.encoder.layers[0].layer_norm1.eps == 1e-6
    x = torch.randn(2, 5, VISION) * 1e-3  # a small variance, where the epsilon shows
    release = nn.functional.layer_norm(x, (VISION,), sd["captioning_head.ln_vision.weight"],
                                       sd["captioning_head.ln_vision.bias"], eps=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(vision.post_layernorm(x), release, rtol=0, atol=1e-6)
    assert torch.equal(ours["language_model.model.decoder.layers.0.fc1.weight"],
                       sd["captioning_head.opt_model.model.decoder.layers.0.fc1.weight"])


def _official_mlp(sd, prefix, layers, x):
    for k in range(layers):
        x = nn.functional.linear(x, sd[f"{prefix}.layers.{k}.weight"], sd[f"{prefix}.layers.{k}.bias"])
        if k < layers - 1:
            x = x.relu()
    return x


def test_heads_score_as_the_release(converted):
    sd, model, _ = converted
    seg = model.model.segmenter
    queries = torch.randn(2, QUERIES, HIDDEN)
    with torch.no_grad():
        class_logits, objectness_logits, boxes = seg.predict_heads(queries)
    pr = "sem_seg_head.predictor."
    official_class = nn.functional.linear(queries, sd[pr + "class_embed.weight"], sd[pr + "class_embed.bias"])
    torch.testing.assert_close(class_logits, official_class[..., :-1])
    # release: S = sqrt(max sigmoid(cls[:-1]) * softmax(object_embed)[0])
    official_object = _official_mlp(sd, pr + "object_embed", 2, queries).softmax(-1)[..., 0]
    torch.testing.assert_close(objectness_logits.sigmoid(), official_object)
    assert boxes is None


def test_box_head_is_tiled_over_the_clip():
    sd = official_state_dict(seed=1, box_layers=2)
    model, report = convert(sd, clip_length=3)
    assert report.ok and model.config.box_head_layers == 2
    queries = torch.randn(1, QUERIES, HIDDEN)
    with torch.no_grad():
        _, _, boxes = model.model.segmenter.predict_heads(queries)
    # release: raw normalised (x, y, w, h), the same box on every frame of the clip
    x, y, w, h = _official_mlp(sd, "sem_seg_head.predictor.box_embed", 2, queries).unbind(-1)
    official = torch.stack([x + w / 2, y + h / 2, w, h], dim=-1)
    assert boxes.shape == (1, QUERIES, 3, 4)
    for frame in range(3):
        torch.testing.assert_close(boxes[:, :, frame], official)


def _release_position_embedding_3d(num_frames: int, dim: int) -> torch.Tensor:
    """PositionEmbeddingSine3D's temporal term (normalize=True, scale 2 pi, eps 1e-6), from its formula."""
    z = torch.arange(1, num_frames + 1, dtype=torch.float32)
    z = z / (z[-1:] + 1e-6) * 2 * math.pi
    dim_t = torch.arange(dim, dtype=torch.float32)
    dim_t = 10000 ** (2 * (dim_t // 2) / dim)
    pos = z[:, None] / dim_t
    return torch.stack((pos[:, 0::2].sin(), pos[:, 1::2].cos()), dim=2).flatten(1)


@pytest.mark.parametrize("num_frames", [2, 5])
def test_temporal_embedding_matches_the_release(num_frames):
    ours = temporal_sine_embedding(num_frames, 32, "cpu", torch.float32)
    torch.testing.assert_close(ours, _release_position_embedding_3d(num_frames, 32))
    # single frames get none (image Mask2Former); the release's constant offset there changes no attention weight,
    # which test_decoder_reproduces_the_release_forward checks at T = 1
    assert not temporal_sine_embedding(1, 32, "cpu", torch.float32).any()


def test_release_caption_mask_convention():
    """Reference: the release's boolean mask with CLS appended last, through LAVIS's invert_attention_mask."""
    torch.manual_seed(0)
    logits = torch.randn(3, 20, 20) * 4
    grid = 4
    resized = nn.functional.interpolate(logits[:, None], size=(grid, grid), mode="bilinear", align_corners=False)
    release = (resized.sigmoid().flatten(-2, -1) < 0.5).bool()[:, 0]  # (N, P)
    release = torch.cat([release, torch.ones(3, 1, dtype=torch.bool)], dim=1)
    inverted = (1.0 - release.float()) * torch.finfo(torch.float32).min  # transformers' invert_attention_mask
    ours = object_cross_attention_mask(logits, grid, 0.5, torch.float32, num_queries=5, convention="release")
    assert ours.shape == (3, 1, 5, grid * grid + 1)
    for n in range(3):
        for query in range(5):
            assert torch.equal(ours[n, 0, query], inverted[n])
    # the paper's convention attends the inside instead, CLS first
    paper = object_cross_attention_mask(logits, grid, 0.5, torch.float32, num_queries=1)[:, 0, 0]
    assert torch.equal(paper[:, 0], torch.zeros(3))
    assert torch.equal(paper[:, 1:] == 0, (resized.sigmoid().flatten(1) >= 0.5) | ~(resized.sigmoid().flatten(1) >= 0.5).any(1, keepdim=True))


def test_converted_model_runs_and_round_trips(converted, tmp_path):
    from captionformer_hf.toy import toy_tokenizer

    _, model, _ = converted
    torch.manual_seed(0)
    clip = torch.randn(1, 1, 3, 64, 64)
    with torch.no_grad():
        outputs = model.model(clip)
    assert outputs.masks_logits.shape[:3] == (1, QUERIES, 1)
    assert outputs.pred_boxes.shape == (1, QUERIES, 1, 4)
    assert torch.isfinite(outputs.scores).all()
    # boxes are read off the masks (box_head_layers=0)
    mask = outputs.masks_logits[0, 0, 0] > 0
    if mask.any():
        ys, xs = torch.nonzero(mask, as_tuple=True)
        h, w = mask.shape
        expected = torch.tensor([(xs.min() + xs.max() + 1) / 2 / w, (ys.min() + ys.max() + 1) / 2 / h,
                                 (xs.max() + 1 - xs.min()) / w, (ys.max() + 1 - ys.min()) / h])
        torch.testing.assert_close(outputs.pred_boxes[0, 0, 0], expected)
    result = model.generate(clip, threshold=0.0, num_beams=1, max_new_tokens=3)
    assert result.shape[0] == QUERIES
    target = torch.zeros(1, 1, 64, 64)
    target[..., 10:30, 5:40] = 1
    output = model(clip, labels=[{
        "class_labels": torch.tensor([0]), "mask_labels": target, "boxes": torch.tensor([[[0.35, 0.31, 0.55, 0.31]]]),
        "caption_ids": torch.tensor([[5, 2]]), "caption_attention_mask": torch.ones(1, 2, dtype=torch.long),
    }])
    assert torch.isfinite(output.loss)
    assert "loss_mask" in output.loss_dict and "loss_caption" in output.loss_dict
    assert not any("bbox" in key or "giou" in key for key in output.loss_dict)  # no box head, no box loss

    out = write_converted(model, tmp_path / "converted", tokenizer=toy_tokenizer())
    assert (out / "model.safetensors").is_file() and (out / "processor_config.json").is_file()
    reloaded = CaptionFormerForDenseVideoObjectCaptioning.from_pretrained(out)
    with torch.no_grad():
        again = reloaded.model(clip)
    torch.testing.assert_close(again.masks_logits, outputs.masks_logits)
    torch.testing.assert_close(again.scores, outputs.scores)
    assert reloaded.generation_config.num_beams == 5
    from captionformer_hf import CaptionFormerProcessor

    processor = CaptionFormerProcessor.from_pretrained(out)
    assert processor.video_processor.size.shortest_edge == 480
    assert processor.video_processor.size_divisor == 32
    _check_pipeline(out)


def _check_pipeline(folder):
    """The converted folder serves pipeline("dense-video-object-captioning") as is."""
    import numpy as np

    from captionformer_hf.defaults import load_pipeline

    pipe = load_pipeline(str(folder))
    config = pipe.model.config
    assert config.video_inference_mode == "release"  # the presets run the release's video level
    # an untrained model: let every track through the hysteresis filter and get a caption
    config.hysteresis_low = config.hysteresis_high = 0.0
    config.hysteresis_min_length = 1
    config.presence_threshold = config.caption_score_threshold = 0.0
    video = (np.random.default_rng(0).random((3, 24, 32, 3)) * 255).astype(np.uint8)
    result = pipe(video, max_new_tokens=2, num_beams=1)
    assert result["num_frames"] == 3
    assert result["trajectories"]
    for trajectory in result["trajectories"]:
        assert isinstance(trajectory["caption"], str)
        for frame in trajectory["frames"]:
            x, y, w, h = frame["box"]
            assert 0 <= frame["frame_index"] < 3 and w >= 0 and h >= 0


def test_detectron2_checkpoint_file_and_cli(tmp_path):
    from captionformer_hf.cli import main

    sd = official_state_dict(seed=2)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": {"module." + k: v for k, v in sd.items()}, "iteration": 7}, path)
    loaded = load_original_state_dict(path)
    assert set(loaded) == set(sd)
    labels = tmp_path / "categories.json"
    labels.write_text('[{"id": 2, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]')
    code = main(["convert", "--checkpoint", str(path), "--output", str(tmp_path / "out"), "--preset", "vln",
                 "--labels", str(labels), "--num-heads", "segmenter=2", "vision=2", "qformer=2", "text=2"])
    assert code == 0
    model = CaptionFormerForDenseVideoObjectCaptioning.from_pretrained(tmp_path / "out")
    assert model.config.id2label == {0: "person", 1: "dog", 2: "car"}
    # an existing, non-empty output is refused (before converting) and left as it was
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert main(["convert", "--checkpoint", str(path), "--output", str(tmp_path / "out"),
                 "--num-heads", "segmenter=2", "vision=2", "qformer=2", "text=2"]) == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    labels.write_text('["person", "dog"]')
    assert main(["convert", "--checkpoint", str(path), "--output", str(tmp_path / "bad"), "--labels", str(labels),
                 "--num-heads", "segmenter=2", "vision=2", "qformer=2", "text=2"]) == 2  # 2 names, 3 classes
    torch.testing.assert_close(
        model.model.caption_head.query_tokens, sd["captioning_head.query_tokens"]
    )


def test_problems_fail_with_the_offending_keys():
    sd = official_state_dict(seed=3, with_lm=False)
    with pytest.raises(ValueError, match="no captioning_head.opt_model"):
        convert(sd)
    sd = official_state_dict(seed=3)
    sd["sem_seg_head.predictor.extra_head.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match=r"official keys matching no rule \(1\):\n  sem_seg_head.predictor.extra_head"):
        convert(sd)
    sd = official_state_dict(seed=3)
    del sd["sem_seg_head.predictor.transformer_ffn_layers.1.norm.bias"]
    with pytest.raises(ValueError, match="decoder.layers.1.final_layer_norm.bias"):
        convert(sd)
    sd = official_state_dict(seed=3)
    sd["backbone.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="relative position index"):
        convert(sd)
    sd = official_state_dict(seed=3)
    sd["captioning_head.agg_transformer.layers.0.linear1.weight"] = torch.zeros(4, 4)
    with pytest.raises(ValueError, match="aggregation module captioning_head.agg_transformer"):
        convert(sd)
    sd = official_state_dict(seed=3)
    sd["captioning_head.agg_linear.weight"] = torch.zeros(QFORMER, 3 * QFORMER + 1)
    with pytest.raises(ValueError, match=r"agg_linear \(16, 49\) fits neither"):
        convert(sd)
    sd = official_state_dict(seed=3)
    for key in [k for k in sd if "mask_features" in k]:
        del sd[key]
    with pytest.raises(ValueError, match=r"unknown checkpoint variant: no mask branch \(box-only\) and no box head"):
        convert(sd)
    sd = official_state_dict(seed=3, box_only=True)
    for key in [k for k in sd if k.startswith("backbone.norm")]:
        del sd[key]
    with pytest.raises(ValueError, match="must output stages"):
        convert(sd)
    sd = official_state_dict(seed=3)
    del sd["captioning_head.query_tokens"]
    with pytest.raises(ValueError, match=r"unknown checkpoint variant: not a CaptionFormer.*captioning_head.query_tokens"):
        convert(sd)
    with pytest.raises(ValueError, match="`preset` must be one of"):
        convert(official_state_dict(seed=3), preset="coco")
    # a preset that contradicts the weights: VidSTG checkpoints are box-only with a zero-shot classifier
    with pytest.raises(ValueError, match=r"`preset` 'vidstg' contradicts the weights: the vidstg checkpoints are "
                                         r"box-only checkpoints, this one is a mask checkpoint.*looks like a 'vln'"):
        convert(official_state_dict(seed=3), preset="vidstg")
    with pytest.raises(ValueError, match="`preset` 'vln' contradicts the weights"):
        convert(official_state_dict(seed=3, box_only=True), preset="vln")
    with pytest.raises(ValueError, match=r"attention heads of the vision \(width 16\).*--num-heads vision=N"):
        config_from_original(official_state_dict(seed=3), num_heads={"segmenter": 2, "qformer": 2, "text": 2})


def test_missing_vit_and_lm_come_from_a_base_blip2_checkpoint(converted):
    """Checkpoints trained from saved ViT features lack the EVA weights: they come from a transformers BLIP-2
    state dict, the position embedding resized (bicubic) when the base ViT ran at another size."""
    _, model, _ = converted
    sd = official_state_dict(seed=4)
    for key in [k for k in sd if k.startswith(("captioning_head.visual_encoder.", "captioning_head.opt_model."))]:
        del sd[key]
    base = {}
    for key, value in model.state_dict().items():
        if key.startswith("model.caption_head.vision_model."):
            base["vision_model." + key[len("model.caption_head.vision_model."):]] = value
        elif key.startswith("language_model."):
            base[key] = value
    # the base ViT ran at 16 px (2x2 patches): its position embedding gets resized to 4x4
    base["vision_model.embeddings.position_embedding"] = torch.randn(1, 5, VISION)
    converted_model, report = convert(sd, base_state_dict=base, vision_config=model.config.vision_config)
    assert report.ok
    assert any(k.endswith("position_embedding") for k in report.filled_from_base)
    assert converted_model.model.caption_head.vision_model.embeddings.position_embedding.shape == (1, 17, VISION)
    torch.testing.assert_close(converted_model.language_model.lm_head.weight, model.language_model.lm_head.weight)
    # ln_vision still comes from the official checkpoint
    torch.testing.assert_close(
        converted_model.model.caption_head.vision_model.post_layernorm.weight, sd["captioning_head.ln_vision.weight"]
    )


def test_language_model_reads_queries_then_bos_as_the_release(converted):
    """Release (BLIP-2): OPT.generate(inputs_embeds=[opt_proj(queries), embed(</s>)]) with beam search."""
    _, model, _ = converted
    assert model.config.caption_prompt_token_id == 2
    torch.manual_seed(1)
    queries = torch.randn(2, 5, QFORMER)
    with torch.no_grad():
        ours = model.generate_captions(queries, num_beams=2, max_new_tokens=4)
        prefix = model.model.caption_head.language_projection(queries)
        bos = model.language_model.get_input_embeddings()(torch.full((2, 1), 2))
        inputs = torch.cat([prefix, bos], dim=1)
        reference = model.language_model.generate(
            inputs_embeds=inputs, attention_mask=torch.ones(inputs.shape[:2], dtype=torch.long), num_beams=2,
            max_new_tokens=4, eos_token_id=model.generation_config.eos_token_id,
            pad_token_id=model.generation_config.pad_token_id,
        )
    assert torch.equal(ours, reference)
    with pytest.raises(ValueError, match="caption_prompt_token_id"):
        type(model.config)(**{**model.config.to_dict(), "caption_prompt_token_id": 10**6})


def _release_box_attention(boxes_xywh: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """attn_masking_from_bbox (True = not attended) from its formula, boxes ``(..., 4)`` raw (x, y, w, h)."""
    h, w = size
    x_min = (boxes_xywh[..., 0] * w).clamp(0, w - 1).long()
    y_min = (boxes_xywh[..., 1] * h).clamp(0, h - 1).long()
    x_max = (x_min + boxes_xywh[..., 2] * w).clamp(0, w - 1).long()
    y_max = (y_min + boxes_xywh[..., 3] * h).clamp(0, h - 1).long()
    out = torch.ones(*boxes_xywh.shape[:-1], h, w, dtype=torch.bool)
    for index in torch.cartesian_prod(*[torch.arange(n) for n in boxes_xywh.shape[:-1]]).reshape(-1, boxes_xywh.ndim - 1):
        i = tuple(index.tolist())
        out[i][y_min[i]:y_max[i], x_min[i]:x_max[i]] = False
    return out


def test_box_only_checkpoint_attends_to_its_boxes(tmp_path):
    """BOX_ONLY (BenSMOT / VidSTG-style): no mask branch; the decoder and the caption head attend to the boxes."""
    sd = official_state_dict(seed=5, box_only=True)
    model, report = convert(sd, preset="bensmot")
    assert report.ok
    config = model.config
    assert config.box_only and config.box_format == "xywh" and config.box_head_layers == 2
    assert config.segmenter_config.backbone_config.out_features == ["stage2", "stage3", "stage4"]
    assert config.segmenter_config.feature_strides == [8, 16, 32]
    assert any("mask_embedder" in key for key in report.unused_target)
    assert any("adapter_1" in key for key in report.unused_target)

    # decoder attention masks: the release's rasterisation of each query's box at each level's size
    predictor = model.model.segmenter.transformer_module.decoder.mask_predictor
    hidden = torch.randn(QUERIES, 1, HIDDEN)  # (Q, B, D), layer-normed decoder states
    pixel_embeddings = torch.randn(1, 1, HIDDEN, 16, 16)
    with torch.no_grad():
        box_masks, attention = predictor(hidden, pixel_embeddings, (4, 6))
    raw = _official_mlp(sd, "sem_seg_head.predictor.box_embed", 2, hidden.transpose(0, 1))[:, :, None]  # (1, Q, 1, 4)
    expected = _release_box_attention(raw, (4, 6)).flatten(2)  # (1, Q, 24)
    assert attention.shape == (HEADS["segmenter"], QUERIES, 24)
    for head in range(HEADS["segmenter"]):
        assert torch.equal(attention[head], expected[0])
    assert torch.equal(box_masks[0, :, 0] > 0, ~_release_box_attention(raw, (16, 16))[0, :, 0])

    # caption head: the box rasterised on the ViT grid, release convention
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.25], [0.2, 0.3, 0.9, 0.9]])
    logits = torch.randn(2, 8, 8)
    ours = object_cross_attention_mask(logits, 4, 0.5, torch.float32, 1, convention="release", boxes=boxes)[:, 0, 0]
    xywh = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, 2:]], dim=1)
    outside = _release_box_attention(xywh, (4, 4)).flatten(1)
    release = torch.cat([outside, torch.ones(2, 1, dtype=torch.bool)], dim=1)
    assert torch.equal(ours == 0, release)

    # the converted model runs end to end: segment, caption from boxes, box losses only
    torch.manual_seed(0)
    clip = torch.randn(1, 1, 3, 64, 64)
    result = model.generate(clip, threshold=0.0, num_beams=1, max_new_tokens=2)
    assert result.shape[0] == QUERIES
    output = model(clip, labels=[{
        "class_labels": torch.tensor([0]), "mask_labels": torch.ones(1, 1, 64, 64),
        "boxes": torch.tensor([[[0.5, 0.5, 0.5, 0.5]]]),
    }])
    assert set(output.loss_dict) >= {"loss_bbox", "loss_giou", "loss_class"}
    assert not any(key.startswith(("loss_mask", "loss_dice")) for key in output.loss_dict)
    from captionformer_hf.toy import toy_tokenizer

    _check_pipeline(write_converted(model, tmp_path / "box_only", tokenizer=toy_tokenizer()))
    with pytest.raises(ValueError, match="`boxes` are needed"):
        model.model.encode_captions(clip[:, 0], torch.tensor([0]), torch.randn(1, HIDDEN), torch.randn(1, 16, 16))


def _tiny_clip():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=16, projection_dim=24)
    return CLIPVisionModelWithProjection(config).eval()


def _zero_shot_state_dict(seed=6, box_only=False):
    """The release's ZeroShotClassifier (OVFormer) in place of class_embed: 24-d text embeddings, 3 classes."""
    sd = official_state_dict(seed=seed, box_only=box_only)
    g = torch.Generator().manual_seed(seed)
    pr = "sem_seg_head.predictor.class_embed."
    del sd[pr + "weight"], sd[pr + "bias"]
    dim = 24
    sd[pr + "linear.0.weight"] = torch.randn(dim // 2, HIDDEN, generator=g) * 0.3
    sd[pr + "linear.0.bias"] = torch.randn(dim // 2, generator=g) * 0.1
    sd[pr + "linear.2.weight"] = torch.randn(dim, dim // 2, generator=g) * 0.3
    sd[pr + "linear.2.bias"] = torch.randn(dim, generator=g) * 0.1
    sd[pr + "cross_attention.multihead_attn.in_proj_weight"] = torch.randn(3 * dim, dim, generator=g) * 0.3
    sd[pr + "cross_attention.multihead_attn.in_proj_bias"] = torch.randn(3 * dim, generator=g) * 0.1
    sd[pr + "cross_attention.multihead_attn.out_proj.weight"] = torch.randn(dim, dim, generator=g) * 0.3
    sd[pr + "cross_attention.multihead_attn.out_proj.bias"] = torch.randn(dim, generator=g) * 0.1
    sd[pr + "cross_attention.norm.weight"] = 1 + torch.randn(dim, generator=g) * 0.1
    sd[pr + "cross_attention.norm.bias"] = torch.randn(dim, generator=g) * 0.1
    zs = torch.cat([torch.randn(dim, NUM_CLASSES, generator=g), torch.zeros(dim, 1)], dim=1)
    sd[pr + "zs_weight"] = nn.functional.normalize(zs, p=2, dim=0)
    return sd


def test_zero_shot_classifier_with_clip_image_context(tmp_path):
    sd = _zero_shot_state_dict()
    with pytest.raises(ValueError, match="--clip-model openai/clip-vit-base-patch32"):
        convert(sd)
    clip = _tiny_clip()
    heads = {**HEADS, "clip_context": 4}
    # a mask checkpoint with the zero-shot classifier: the lvviscap preset (clips of 5) unless overridden
    model, report = convert(sd, clip_vision_config=clip.config, clip_state_dict=clip.state_dict(), num_heads=heads,
                            clip_length=1)
    assert report.ok and model.config.video_inference_mode == "release" and model.config.aggregation == "best"
    assert any(key.startswith("model.segmenter.clip_image_encoder.") for key in report.filled_from_base)
    config = model.config
    assert config.use_text_classifier and config.num_labels == NUM_CLASSES and config.text_embedding_dim == 24
    assert config.text_classifier_projection_layers == 2 and not config.text_classifier_bias

    # the release's ZeroShotClassifier.forward, from its formula, with torch's MultiheadAttention
    queries = torch.randn(2, QUERIES, HIDDEN)
    frames = torch.randn(2, 3, 24)  # (B, T, 512 in the release) CLIP embeddings of the clip's frames
    pr = "sem_seg_head.predictor.class_embed."
    x = nn.functional.linear(queries, sd[pr + "linear.0.weight"], sd[pr + "linear.0.bias"]).relu()
    x = nn.functional.linear(x, sd[pr + "linear.2.weight"], sd[pr + "linear.2.bias"])
    attention = nn.MultiheadAttention(24, 4)
    attention.load_state_dict({k.split("multihead_attn.")[1]: v for k, v in sd.items() if "multihead_attn" in k})
    with torch.no_grad():
        attended = attention(x.transpose(0, 1), frames.transpose(0, 1), frames.transpose(0, 1))[0].transpose(0, 1)
    x = nn.functional.layer_norm(x + attended, (24,), sd[pr + "cross_attention.norm.weight"],
                                 sd[pr + "cross_attention.norm.bias"])
    release = (50 * nn.functional.normalize(x, p=2, dim=2)) @ sd[pr + "zs_weight"]
    with torch.no_grad():
        ours, _, _ = model.model.segmenter.predict_heads(queries, image_context=frames)
    torch.testing.assert_close(ours, release[..., :-1], rtol=1e-4, atol=1e-4)

    # the frame embeddings come from the frozen CLIP encoder on each frame's content
    clip_video = torch.randn(1, 1, 3, 64, 96)
    with torch.no_grad():
        pixel_mask = torch.zeros(1, 64, 96, dtype=torch.long)
        pixel_mask[:, :64, :80] = 1
        embeds = model.model.segmenter.clip_image_embeds(clip_video, pixel_mask=pixel_mask)
        rgb = clip_video[0] * torch.tensor(config.segmenter_image_std).view(1, 3, 1, 1) + torch.tensor(
            config.segmenter_image_mean).view(1, 3, 1, 1)
        from captionformer_hf.modeling.segmentation_captionformer import clip_pixel_values

        direct = clip(pixel_values=clip_pixel_values(rgb[..., :64, :80], 32)).image_embeds
    torch.testing.assert_close(embeds[0], direct)
    assert not any(p.requires_grad for p in model.model.segmenter.clip_image_encoder.parameters())
    with torch.no_grad():
        outputs = model.model(clip_video)
        # the forward's pixel_mask reaches the CLIP embeddings, clip by clip: a batch of two clips with different
        # content gives each clip's own class logits (those of its embeddings on its content)
        pair = torch.cat([clip_video, torch.randn(1, 1, 3, 64, 96)])
        pair_mask = torch.zeros(2, 64, 96, dtype=torch.long)
        pair_mask[0, :64, :80], pair_mask[1, :48, :96] = 1, 1
        batched = model.model(pair, pixel_mask=pair_mask).class_logits
        for i in range(2):
            alone = model.model(pair[i : i + 1], clip_image_embeds=model.model.segmenter.clip_image_embeds(
                pair[i : i + 1], pixel_mask=pair_mask[i : i + 1])).class_logits
            torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(batched[:1], outputs.class_logits)  # without a mask, the padding is content
    assert outputs.class_logits.shape == (1, QUERIES, NUM_CLASSES)
    from captionformer_hf.toy import toy_tokenizer

    folder = write_converted(model, tmp_path / "zero_shot", tokenizer=toy_tokenizer())
    reloaded = CaptionFormerForDenseVideoObjectCaptioning.from_pretrained(folder)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(clip_video).class_logits, outputs.class_logits)
    _check_pipeline(folder)


def test_clip_preprocessing_matches_clip_image_processor():
    """clip_pixel_values (torch, from a resized frame) agrees with transformers' CLIPImageProcessor (PIL)."""
    import numpy as np
    from transformers import CLIPImageProcessor

    # a smooth image (resampling filters differ most on noise)
    yy, xx = np.mgrid[0:120, 0:200]
    image = np.stack([np.sin(xx / 17.0), np.cos(yy / 11.0), np.sin((xx + yy) / 23.0)], -1) * 0.5 + 0.5
    image = (image * 255).astype(np.uint8)
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    reference = torch.as_tensor(processor(images=image, return_tensors="pt")["pixel_values"])
    ours = clip_pixel_values(torch.as_tensor(image).permute(2, 0, 1)[None].float() / 255, 224)
    assert ours.shape == reference.shape == (1, 3, 224, 224)
    assert (ours - reference).abs().mean() < 0.01


def test_readme_holds_the_mapping_table():
    from pathlib import Path

    from captionformer_hf.convert_captionformer_original_to_hf import mapping_table_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert mapping_table_markdown() in readme


# ------------------------------------------------------------------ decoder parity with the release's forward
def _release_position_embedding_sine_3d(batch: int, frames: int, channels: int, height: int, width: int):
    """PositionEmbeddingSine3D(channels // 2, normalize=True) of the release, from its formula: (B, T, C, h, w)."""
    feats = channels // 2
    z = torch.arange(1, frames + 1, dtype=torch.float32).view(1, frames, 1, 1).expand(batch, frames, height, width)
    y = torch.arange(1, height + 1, dtype=torch.float32).view(1, 1, height, 1).expand(batch, frames, height, width)
    x = torch.arange(1, width + 1, dtype=torch.float32).view(1, 1, 1, width).expand(batch, frames, height, width)
    eps, scale = 1e-6, 2 * math.pi
    z, y, x = z / (frames + eps) * scale, y / (height + eps) * scale, x / (width + eps) * scale
    dim_t = 10000 ** (2 * (torch.arange(feats, dtype=torch.float32) // 2) / feats)
    dim_t_z = 10000 ** (2 * (torch.arange(2 * feats, dtype=torch.float32) // 2) / (2 * feats))

    def interleave(values):
        return torch.stack((values[..., 0::2].sin(), values[..., 1::2].cos()), dim=5).flatten(4)

    pos = torch.cat((interleave(y[..., None] / dim_t), interleave(x[..., None] / dim_t)), dim=4)
    pos = pos + interleave(z[..., None] / dim_t_z)
    return pos.permute(0, 1, 4, 2, 3)


def _release_decoder(sd, features, mask_features, frames, box_only=False):
    """VideoMultiScaleMaskedTransformerDecoder.forward of the release (eval, batch 1), written from its code's
    semantics with torch.nn.MultiheadAttention loaded with the official tensors."""
    pr = "sem_seg_head.predictor."
    hidden, heads = HIDDEN, HEADS["segmenter"]

    def mha(prefix):
        attention = nn.MultiheadAttention(hidden, heads)
        attention.load_state_dict({k[len(prefix) + 1:]: v for k, v in sd.items() if k.startswith(prefix + ".")})
        return attention.eval()

    def ln(x, prefix):
        return nn.functional.layer_norm(x, (hidden,), sd[prefix + ".weight"], sd[prefix + ".bias"])

    src, pos, sizes = [], [], []
    for level, x in enumerate(features):  # (T, C, h, w) each
        h, w = x.shape[-2:]
        sizes.append((h, w))
        p = _release_position_embedding_sine_3d(1, frames, hidden, h, w).flatten(3)  # (1, T, C, hw)
        pos.append(p.permute(1, 3, 0, 2).flatten(0, 1))  # (T*hw, 1, C)
        s = x.flatten(2) + sd[pr + "level_embed.weight"][level][None, :, None]  # (T, C, hw)
        src.append(s.view(1, frames, hidden, h * w).permute(1, 3, 0, 2).flatten(0, 1))
    query_pos = sd[pr + "query_embed.weight"][:, None]
    output = sd[pr + "query_feat.weight"][:, None].clone()

    def heads_and_mask(output, size):
        decoded = ln(output, pr + "decoder_norm").transpose(0, 1)  # (1, Q, C)
        cls = nn.functional.linear(decoded, sd[pr + "class_embed.weight"], sd[pr + "class_embed.bias"])
        obj = _official_mlp(sd, pr + "object_embed", 2, decoded)
        if box_only:
            boxes = _official_mlp(sd, pr + "box_embed", 2, decoded[:, :, None].repeat(1, 1, frames, 1))
            masked = _release_box_attention(boxes, size).flatten(2)  # (1, Q, T*h*w)
            masks = boxes
        else:
            embed = _official_mlp(sd, pr + "mask_embed", 3, decoded)
            masks = torch.einsum("bqc,btchw->bqthw", embed, mask_features[None])
            small = nn.functional.interpolate(masks.flatten(0, 1), size=size, mode="bilinear", align_corners=False)
            masked = small.view(1, QUERIES, frames, *size).sigmoid().flatten(2) < 0.5
        return cls, obj, masks, masked.unsqueeze(1).repeat(1, heads, 1, 1).flatten(0, 1)

    cls, obj, masks, attn_mask = heads_and_mask(output, sizes[0])
    with torch.no_grad():
        for i in range(DEC_LAYERS - 1):
            level = i % 3
            attn_mask[torch.where(attn_mask.sum(-1) == attn_mask.shape[-1])] = False
            cross = mha(f"{pr}transformer_cross_attention_layers.{i}.multihead_attn")
            out = cross(output + query_pos, src[level] + pos[level], src[level], attn_mask=attn_mask)[0]
            output = ln(output + out, f"{pr}transformer_cross_attention_layers.{i}.norm")
            self_attn = mha(f"{pr}transformer_self_attention_layers.{i}.self_attn")
            out = self_attn(output + query_pos, output + query_pos, output)[0]
            output = ln(output + out, f"{pr}transformer_self_attention_layers.{i}.norm")
            f = f"{pr}transformer_ffn_layers.{i}."
            out = nn.functional.linear(
                nn.functional.linear(output, sd[f + "linear1.weight"], sd[f + "linear1.bias"]).relu(),
                sd[f + "linear2.weight"], sd[f + "linear2.bias"],
            )
            output = ln(output + out, f + "norm")
            cls, obj, masks, attn_mask = heads_and_mask(output, sizes[(i + 1) % 3])
    return cls, obj, masks


@pytest.mark.parametrize("frames, box_only", [(1, False), (3, False), (2, True)])
def test_decoder_reproduces_the_release_forward(frames, box_only):
    """Same multi-scale features in, same class / objectness / masks (or boxes) out as the release's decoder."""
    sd = official_state_dict(seed=7, box_only=box_only)
    model, report = convert(sd, clip_length=frames)
    assert report.ok
    torch.manual_seed(frames)
    features = [torch.randn(frames, HIDDEN, 2 ** (level + 1), 3 * 2**level) for level in range(3)]
    mask_features = torch.randn(frames, HIDDEN, 16, 24)
    seg = model.model.segmenter
    with torch.no_grad():
        decoder_out = seg.transformer_module(features, mask_features, num_frames=frames)
        queries = decoder_out.intermediate_hidden_states[-1].transpose(0, 1)
        class_logits, objectness_logits, boxes = seg.predict_heads(queries)
    cls, obj, masks = _release_decoder(sd, features, mask_features, frames, box_only)
    torch.testing.assert_close(class_logits, cls[..., :-1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(objectness_logits.sigmoid(), obj.softmax(-1)[..., 0], rtol=1e-4, atol=1e-4)
    if box_only:
        x, y, w, h = masks.unbind(-1)
        torch.testing.assert_close(boxes, torch.stack([x + w / 2, y + h / 2, w, h], -1), rtol=1e-4, atol=1e-4)
    else:
        torch.testing.assert_close(decoder_out.masks_queries_logits[-1], masks, rtol=1e-4, atol=1e-4)


def test_converted_captions_end_at_a_newline_as_the_release(tmp_path):
    """The release trains captions ending with OPT's newline token and stops generating there."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from captionformer_hf import CaptionFormerProcessor

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["a red dog running\n", "a cat\n"] * 20,
                            trainers.BpeTrainer(vocab_size=60, special_tokens=["<pad>", "</s>", "<unk>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    newline = tokenizer("\n", add_special_tokens=False).input_ids
    assert len(newline) == 1
    model, _ = convert(official_state_dict(seed=5), preset="vln")
    model.config.text_config.vocab_size = len(tokenizer)  # (generation is not run here)
    folder = write_converted(model, tmp_path / "out", tokenizer=tokenizer, preset="vln")
    processor = CaptionFormerProcessor.from_pretrained(folder)
    assert processor.end_token_id == newline[0]
    encoded = processor.tokenize_captions(["a red dog running"])
    length = int(encoded["caption_attention_mask"][0].sum())
    assert encoded["caption_ids"][0, length - 1] == newline[0]  # the training target ends with the newline
    generated = tokenizer("a cat\na dog", add_special_tokens=False).input_ids
    assert processor.decode_caption(generated) == "a cat"  # generation's text is cut at the newline
    # the release stops at the newline only: an EOS is generated past and dropped from the text as a special token
    generated = tokenizer("a", add_special_tokens=False).input_ids + [tokenizer.eos_token_id] + tokenizer(
        " cat\n", add_special_tokens=False).input_ids
    assert processor.decode_caption(generated) == "a cat"
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [newline[0]]
    assert generation["min_new_tokens"] == 1  # the release's min_length=1 (4.28 counts generated ids only)
    assert generation["beam_length_normalisation"] == "release" and generation["num_beams"] == 5


@pytest.mark.parametrize("method", ["linear", "self-attention"])
def test_order_aware_aggregation_layers_convert(method):
    """The release's agg_linear (T_agg * width -> width) and agg_self_attention (SelfAttentionLayer: MultiheadAttention
    with 8 heads + post-norm) land in the aggregation module, with t_agg read from agg_linear's shape; the
    converted model aggregates as the release's formula: attention over the clips, then agg_linear on the clips'
    outputs concatenated in time order."""
    sd = official_state_dict(seed=5)
    g = torch.Generator().manual_seed(7)
    sd["captioning_head.agg_linear.weight"] = torch.randn(QFORMER, 4 * QFORMER, generator=g) * 0.1
    sd["captioning_head.agg_linear.bias"] = torch.randn(QFORMER, generator=g) * 0.1
    if method == "self-attention":
        sd["captioning_head.agg_self_attention.self_attn.in_proj_weight"] = torch.randn(3 * QFORMER, QFORMER, generator=g)
        sd["captioning_head.agg_self_attention.self_attn.in_proj_bias"] = torch.randn(3 * QFORMER, generator=g)
        sd["captioning_head.agg_self_attention.self_attn.out_proj.weight"] = torch.randn(QFORMER, QFORMER, generator=g)
        sd["captioning_head.agg_self_attention.self_attn.out_proj.bias"] = torch.randn(QFORMER, generator=g)
        sd["captioning_head.agg_self_attention.norm.weight"] = torch.rand(QFORMER, generator=g) + 0.5
        sd["captioning_head.agg_self_attention.norm.bias"] = torch.randn(QFORMER, generator=g)
    model, report = convert(sd, preset="vln")
    assert report.ok, report
    config = model.config
    assert (config.aggregation, config.t_agg, config.aggregation_projection_first) == (method, 4, False)
    aggregation = model.model.caption_head.aggregation
    torch.testing.assert_close(aggregation.linear.weight, sd["captioning_head.agg_linear.weight"])
    x = torch.randn(2, 4, 3, QFORMER, generator=g)  # (trajectories, time, tokens, width)
    sequence = x.permute(1, 0, 2, 3).reshape(4, 6, QFORMER)  # time-major: one sequence per (trajectory, token)
    if method == "self-attention":
        assert aggregation.position_embedding is None  # the release's SelfAttentionLayer has none
        attention = nn.MultiheadAttention(QFORMER, 8)
        attention.in_proj_weight.data = sd["captioning_head.agg_self_attention.self_attn.in_proj_weight"]
        attention.in_proj_bias.data = sd["captioning_head.agg_self_attention.self_attn.in_proj_bias"]
        attention.out_proj.weight.data = sd["captioning_head.agg_self_attention.self_attn.out_proj.weight"]
        attention.out_proj.bias.data = sd["captioning_head.agg_self_attention.self_attn.out_proj.bias"]
        sequence = nn.functional.layer_norm(sequence + attention(sequence, sequence, sequence)[0], (QFORMER,),
                                            sd["captioning_head.agg_self_attention.norm.weight"],
                                            sd["captioning_head.agg_self_attention.norm.bias"])
    flat = sequence.reshape(4, 2, 3, QFORMER).permute(1, 2, 0, 3).flatten(-2, -1)  # (N, L, time * width)
    expected = flat @ sd["captioning_head.agg_linear.weight"].T + sd["captioning_head.agg_linear.bias"]
    with torch.no_grad():
        torch.testing.assert_close(aggregation(x), expected, atol=1e-5, rtol=1e-5)


def test_the_two_vidstg_checkpoints_need_their_preset_named():
    """VidSTG with and without temporal aggregation: same weights (box-only, zero-shot), different evaluation
    configs; the converter refuses to guess, and each preset gives its release's captioning."""
    sd = _zero_shot_state_dict(box_only=True)
    clip = {"num_heads": {**HEADS, "clip_context": 4}, "clip_vision_config": _tiny_clip().config}
    with pytest.raises(ValueError, match=r"`preset` must be given: this checkpoint fits 'vidstg' and "
                                         r"'vidstg_no_tempagg'"):
        config_from_original(sd, **clip)
    tempagg = config_from_original(sd, preset="vidstg", **clip)
    assert (tempagg.aggregation, tempagg.t_agg) == ("weighted", 32)
    best_clip = config_from_original(sd, preset="vidstg_no_tempagg", **clip)  # MULTI_FRAME_CAPTIONING: false
    assert (best_clip.aggregation, best_clip.t_agg) == ("best", 1)
    assert (best_clip.k_match, best_clip.t_match, best_clip.hysteresis_high) == (7, 100, 0.85)
    with pytest.raises(ValueError, match=r"`preset` 'vidstg_no_tempagg' contradicts the weights.*looks like a 'vln'"):
        config_from_original(official_state_dict(seed=3), preset="vidstg_no_tempagg", **clip)
