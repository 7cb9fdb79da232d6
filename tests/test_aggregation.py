"""Temporal aggregation of caption queries: the paper's order-free weighted sum and the released caption head's
order-aware ``concat`` / ``linear`` / ``self-attention``, in training and in both video-inference modes."""

import pytest
import torch

from captionformer_hf import CaptionFormerForDenseVideoObjectCaptioning
from captionformer_hf.modeling.captioning_captionformer import (
    CaptionFormerTemporalAggregation,
    uniform_clip_indices,
)


def test_uniform_clip_indices_follow_the_release_linspace():
    # order-free: every clip up to t_agg, then linspace rounded; order-aware: exactly t_agg, linspace truncated
    assert uniform_clip_indices(3, 8) == [0, 1, 2]
    assert uniform_clip_indices(10, 4) == [0, 3, 6, 9]
    assert uniform_clip_indices(3, 5, exact=True) == [0, 0, 1, 1, 2]
    assert uniform_clip_indices(3, 5, exact=True) == torch.linspace(0, 2, steps=5).long().tolist()
    assert uniform_clip_indices(1, 4, exact=True) == [0, 0, 0, 0]
    assert uniform_clip_indices(0, 4, exact=True) == []


def aggregator(toy_config, method, **overrides):
    torch.manual_seed(0)
    config = toy_config(aggregation=method, t_agg=3, **overrides)
    module = CaptionFormerForDenseVideoObjectCaptioning(config).model.caption_head.aggregation
    return module.eval()


def clips(num=2, k=3, tokens=5, width=16, seed=0):
    return torch.randn(num, k, tokens, width, generator=torch.Generator().manual_seed(seed))


def test_weighted_sum_is_the_same_for_any_order_of_the_clips(toy_config):
    module = aggregator(toy_config, "weighted")
    x, scores = clips(), torch.tensor([[0.9, 0.5, 0.2], [0.3, 0.3, 0.6]])
    expected = torch.einsum("nk,nkld->nld", scores / scores.sum(1, keepdim=True), x)
    torch.testing.assert_close(module(x, scores), expected)
    torch.testing.assert_close(module(x.flip(1), scores.flip(1)), expected)


def test_concat_is_the_clips_in_time_order(toy_config):
    module = aggregator(toy_config, "concat")
    x = clips()
    out = module(x)
    assert out.shape == (2, 15, 16)
    torch.testing.assert_close(out[:, 5:10], x[:, 1])
    assert not torch.equal(module(x.flip(1)), out)


