"""The toy domain's model: a tiny CaptionFormer configuration, its word-level tokenizer and processor, built in code
(no Hub access). The embedded default model is one of these trained on the synthetic shapes
(``captionformer_hf.data.synthetic``); tests and benchmarks use them as small real models."""

from __future__ import annotations

import os

from .modeling.configuration_captionformer import CaptionFormerConfig


def toy_config(**overrides) -> CaptionFormerConfig:
    """A CaptionFormer small enough to run a forward/backward pass in well under a second on one CPU core:
    ResNet backbone with 4 stages, 5 queries, 3 decoder layers, a 4x4-patch ViT, a 2-layer Q-Former and a 1-layer
    OPT with a 64-token vocabulary. Keyword arguments override top-level config fields; sub-config overrides go in
    ``segmenter_overrides`` / ``vision_overrides`` / ``qformer_overrides`` / ``text_overrides``."""
    segmenter = {
        "backbone_config": {
            "model_type": "resnet",
            "embedding_size": 8,
            "hidden_sizes": [8, 16, 16, 16],
            "depths": [1, 1, 1, 1],
            "layer_type": "basic",
            "out_features": ["stage1", "stage2", "stage3", "stage4"],
        },
        "feature_size": 32,
        "mask_feature_size": 32,
        "hidden_dim": 32,
        "encoder_feedforward_dim": 32,
        "encoder_layers": 1,
        "decoder_layers": 3,
        "num_attention_heads": 2,
        "dim_feedforward": 32,
        "num_queries": 5,
        "train_num_points": 256,
    }
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    qformer = {
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "cross_attention_frequency": 1,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    text = {
        "model_type": "opt",
        "vocab_size": 64,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "ffn_dim": 32,
        "num_attention_heads": 2,
        "max_position_embeddings": 128,
        "word_embed_proj_dim": 16,
        "pad_token_id": 1,
        "bos_token_id": 2,
        "eos_token_id": 2,
        "dropout": 0.0,
    }
    segmenter.update(overrides.pop("segmenter_overrides", {}))
    vision.update(overrides.pop("vision_overrides", {}))
    qformer.update(overrides.pop("qformer_overrides", {}))
    text.update(overrides.pop("text_overrides", {}))
    kwargs = {
        "segmenter_config": segmenter,
        "vision_config": vision,
        "qformer_config": qformer,
        "text_config": text,
        "num_labels": 3,
        "num_query_tokens": 4,
        "max_caption_length": 8,
    }
    kwargs.update(overrides)
    return CaptionFormerConfig(**kwargs)


TOY_WORDS = (
    "a an the red green blue yellow purple orange white black square circle triangle star object moving "
    "left right up down to bouncing growing shrinking standing still small large big of and is"
).split()


def toy_tokenizer(words=TOY_WORDS):
    """A word-level tokenizer built with the `tokenizers` library: ``<unk>`` 0, ``<pad>`` 1, ``</s>`` 2 (EOS, also
    the end-of-caption token), then the words. Fits the 64-token vocabulary of :func:`toy_config`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1, "</s>": 2}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", eos_token="</s>", bos_token="</s>"
    )


def toy_processor(clip_length: int = 1, size: int = 64):
    """A processor for :func:`toy_config` models: frames resized so the short side is ``size``, padded to 32."""
    from .processing import CaptionFormerProcessor, CaptionFormerVideoProcessor

    video_processor = CaptionFormerVideoProcessor(
        size={"shortest_edge": size, "longest_edge": size * 2}, clip_length=clip_length
    )
    return CaptionFormerProcessor(video_processor=video_processor, tokenizer=toy_tokenizer(), max_caption_length=8)


def caption_word_accuracy(pipe, seeds, video_config=None, progress: bool = False) -> dict:
    """What a user of ``captionformer sample-video`` sees: for each seed, a synthetic video (``video_config``,
    default :func:`~captionformer_hf.data.synthetic.sample_video_config`) is written to mp4 and captioned by
    ``pipe`` (a dense-video-object-captioning pipeline). Each ground-truth object is matched to a trajectory
    (Hungarian assignment on the mean box IoU over the frames where either exists, matches of at least 0.3); an
    object counts as right for ``colour`` / ``shape`` / ``motion`` when its trajectory's caption holds its colour
    word, its shape word, its motion phrase (``all three`` when it holds them all), and for ``category`` when the
    trajectory's category (the class head) is its shape. Unmatched objects count as wrong.

    Returns ``{"objects", "matched", "trajectories", "shares": {name: share of all objects}, "confusions":
    Counter((true motion, motion said))}``."""
    import tempfile
    from collections import Counter

    import numpy as np
    from scipy.optimize import linear_sum_assignment

    from .data.synthetic import MOTIONS, generate_video, sample_video_config, write_video
    from .metrics import box_iou

    video_config = video_config or sample_video_config()
    counts, confusions = Counter(), Counter()
    seeds = list(seeds)
    if progress:
        from transformers.utils.logging import tqdm

        seeds = tqdm(seeds, desc="sample videos")
    with tempfile.TemporaryDirectory() as folder:
        for seed in seeds:
            video = generate_video(seed, video_config)
            path = os.path.join(folder, f"{seed}.mp4")
            write_video(video["frames"], path, fps=video["fps"])
            predicted = pipe(path, progress=False)["trajectories"]
            truth = video["trajectories"]
            overlap = np.zeros((len(truth), len(predicted)))
            for i, track in enumerate(truth):
                boxes = {f["frame_index"]: f["box"] for f in track["frames"]}
                for j, trajectory in enumerate(predicted):
                    other = {f["frame_index"]: f["box"] for f in trajectory["frames"]}
                    common = sorted(set(boxes) & set(other))
                    ious = [box_iou(np.array([boxes[f]]), np.array([other[f]]))[0, 0] for f in common]
                    overlap[i, j] = sum(ious) / len(set(boxes) | set(other))
            counts["objects"] += len(truth)
            counts["trajectories"] += len(predicted)
            for i, j in zip(*linear_sum_assignment(-overlap)):
                if overlap[i, j] < 0.3:
                    continue
                track, caption = truth[i], predicted[j]["caption"]
                colour = track["color"] in caption.split()
                shape = track["category"] in caption.split()
                motion = MOTIONS[track["motion"]] in caption
                counts["matched"] += 1
                counts["colour"] += colour
                counts["shape"] += shape
                counts["motion"] += motion
                counts["all three"] += colour and shape and motion
                counts["category"] += predicted[j]["category"] == track["category"]
                if not motion:
                    said = next((name for name, words in MOTIONS.items() if words in caption), "none")
                    confusions[(track["motion"], said)] += 1
    shares = {name: counts[name] / max(counts["objects"], 1)
              for name in ("colour", "shape", "motion", "all three", "category")}
    return {"objects": counts["objects"], "matched": counts["matched"], "trajectories": counts["trajectories"],
            "shares": shares, "confusions": confusions}


__all__ = ["TOY_WORDS", "caption_word_accuracy", "toy_config", "toy_processor", "toy_tokenizer"]
