"""Model tests in the transformers ModelTester spirit, on tiny configs built in code."""

import json

import pytest
import torch
from conftest import make_labels, run_without_the_package
from transformers import AutoModel, Mask2FormerModel

from captionformer_hf import (
    CaptionFormerConfig,
    CaptionFormerForDenseVideoObjectCaptioning,
    CaptionFormerModel,
)
from captionformer_hf.modeling.captioning_captionformer import (
    aggregate_caption_queries,
    aggregation_weights,
    object_cross_attention_mask,
)

SIZE = 64


def build(config, seed=0):
    torch.manual_seed(seed)
    return CaptionFormerForDenseVideoObjectCaptioning(config).eval()


@pytest.mark.parametrize("clip_length", [1, 3])
def test_output_shapes(toy_config, clip_length):
    config = toy_config(clip_length=clip_length)
    model = build(config)
    pixel_values = torch.randn(2, clip_length, 3, SIZE, SIZE)
    with torch.no_grad():
        out = model(pixel_values)
    q, c, d = config.segmenter_config.num_queries, config.num_labels, config.segmenter_config.hidden_dim
    assert out.object_queries.shape == (2, q, d)
    assert out.class_logits.shape == (2, q, c)
    assert out.objectness_logits.shape == (2, q)
    assert out.scores.shape == (2, q)
    assert out.pred_boxes.shape == (2, q, clip_length, 4)
    assert out.masks_logits.shape == (2, q, clip_length, SIZE // 4, SIZE // 4)
    assert len(out.auxiliary_outputs) == config.segmenter_config.decoder_layers - 1
    assert out.loss is None
    assert ((out.pred_boxes >= 0) & (out.pred_boxes <= 1)).all()
    expected = torch.sqrt(out.class_logits.sigmoid().amax(-1) * out.objectness_logits.sigmoid())
    torch.testing.assert_close(out.scores, expected)


def test_single_frame_segmenter_matches_mask2former(toy_config):
    """Parity: for T = 1 the clip segmenter computes exactly what transformers' Mask2FormerModel computes."""
    config = toy_config(clip_length=1)
    model = build(config)
    reference = Mask2FormerModel(config.segmenter_config).eval()
    segmenter = model.model.segmenter
    reference.pixel_level_module.load_state_dict(segmenter.pixel_level_module.state_dict())
    reference.transformer_module.load_state_dict(segmenter.transformer_module.state_dict())
    pixel_values = torch.randn(2, 1, 3, SIZE, SIZE)
    with torch.no_grad():
        ours = model(pixel_values)
        theirs = reference(pixel_values[:, 0], output_hidden_states=True)
    torch.testing.assert_close(
        ours.object_queries, theirs.transformer_decoder_intermediate_states[-1].transpose(0, 1)
    )
    torch.testing.assert_close(ours.masks_logits[:, :, 0], theirs.masks_queries_logits[-1])


def test_a_new_model_is_initialised_as_transformers_initialises_mask2former(toy_config):
    """A model built from a config (training from scratch) gets Mask2Former's initialisation: the deformable
    attention's sampling grid, zero attention biases, xavier decoder layers; and the class head's prior bias."""
    config = toy_config()
    model = build(config)
    reference = Mask2FormerModel(config.segmenter_config)
    ours, theirs = model.model.segmenter.pixel_level_module, reference.pixel_level_module
    attention = ours.decoder.encoder.layers[0].self_attn
    torch.testing.assert_close(attention.sampling_offsets.bias,
                               theirs.decoder.encoder.layers[0].self_attn.sampling_offsets.bias)
    assert attention.sampling_offsets.bias[:4].tolist() == [1.0, 0.0, 2.0, 0.0]  # the grid, points 1 and 2 of head 0
    assert not attention.sampling_offsets.weight.any() and not attention.attention_weights.weight.any()
    layer = model.model.segmenter.transformer_module.decoder.layers[0]
    assert not layer.cross_attn.in_proj_bias.any()
    bound = (6 / sum(layer.cross_attn.in_proj_weight.shape)) ** 0.5 * config.segmenter_config.init_xavier_std
    assert layer.cross_attn.in_proj_weight.abs().max() <= bound  # xavier uniform
    prior = -torch.log(torch.tensor((1 - 0.01) / 0.01))
    torch.testing.assert_close(model.model.segmenter.class_head.classifier.bias, prior.expand(config.num_labels))
    assert model.is_custom_code()  # our model is custom code to transformers, and stays so


def test_missing_weights_get_the_composite_initialisation_and_loaded_weights_stay_exact(toy_config, tmp_path):
    """``from_pretrained`` with weights missing (``strict_weights=False``): the deformable attention's tensors, held
    by a module without parameters of its own, get Mask2Former's grid; every loaded tensor is bit-exact."""
    from safetensors.torch import load_file, save_file

    config = toy_config(aggregation="linear")
    model = build(config, seed=1)
    with torch.no_grad():  # make every weight differ from any initialisation
        for parameter in model.parameters():
            parameter.add_(0.5)
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    prefix = "model.segmenter.pixel_level_module.decoder.encoder.layers.0.self_attn."
    missing = {key for key in weights if key.startswith(prefix)} | {"model.segmenter.class_head.classifier.bias"}
    assert len(missing) == 9  # sampling offsets, attention weights, value and output projections; the class prior
    save_file({key: value for key, value in weights.items() if key not in missing}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})

    loaded = CaptionFormerForDenseVideoObjectCaptioning.from_pretrained(tmp_path, strict_weights=False)
    state = loaded.state_dict()
    for key, value in weights.items():
        if key not in missing:
            assert torch.equal(state[key], value), key
    attention = loaded.model.segmenter.pixel_level_module.decoder.encoder.layers[0].self_attn
    assert attention.sampling_offsets.bias[:4].tolist() == [1.0, 0.0, 2.0, 0.0]
    assert not attention.sampling_offsets.weight.any() and not attention.attention_weights.weight.any()
    assert not attention.value_proj.bias.any() and not attention.output_proj.bias.any()
    prior = -torch.log(torch.tensor((1 - 0.01) / 0.01))
    torch.testing.assert_close(loaded.model.segmenter.class_head.classifier.bias, prior.expand(config.num_labels))