def test_linear_reads_each_token_over_time_clip_major_and_starts_as_the_mean(toy_config):
    module = aggregator(toy_config, "linear")
    x = clips()
    # initial weights: [I/K, I/K, I/K], the arithmetic mean over the clips
    torch.testing.assert_close(module(x), x.mean(1), atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        module.linear.weight.normal_(generator=torch.Generator().manual_seed(1))
        module.linear.bias.normal_(generator=torch.Generator().manual_seed(2))
    # by hand: token l of trajectory n reads [x[n, 0, l], x[n, 1, l], x[n, 2, l]] (the release's flatten order)
    expected = torch.stack([torch.stack([module.linear(torch.cat([x[n, k, l] for k in range(3)]))
                                         for l in range(5)]) for n in range(2)])
    torch.testing.assert_close(module(x), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(module(x.flip(1)), module(x))


def test_self_attention_attends_over_time_per_token(toy_config):
    module = aggregator(toy_config, "self-attention", aggregation_num_heads=2)
    assert module.position_embedding.shape == (1, 3, 16)
    x = clips()
    with torch.no_grad():
        module.linear.weight.normal_(generator=torch.Generator().manual_seed(1))
    # by hand for trajectory 0, token 2: the sequence is its 3 clips
    sequence = x[0, :, 2][:, None]  # (time, 1, D)
    keys = sequence + module.position_embedding.transpose(0, 1)
    attended = module.self_attention(keys, keys, value=sequence)[0]
    mixed = module.norm(sequence + attended)[:, 0]  # (time, D)
    torch.testing.assert_close(module(x)[0, 2], module.linear(mixed.flatten()), atol=1e-5, rtol=1e-5)
    # trajectories and tokens do not mix: changing trajectory 1 leaves trajectory 0 alone
    y = x.clone()
    y[1] += 1
    torch.testing.assert_close(module(y)[0], module(x)[0])


def test_self_attention_without_position_embedding_has_none(toy_config):
    module = aggregator(toy_config, "self-attention", aggregation_num_heads=2, aggregation_position_embedding=False)
    assert module.position_embedding is None
    assert "position_embedding" not in dict(module.named_parameters())


def test_learned_aggregations_refuse_other_clip_counts_and_padding(toy_config):
    module = aggregator(toy_config, "linear")
    with pytest.raises(ValueError, match="exactly t_agg=3 clips, got 4"):
        module(clips(k=4))
    with pytest.raises(ValueError, match="same number of real clips"):
        module(clips(), valid=torch.tensor([[True, True, False], [True, True, True]]))
    with pytest.raises(ValueError, match="needs weights this model does not have"):
        aggregator(toy_config, "weighted")(clips(), method="linear")


def test_config_validates_aggregation_settings(toy_config):
    with pytest.raises(ValueError, match="`aggregation` must be one of"):
        toy_config(aggregation="sum")
    with pytest.raises(ValueError, match="divisible by `aggregation_num_heads`"):
        toy_config(aggregation="self-attention", aggregation_num_heads=3)
    with pytest.raises(ValueError, match="`aggregation_position_embedding` must be a bool"):
        toy_config(aggregation_position_embedding="yes")


def test_projection_first_aggregates_in_the_language_model_width(toy_config):
    torch.manual_seed(0)
    model = CaptionFormerForDenseVideoObjectCaptioning(
        toy_config(aggregation="linear", t_agg=2, aggregation_projection_first=True, text_overrides={"hidden_size": 24,
                                                                                                     "word_embed_proj_dim": 24})
    ).eval()
    assert model.model.caption_head.aggregation.linear.in_features == 2 * 24
    x = clips(k=2)
    projection = model.model.caption_head.language_projection
    expected = model.model.caption_head.aggregation(projection(x))
    torch.testing.assert_close(model.language_prefix(x), expected)


@pytest.mark.parametrize("mode", ["paper", "release"])
@pytest.mark.parametrize("method", ["concat", "linear", "self-attention"])
def test_video_inference_captions_with_order_aware_aggregations(toy_config, mode, method):
    torch.manual_seed(0)
    config = toy_config(clip_length=2, aggregation=method, t_agg=3, aggregation_num_heads=2, video_inference_mode=mode,
                        score_threshold=0.0, hysteresis_low=0.0, hysteresis_high=0.0, hysteresis_min_length=1,
                        caption_score_threshold=0.0, max_trajectories=2)
    model = CaptionFormerForDenseVideoObjectCaptioning(config).eval()
    seen = []
    aggregation = model.model.caption_head.aggregation
    hook = aggregation.register_forward_hook(lambda module, args, output: seen.append(args[0].shape))
    video = model.track_video(torch.randn(5, 3, 64, 64), max_new_tokens=3)
    hook.remove()
    assert video.caption_ids is not None and bool(video.captioned.all())
    # every trajectory's caption aggregates exactly t_agg clips (a 3-clip video: repeats where a track is shorter)
    assert seen and all(shape[1] == 3 for shape in seen)
    assert video.caption_ids.shape[0] == len(video.track_ids)


def test_training_the_video_level_caption_reaches_the_aggregation_weights(toy_config):
    from conftest import make_labels

    torch.manual_seed(0)
    model = CaptionFormerForDenseVideoObjectCaptioning(
        toy_config(clip_length=1, aggregation="linear", t_agg=4, freeze_segmenter=True)
    )
    labels = make_labels(4, 1, num_objects=1)
    for index, target in enumerate(labels):
        target["track_ids"] = torch.tensor([0])
        target["video_index"] = index // 2  # two videos of two clips each
        target["caption_ids"] = labels[index // 2 * 2]["caption_ids"]
    output = model(torch.randn(4, 1, 3, 64, 64), labels=labels, caption_level="video")
    output.loss.backward()
    assert model.model.caption_head.aggregation.linear.weight.grad.abs().sum() > 0


def test_save_and_load_keep_the_aggregation_weights(toy_config, tmp_path):
    torch.manual_seed(0)
    model = CaptionFormerForDenseVideoObjectCaptioning(toy_config(aggregation="self-attention", t_agg=2,
                                                                  aggregation_num_heads=2))
    with torch.no_grad():
        model.model.caption_head.aggregation.linear.weight.add_(1.0)
    model.save_pretrained(tmp_path)
    loaded = CaptionFormerForDenseVideoObjectCaptioning.from_pretrained(tmp_path)
    for name, tensor in model.model.caption_head.aggregation.state_dict().items():
        torch.testing.assert_close(loaded.model.caption_head.aggregation.state_dict()[name], tensor)