def test_the_default_backbone_loads_without_a_warning_and_others_still_warn():
    """The ResNet of the default model is a backbone the segmenter supports (tested above against Mask2Former):
    loading it logs nothing; a backbone outside the list still gets Mask2Former's warning."""
    import logging

    from transformers.utils import logging as transformers_logging

    from captionformer_hf.defaults import default_model_path

    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    library_logger = transformers_logging.get_logger("transformers")
    library_logger.addHandler(handler)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_warning()
    transformers_logging.warning_once.cache_clear()  # a warning already given in this process is not repeated
    try:
        config = CaptionFormerConfig.from_pretrained(default_model_path())
        CaptionFormerForDenseVideoObjectCaptioning.from_pretrained(default_model_path())
        assert config.segmenter_config.backbone_config.model_type == "resnet"
        assert not [message for message in records if "not a supported model" in message]
        CaptionFormerConfig(segmenter_config={"backbone_config": {"model_type": "convnext"}})
    finally:
        library_logger.removeHandler(handler)
        transformers_logging.set_verbosity(verbosity)
    assert any(message.startswith("Backbone convnext is not a supported model and may not be compatible with "
                                  "Mask2Former") for message in records)
    assert config.to_dict()["segmenter_config"]["model_type"] == "mask2former"  # same JSON as Mask2FormerConfig


def test_frames_of_a_clip_are_segmented_jointly(toy_config):
    """Changing one frame of a clip changes the masks of the other frames (queries attend to all T frames)."""
    model = build(toy_config(clip_length=3))
    pixel_values = torch.randn(1, 3, 3, SIZE, SIZE)
    altered = pixel_values.clone()
    altered[:, 2] = torch.randn(3, SIZE, SIZE)
    with torch.no_grad():
        a, b = model(pixel_values), model(altered)
    assert not torch.allclose(a.masks_logits[:, :, 0], b.masks_logits[:, :, 0])


@pytest.mark.parametrize("clip_length", [1, 3])
def test_loss_is_finite_and_reaches_every_trainable_parameter(toy_config, clip_length):
    config = toy_config(clip_length=clip_length)
    model = build(config).train()
    out = model(torch.randn(2, clip_length, 3, SIZE, SIZE), labels=make_labels(2, clip_length))
    expected_terms = {"loss_class", "loss_objectness", "loss_mask", "loss_dice", "loss_bbox", "loss_giou", "loss_caption"}
    assert expected_terms <= set(out.loss_dict)
    assert any(key.endswith("_0") for key in out.loss_dict)  # auxiliary losses
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, sum(out.loss_dict.values()))
    out.loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("model.segmenter") for n in trainable)
    assert any(n.startswith("model.caption_head.qformer") for n in trainable)
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    # the pixel decoder's level embedding only feeds the deformable attention's offsets and weights, which
    # Mask2Former initialises to zero: its gradient is exactly zero at the first step (reached, but zero)
    assert no_grad == ["model.segmenter.pixel_level_module.decoder.level_embed"]
    assert model.model.segmenter.pixel_level_module.decoder.level_embed.grad is not None
    # the release freezes the ViT and the LM
    assert not any(p.requires_grad for p in model.model.caption_head.vision_model.parameters())
    assert not any(p.requires_grad for p in model.language_model.parameters())


def test_frozen_segmenter_gets_no_gradient(toy_config):
    model = build(toy_config(clip_length=1))
    model.freeze_segmenter()
    model.train()
    assert not model.model.segmenter.training  # kept in eval mode (no dropout / batch-norm updates)
    out = model(torch.randn(2, 1, 3, SIZE, SIZE), labels=make_labels(2, 1))
    assert set(out.loss_dict) == {"loss_caption"}
    out.loss.backward()
    assert all(p.grad is None for p in model.model.segmenter.parameters())
    assert all(not p.requires_grad for p in model.model.segmenter.parameters())
    caption_trainable = [p for p in model.model.caption_head.parameters() if p.requires_grad]
    assert caption_trainable and all(p.grad is not None for p in caption_trainable)
    model.freeze_segmenter(False)
    assert all(p.requires_grad for p in model.model.segmenter.parameters())


def test_frozen_segmenter_without_captions_is_an_error(toy_config):
    model = build(toy_config(freeze_segmenter=True))
    with pytest.raises(ValueError, match="nothing to train"):
        model(torch.randn(1, 1, 3, SIZE, SIZE), labels=make_labels(1, 1, with_captions=False))


def test_empty_targets_give_a_finite_loss(toy_config):
    model = build(toy_config()).train()
    labels = make_labels(2, 1)
    labels[0] = {
        "class_labels": torch.zeros(0, dtype=torch.long),
        "mask_labels": torch.zeros(0, 1, SIZE, SIZE),
        "boxes": torch.zeros(0, 1, 4),
        "caption_ids": torch.zeros(0, 5, dtype=torch.long),
    }
    out = model(torch.randn(2, 1, 3, SIZE, SIZE), labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert len(out.matched_indices[0][0]) == 0 and len(out.matched_indices[1][0]) == 2


def test_save_load_round_trip_gives_identical_outputs(tmp_path, toy_config):
    model = build(toy_config(clip_length=3))
    pixel_values = torch.randn(1, 3, 3, SIZE, SIZE)
    with torch.no_grad():
        before = model(pixel_values)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, CaptionFormerForDenseVideoObjectCaptioning)
    with torch.no_grad():
        after = loaded(pixel_values)
    for key in ("object_queries", "class_logits", "objectness_logits", "pred_boxes", "masks_logits"):
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)
    # generation too
    torch.manual_seed(0)
    generated = model.generate(pixel_values, threshold=0.0, max_new_tokens=4, do_sample=False)
    generated_loaded = loaded.generate(pixel_values, threshold=0.0, max_new_tokens=4, do_sample=False)
    assert isinstance(generated, torch.Tensor) and torch.equal(generated, generated_loaded)


def test_remote_code_load_without_the_package(tmp_path, toy_config):
    model = build(toy_config(clip_length=1))
    model.save_pretrained(tmp_path / "ckpt")
    pixel_values = torch.randn(1, 1, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model(pixel_values).masks_logits
    torch.save({"pixel_values": pixel_values, "expected": expected}, tmp_path / "io.pt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert "modeling_captionformer.py" in files and "configuration_captionformer.py" in files
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_captionformer.CaptionFormerForDenseVideoObjectCaptioning"
    run_without_the_package(
        f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / 'ckpt')!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "CaptionFormerForDenseVideoObjectCaptioning"
        io = torch.load({str(tmp_path / 'io.pt')!r})
        with torch.no_grad():
            out = model(io["pixel_values"]).masks_logits
        torch.testing.assert_close(out, io["expected"], rtol=0, atol=0)
        """,
        tmp_path,
    )


@pytest.mark.parametrize(
    "shape, error",
    [((2, 3, SIZE, SIZE), "5 dimensions"), ((2, 1, 1, 3, SIZE, SIZE), "5 dimensions"), ((1, 1, 4, SIZE, SIZE), "3 channels"),
     ((1, 2, 3, SIZE, SIZE), "clip_length=1"), ((1, 1, 3, 8, 8), "at least 32x32")],
)
def test_bad_input_shape_is_a_clear_error(toy_config, shape, error):
    model = build(toy_config(clip_length=1))
    with pytest.raises(ValueError, match=error):
        model(torch.randn(*shape))


def test_bad_input_types_are_clear_errors(toy_config):
    model = build(toy_config())
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[0.0]])
    with pytest.raises(TypeError, match="float tensor"):
        model(torch.zeros(1, 1, 3, SIZE, SIZE, dtype=torch.uint8))
    with pytest.raises(ValueError, match="one dict per clip"):
        model(torch.randn(2, 1, 3, SIZE, SIZE), labels=make_labels(1, 1))
    labels = make_labels(1, 1)
    labels[0]["boxes"] = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"\['boxes'\]"):
        model(torch.randn(1, 1, 3, SIZE, SIZE), labels=labels)
    with pytest.raises(ValueError, match="use_text_classifier"):
        model(torch.randn(1, 1, 3, SIZE, SIZE), class_embeddings=torch.randn(3, 8))


def test_open_vocabulary_classifier(toy_config):
    config = toy_config(use_text_classifier=True, text_embedding_dim=8)
    model = build(config)
    pixel_values = torch.randn(1, 1, 3, SIZE, SIZE)
    embeddings = torch.randn(7, 8)  # a different vocabulary at inference time
    with torch.no_grad():
        out = model(pixel_values, class_embeddings=embeddings)
        stored = model(pixel_values)
    assert out.class_logits.shape == (1, 5, 7)
    assert stored.class_logits.shape == (1, 5, 3)
    # cosine logits: scaling an embedding does not change its logits
    with torch.no_grad():
        scaled = model(pixel_values, class_embeddings=embeddings * torch.arange(1, 8)[:, None])
    torch.testing.assert_close(scaled.class_logits, out.class_logits, rtol=1e-4, atol=1e-4)


def test_cross_attention_mask_is_additive_and_restricts_to_the_object():
    masks = torch.full((1, 8, 8), -10.0)
    masks[0, :4, :4] = 10.0  # top-left quarter -> patches (0,0), (0,1), (1,0), (1,1) of a 4x4 grid
    additive = object_cross_attention_mask(masks, grid_size=4, threshold=0.5, dtype=torch.float32, num_queries=3)
    assert additive.shape == (1, 1, 3, 17) and additive.dtype == torch.float32
    visible = additive[0, 0, 0] == 0
    expected = torch.zeros(17, dtype=torch.bool)
    expected[0] = True  # CLS
    expected[1 + torch.tensor([0, 1, 4, 5])] = True
    assert torch.equal(visible, expected)
    assert (additive[0, 0, 0][~expected] == torch.finfo(torch.float32).min).all()
    # an empty mask sees everything
    empty = object_cross_attention_mask(torch.full((1, 8, 8), -10.0), 4, 0.5, torch.float32, 3)
    assert (empty == 0).all()


def test_qformer_only_sees_the_object(toy_config):
    """Vision tokens outside the object's mask do not influence its caption query; tokens inside do."""
    model = build(toy_config())
    head = model.model.caption_head
    grid = head.grid_size
    tokens = torch.randn(1, 1 + grid * grid, model.config.vision_config.hidden_size)
    masks = torch.full((1, 16, 16), -10.0)
    masks[0, :8, :8] = 10.0  # top-left quarter of the patch grid
    query = torch.randn(1, model.config.segmenter_config.hidden_dim)
    with torch.no_grad():
        base = head(tokens, query, masks)
        outside = tokens.clone()
        outside[0, 1 + grid * grid - 1] += 5.0  # bottom-right patch
        inside = tokens.clone()
        inside[0, 1] += 5.0  # top-left patch
        assert base.shape == (1, 1 + model.config.num_query_tokens, model.config.qformer_config.hidden_size)
        torch.testing.assert_close(head(outside, query, masks), base)
        assert not torch.allclose(head(inside, query, masks), base)


def test_aggregation_weights_by_hand():
    scores = torch.tensor([[0.2, 0.6, 0.2], [0.5, 0.5, 0.0]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    torch.testing.assert_close(aggregation_weights(scores, valid, "weighted"), torch.tensor([[0.2, 0.6, 0.2], [0.5, 0.5, 0.0]]))
    torch.testing.assert_close(
        aggregation_weights(torch.tensor([[1.0, 3.0]]), method="weighted"), torch.tensor([[0.25, 0.75]])
    )
    torch.testing.assert_close(aggregation_weights(scores, valid, "mean"), torch.tensor([[1 / 3] * 3, [0.5, 0.5, 0.0]]))
    torch.testing.assert_close(aggregation_weights(scores, valid, "best"), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    queries = torch.arange(2 * 3 * 1 * 2, dtype=torch.float32).view(2, 3, 1, 2)
    aggregated = aggregate_caption_queries(queries, torch.tensor([[1.0, 3.0, 0.0], [1.0, 1.0, 2.0]]), method="weighted")
    torch.testing.assert_close(aggregated[0, 0], 0.25 * queries[0, 0, 0] + 0.75 * queries[0, 1, 0])
    torch.testing.assert_close(aggregated[1, 0], 0.25 * queries[1, 0, 0] + 0.25 * queries[1, 1, 0] + 0.5 * queries[1, 2, 0])
    with pytest.raises(ValueError, match="`method`"):
        aggregation_weights(scores, valid, "median")


def test_generate_captions(toy_config):
    model = build(toy_config())
    queries = torch.randn(3, 1 + model.config.num_query_tokens, model.config.qformer_config.hidden_size)
    sequences = model.generate_captions(queries, max_new_tokens=5, do_sample=False)
    assert sequences.shape[0] == 3 and 1 <= sequences.shape[1] <= 5
    # K clips per object, aggregated: identical clips aggregate to the clip itself
    stacked = queries[:, None].expand(-1, 4, -1, -1)
    aggregated = model.generate_captions(stacked, clip_scores=torch.rand(3, 4), max_new_tokens=5, do_sample=False)
    assert torch.equal(aggregated, sequences)
    with pytest.raises(ValueError, match="clip_scores"):
        model.generate_captions(stacked)
    with pytest.raises(ValueError, match="caption_queries"):
        model.generate_captions(queries[0])
    assert model.generate_captions(queries[:0]).shape == (0, 0)


def test_generate_clip_level(toy_config):
    model = build(toy_config(clip_length=3))
    """As GenerationMixin.generate: token ids, or with return_dict_in_generate a ModelOutput saying whose they are."""
    from captionformer_hf import CaptionFormerGenerateOutput

    clips = torch.randn(2, 3, 3, SIZE, SIZE)
    torch.manual_seed(0)
    ids = model.generate(clips, threshold=0.0, max_new_tokens=3)
    torch.manual_seed(0)
    result = model.generate(clips, threshold=0.0, max_new_tokens=3, return_dict_in_generate=True)
    assert isinstance(result, CaptionFormerGenerateOutput) and torch.equal(result.sequences, ids)
    assert ids.shape[0] == 2 * model.config.segmenter_config.num_queries and ids.shape[1] <= 3
    assert result.batch_indices.tolist() == [0] * 5 + [1] * 5 and result.query_indices.tolist() == list(range(5)) * 2
    torch.testing.assert_close(result.detection_scores, result.clip_outputs.scores.flatten())
    # the model's generation config may ask for dicts: the same, and the LM's own output stays token ids
    model.generation_config.return_dict_in_generate = True
    torch.manual_seed(0)
    again = model.generate(clips, threshold=0.0, max_new_tokens=3)
    model.generation_config.return_dict_in_generate = False
    assert isinstance(again, CaptionFormerGenerateOutput) and torch.equal(again.sequences, ids)
    none = model.generate(torch.randn(1, 3, 3, SIZE, SIZE), threshold=1.0)
    assert none.shape[0] == 0


def test_from_pretrained_components(tmp_path, toy_config):
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Mask2FormerForUniversalSegmentation

    config = toy_config()
    torch.manual_seed(1)
    segmenter = Mask2FormerForUniversalSegmentation(config.segmenter_config).eval()
    blip = Blip2ForConditionalGeneration(
        Blip2Config(
            vision_config=config.vision_config.to_dict(),
            qformer_config=config.qformer_config.to_dict(),
            text_config=config.text_config.to_dict(),
            num_query_tokens=4,
        )
    ).eval()
    segmenter.save_pretrained(tmp_path / "m2f")
    blip.save_pretrained(tmp_path / "blip2")
    model = CaptionFormerForDenseVideoObjectCaptioning.from_pretrained_components(
        segmenter=str(tmp_path / "m2f"), blip2=str(tmp_path / "blip2"), clip_length=1
    ).eval()
    assert model.config.num_labels == config.segmenter_config.num_labels
    pixel_values = torch.randn(1, 1, 3, SIZE, SIZE)
    with torch.no_grad():
        ours = model(pixel_values)
        theirs = segmenter(pixel_values[:, 0])
    torch.testing.assert_close(ours.masks_logits[:, :, 0], theirs.masks_queries_logits)
    torch.testing.assert_close(
        ours.class_logits, segmenter.class_predictor(ours.object_queries)[..., :-1], rtol=1e-5, atol=1e-5
    )
    for name, tensor in blip.qformer.state_dict().items():
        torch.testing.assert_close(model.model.caption_head.qformer.state_dict()[name], tensor)
    torch.testing.assert_close(model.model.caption_head.query_tokens, blip.query_tokens)
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model.model.caption_head.vision_model(image).last_hidden_state, blip.vision_model(image).last_hidden_state
        )
    embeds = torch.randn(1, 4, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.language_model(inputs_embeds=embeds).logits, blip.language_model(inputs_embeds=embeds).logits)


def test_a_tiny_model_learns_one_clip(toy_config):
    """20 steps on one synthetic clip: the loss goes down."""
    torch.manual_seed(0)
    config = toy_config(clip_length=2, freeze_language_model=False)
    model = CaptionFormerForDenseVideoObjectCaptioning(config).train()
    pixel_values = torch.zeros(1, 2, 3, SIZE, SIZE)
    labels = make_labels(1, 2, num_objects=2, seed=3)
    for t in range(2):  # draw the objects into the frames
        for n in range(2):
            pixel_values[0, t, n] += 2.0 * labels[0]["mask_labels"][n, t]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = model(pixel_values, labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses


def test_base_model_has_no_language_model(toy_config):
    model = CaptionFormerModel(toy_config()).eval()
    assert not hasattr(model, "language_model")
    with torch.no_grad():
        out = model(torch.randn(1, 1, 3, SIZE, SIZE))
    assert out.scores.shape == (1, 5)


def test_caption_head_renormalises_segmenter_input(toy_config):
    """The vision encoder sees the frame normalised with its own (CLIP) statistics, not the segmenter's."""
    config = toy_config()
    model = build(config)
    rgb = torch.rand(1, 3, 32, 32)
    seg_mean, seg_std = torch.tensor(config.segmenter_image_mean), torch.tensor(config.segmenter_image_std)
    vis_mean, vis_std = torch.tensor(config.vision_image_mean), torch.tensor(config.vision_image_std)
    seg_input = (rgb - seg_mean[:, None, None]) / seg_std[:, None, None]
    vis_input = (rgb - vis_mean[:, None, None]) / vis_std[:, None, None]
    head = model.model.caption_head
    with torch.no_grad():
        torch.testing.assert_close(
            head.encode_frames(seg_input), head.vision_model(vis_input).last_hidden_state, rtol=1e-5, atol=1e-5
        )
