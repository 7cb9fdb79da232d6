"""Convert an official CaptionFormer checkpoint (gabfstr/CaptionFormer, detectron2 ``.pth``) to this package.

Usage (also ``captionformer convert``)::

    python -m captionformer_hf.convert_captionformer_original_to_hf \\
        --checkpoint models/ckpt_vln.pth --preset vln --tokenizer facebook/opt-2.7b --output converted/vln

Every official parameter is placed by one executed table, ``RULES`` (official key pattern -> target, with a
transform, or dropped with the reason; the README's table is rendered from it); official keys that match no rule,
targets the model does not have and parameters of the converted model that nothing filled are collected in a
:class:`ConversionReport` and the conversion fails on any of them. A few parameters of this package have no official
counterpart but do not change any output (``UNUSED_TARGET_KEYS``).

Where the released code differs from the paper text, the converted config follows the code:

- the objectness head is a 2-layer MLP with two logits, scored ``softmax(...)[0]``; it is stored as one logit
  ``a - b`` (``softmax([a, b])[0] == sigmoid(a - b)``) with ``objectness_head_layers=2``;
- the box head is a 2-layer MLP applied to each frame's copy of the query (same box on every frame of a clip);
  its last layer is tiled ``clip_length`` times, and mask checkpoints (trained with ``USE_BOXES: false``) have no
  box head at all (``box_head_layers=0``: boxes are read off the masks);
- the class head has a no-object logit that inference never reads (sigmoid over ``[:-1]``); it is dropped;
- ``DEC_LAYERS: 10`` means 9 masked-attention layers plus the prediction from the initial queries, which is what
  transformers' ``Mask2FormerConfig(decoder_layers=10)`` builds;
- the 3D sine position embedding adds its temporal term to single-frame clips too; that is one vector added to
  every key, which shifts all attention logits of a query equally: no option is needed (the decoder parity test
  checks T = 1);
- OPT reads ``[projected queries, </s>]`` (the empty prompt tokenised with BOS, as BLIP-2) before the caption
  (``caption_prompt_token_id``);
- the caption head's EVA encoder reads the segmenter's input (ImageNet-normalised, padded, resized to a square) and
  the Q-Former's cross-attention mask follows the release convention (``caption_mask_convention="release"``, see
  ``object_cross_attention_mask``: it attends to the patches *outside* the object, shifted by the CLS token).

- the box head predicts raw normalised ``(x, y, w, h)`` (no sigmoid; ``box_format="xywh"``); box-only checkpoints
  (``BOX_ONLY: true``, VidSTG / BenSMOT) have no mask branch: ``box_only=True`` takes the decoder's and the caption
  head's attention masks from the boxes, rasterised as ``attn_masking_from_bbox`` does.

- the open-vocabulary ``ZeroShotClassifier`` (``CLIP_CLASSIFIER: true``, LV-VIS / VidSTG, from OVFormer) projects
  the query with a 2-layer MLP, cross-attends to the CLIP ViT-B/32 image embeddings of the clip's frames (which the
  release reads from pre-extracted pickles) and scores ``50 * cos`` against its ``zs_weight`` text embeddings: it
  becomes the cosine classifier with ``text_classifier_projection_layers=2``, no bias, temperature 1/50 and a frozen
  ``CLIPVisionModelWithProjection`` (``clip_vision_config``, weights from ``--clip-model``) that computes the frame
  embeddings from the model's input.

- the released caption head's order-aware aggregations (``AGGREGATION_METHOD: linear`` / ``self-attention``:
  ``agg_linear``, ``agg_self_attention``, ``agg_pos_embedding``) become ``aggregation="linear"`` /
  ``"self-attention"`` with ``t_agg`` (``AGGREGATION_NUM_T``) and ``aggregation_projection_first``
  (``OPT_PROJ_BEFORE_AGGREGATION``) read from ``agg_linear``'s shape, and a temporal position embedding only when
  the checkpoint has one. ``concat`` has no weights: ``aggregation="concat"`` is given as an override.

Not convertible (the conversion stops with a message naming the component): the ``transformer`` aggregation module
(``agg_transformer``, not among the release's accepted methods) and Swin's absolute position embedding.
"""

from __future__ import annotations

import argparse
import logging
import os
import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .modeling.configuration_captionformer import CaptionFormerConfig
from .utils import atomic_directory, check_new_directory

logger = logging.getLogger(__name__)

# Video-level settings of the released evaluation configs (configs/eval/*.yaml of gabfstr/CaptionFormer); they are
# not stored in the .pth. Every preset runs the release's video level (`video_inference_mode="release"`); `variant`
# says which checkpoints it fits (box-only or masks; linear or zero-shot classifier) and is checked against the
# weights.
_RELEASE_VIDEO_LEVEL = {
    "video_inference_mode": "release",
    "presence_threshold": 0.2,  # inference_video_dvoc's presence threshold (box models)
    "max_trajectories": 50,  # TEST.DETECTIONS_PER_IMAGE / the top-50 of inference_video_dvoc_mask (mask models)
    "caption_score_threshold": 0.3,  # CAPTIONING_THRESH
    "track_score_threshold": 0.0,  # PER_FRAME_SCORE_THRESHOLD
    "aggregation": "weighted",  # AGGREGATION_METHOD: weighted mean
}
RELEASE_PRESETS: dict[str, dict] = {
    "vln": {  # configs/eval/vln.yaml: masks, one class
        **_RELEASE_VIDEO_LEVEL,
        "clip_length": 1, "k_match": 5, "t_match": 20,
        "hysteresis_low": 0.3, "hysteresis_high": 0.9, "hysteresis_min_length": 5,
        "t_agg": 8, "max_caption_length": 30,
    },
    "vidstg": {  # configs/eval/vidstg_tempagg.yaml: box-only, zero-shot classifier (80 classes)
        **_RELEASE_VIDEO_LEVEL,
        "clip_length": 1, "k_match": 7, "t_match": 100,
        "hysteresis_low": 0.4, "hysteresis_high": 0.85, "hysteresis_min_length": 3,
        "t_agg": 32, "max_caption_length": 30,
    },
    "vidstg_no_tempagg": {  # configs/eval/vidstg_no_tempagg.yaml: as vidstg, but MULTI_FRAME_CAPTIONING false: each
        # track is captioned from its single best-scoring clip over the whole video (the release's max_score_index;
        # its AGGREGATION_METHOD / AGGREGATION_NUM_T are not read on that path)
        **_RELEASE_VIDEO_LEVEL,
        "clip_length": 1, "k_match": 7, "t_match": 100,
        "hysteresis_low": 0.4, "hysteresis_high": 0.85, "hysteresis_min_length": 3,
        "t_agg": 1, "aggregation": "best", "max_caption_length": 30,
    },
    "bensmot": {  # configs/eval/bensmot.yaml: box-only, one class
        **_RELEASE_VIDEO_LEVEL,
        "clip_length": 1, "k_match": 7, "t_match": 40,
        "hysteresis_low": 0.3, "hysteresis_high": 0.8, "hysteresis_min_length": 5,
        "t_agg": 8, "max_caption_length": 200,
    },
    "lvviscap": {  # configs/eval/lvvis_captioner.yaml: masks, zero-shot classifier (1196 classes), clips of 5,
        # adjacent-clip matching (TOPK_MATCHING off), no hysteresis, no temporal aggregation (the best clip), a 0.5
        # track score threshold, top 50
        **_RELEASE_VIDEO_LEVEL,
        "clip_length": 5, "k_match": 1, "t_match": 1,
        "hysteresis_low": 0.0, "hysteresis_high": 0.0, "hysteresis_min_length": 1,
        "t_agg": 1, "aggregation": "best", "track_score_threshold": 0.5, "max_caption_length": 30,
    },
}
# what each preset's checkpoints look like: (box-only, zero-shot classifier)
PRESET_VARIANTS = {"vln": (False, False), "vidstg": (True, True), "vidstg_no_tempagg": (True, True),
                   "bensmot": (True, False), "lvviscap": (False, True)}


def checkpoint_variant(state: dict) -> tuple[bool, bool]:
    """``(box_only, zero_shot)`` of an official state dict; ``ValueError`` when it is not a CaptionFormer checkpoint
    of a known variant."""
    required = ("backbone.patch_embed.proj.weight", "sem_seg_head.pixel_decoder.input_proj.0.0.weight",
                "sem_seg_head.predictor.query_feat.weight", "captioning_head.query_tokens")
    missing = [key for key in required if key not in state]
    if missing:
        raise ValueError(
            "unknown checkpoint variant: not a CaptionFormer (Swin + MSDeformAttn pixel decoder + video decoder + "
            f"BLIP-2 caption head) checkpoint; missing {missing}"
        )
    box_only = "sem_seg_head.pixel_decoder.mask_features.weight" not in state
    zero_shot = "sem_seg_head.predictor.class_embed.zs_weight" in state
    if not zero_shot and "sem_seg_head.predictor.class_embed.weight" not in state:
        raise ValueError("unknown checkpoint variant: its classifier is neither linear nor the ZeroShotClassifier")
    if box_only and "sem_seg_head.predictor.box_embed.layers.0.weight" not in state:
        raise ValueError("unknown checkpoint variant: no mask branch (box-only) and no box head")
    return box_only, zero_shot


def presets_like(state: dict) -> list[str]:
    """The release presets whose checkpoints look like ``state`` (the two VidSTG ones have the same weights)."""
    variant = checkpoint_variant(state)
    return [name for name, v in PRESET_VARIANTS.items() if v == variant]


def preset_for(state: dict) -> str:
    """The release preset whose checkpoints look like ``state``; ``ValueError`` when the weights cannot tell (the
    VidSTG checkpoints with and without temporal aggregation differ only in their evaluation config)."""
    candidates = presets_like(state)
    if len(candidates) > 1:
        raise ValueError(
            f"`preset` must be given: this checkpoint fits {' and '.join(repr(c) for c in candidates)}, whose weights "
            "are the same ('vidstg': captions from 32 clips, weighted; 'vidstg_no_tempagg': from the best clip); "
            "pass --preset with the evaluation config the checkpoint was released with"
        )
    return candidates[0]


def check_preset(state: dict, preset: str) -> None:
    """``ValueError`` when ``preset`` contradicts the weights (a mask preset on a box-only checkpoint, ...)."""
    box_only, zero_shot = checkpoint_variant(state)
    want_box, want_zero_shot = PRESET_VARIANTS[preset]
    problems = []
    if box_only != want_box:
        problems.append(f"the {preset} checkpoints are {'box-only' if want_box else 'mask'} checkpoints, this one is "
                        f"{'box-only (no mask branch)' if box_only else 'a mask checkpoint'}")
    if zero_shot != want_zero_shot:
        problems.append(f"the {preset} checkpoints have {'the ZeroShotClassifier' if want_zero_shot else 'a linear classifier'}"
                        f", this one has {'the ZeroShotClassifier' if zero_shot else 'a linear classifier'}")
    if problems:
        raise ValueError(f"`preset` {preset!r} contradicts the weights: " + "; ".join(problems) +
                         f" (it looks like a {' / '.join(repr(c) for c in presets_like(state))} checkpoint)")


# Head counts are not recoverable from parameter shapes: the release's values, used when the width matches.
RELEASE_NUM_HEADS = {"segmenter": 8, "vision": {1408: 16}, "qformer": {768: 12}, "text": {2560: 32, 2048: 32, 4096: 32}}

# Parameters of this package with no official counterpart that do not change any output (they keep their
# initial values).
UNUSED_TARGET_KEYS: dict[str, str] = {
    r"model\.segmenter\.pixel_level_module\.encoder\.swin\.layernorm\.(weight|bias)": (
        "SwinModel's final norm, not used by SwinBackbone"
    ),
}
UNUSED_BOX_ONLY_TARGET_KEYS: dict[str, str] = {
    r"model\.segmenter\.pixel_level_module\.decoder\.(mask_projection|adapter_\d+|layer_\d+)\..*": (
        "mask branch of the pixel decoder: box-only models do not read the mask features"
    ),
    r"model\.segmenter\.transformer_module\.decoder\.mask_predictor\.mask_embedder\..*": (
        "mask embedding: box-only models take their attention masks from the boxes"
    ),
}

@dataclass
class ConversionReport:
    """What a conversion mapped, dropped and could not place."""

    mapped: int = 0
    dropped: dict[str, str] = field(default_factory=dict)
    filled_from_base: list[str] = field(default_factory=list)
    unused_target: dict[str, str] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatches: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unmapped or self.missing or self.unexpected or self.shape_mismatches or self.unsupported)

    def summary(self) -> str:
        lines = [
            f"mapped {self.mapped} tensors, dropped {len(self.dropped)} official tensors on purpose, "
            f"{len(self.filled_from_base)} filled from the base checkpoint, "
            f"{len(self.unused_target)} target parameters without official counterpart (unused)"
        ]
        for title, items in (
            ("unsupported components", self.unsupported),
            ("official keys matching no rule", self.unmapped),
            ("target parameters nothing filled", self.missing),
            ("produced keys the model does not have", self.unexpected),
            ("shape mismatches", self.shape_mismatches),
        ):
            if items:
                shown = "\n  ".join(items[:20]) + (f"\n  ... ({len(items) - 20} more)" if len(items) > 20 else "")
                lines.append(f"{title} ({len(items)}):\n  {shown}")
        return "\n".join(lines)

    def raise_for_problems(self) -> None:
        if not self.ok:
            raise ValueError("The official checkpoint does not convert cleanly:\n" + self.summary())


# ---------------------------------------------------------------------------------------------------- loading
def load_original_state_dict(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The model state dict of an official checkpoint: a detectron2 checkpoint (``{"model": ...}``) or a bare state
    dict, with any ``module.`` prefix (DistributedDataParallel) removed. ``allow_pickle`` loads checkpoints that
    hold more than tensors (detectron2 trainer state) with ``weights_only=False``: only for files you trust."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"`checkpoint` {str(path)!r} is not a file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as error:  # pickle.UnpicklingError and friends
        if allow_pickle:
            raise
        raise ValueError(
            f"could not load {str(path)!r} with weights_only=True ({error}); if you trust the file, pass "
            "allow_pickle=True (--allow-pickle)"
        ) from error
    return normalize_state_dict(checkpoint)


def normalize_state_dict(checkpoint) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, dict) and "model" in checkpoint and isinstance(checkpoint["model"], dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ValueError("the checkpoint must be a non-empty state dict or a detectron2 checkpoint with a 'model' key")
    state = OrderedDict()
    for key, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint entry {key!r} is a {type(value).__name__}, expected a tensor")
        state[key[len("module."):] if key.startswith("module.") else key] = value
    return state


# ---------------------------------------------------------------------------------------------------- config
def _count(state: dict, pattern: str) -> int:
    regex = re.compile(pattern)
    indices = {int(m.group(1)) for key in state if (m := regex.match(key))}
    if indices and indices != set(range(max(indices) + 1)):
        raise ValueError(f"non-contiguous layer indices for {pattern!r}: {sorted(indices)}")
    return len(indices)


def _heads(kind: str, width: int, num_heads: dict | None) -> int:
    if num_heads and kind in num_heads:
        return int(num_heads[kind])
    table = RELEASE_NUM_HEADS[kind]
    if isinstance(table, int):
        return table
    if width in table:
        return table[width]
    raise ValueError(
        f"cannot tell the number of attention heads of the {kind} (width {width}) from the checkpoint; "
        f"pass num_heads={{'{kind}': ...}} (--num-heads {kind}=N)"
    )


def _check_supported(state: dict) -> list[str]:
    problems = []
    if any(k.startswith("captioning_head.agg_transformer") for k in state):
        problems.append("caption aggregation module captioning_head.agg_transformer (the 'transformer' aggregation, "
                        "not among the release's accepted methods); not convertible")
    if "backbone.absolute_pos_embed" in state:
        problems.append("Swin absolute position embedding (APE); not convertible")
    return problems


def _is_zero_shot(state: dict) -> bool:
    return "sem_seg_head.predictor.class_embed.zs_weight" in state


def _need(state: dict, key: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"the official checkpoint has no {key!r}")
    return state[key]


PD, PR, CH = "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor.", "captioning_head."


def read_backbone_config(state: dict) -> dict:
    """Swin backbone: embed dim and patch size, depths, heads (from the relative position tables), window, MLP
    ratio, qkv bias, and the stages the pixel decoder reads (res2-res5, or res3-res5 for box-only checkpoints)."""
    patch = _need(state, "backbone.patch_embed.proj.weight")
    embed_dim, patch_size = patch.shape[0], patch.shape[-1]
    num_stages = _count(state, r"backbone\.layers\.(\d+)\.")
    depths = [_count(state, rf"backbone\.layers\.{i}\.blocks\.(\d+)\.") for i in range(num_stages)]
    table = _need(state, "backbone.layers.0.blocks.0.attn.relative_position_bias_table")
    box_only = PD + "mask_features.weight" not in state  # BOX_ONLY: no mask branch, res3-res5 only
    out_indices = [i for i in range(num_stages) if f"backbone.norm{i}.weight" in state]
    wanted = list(range(num_stages - 3, num_stages)) if box_only else list(range(num_stages))
    if out_indices != wanted:
        raise ValueError(
            f"the Swin backbone must output stages {[i + 2 for i in wanted]} (res*) for a "
            f"{'box-only' if box_only else 'mask'} checkpoint, got norms for res{[i + 2 for i in out_indices]}"
        )
    return {
        "model_type": "swin",
        "image_size": 384,
        "patch_size": int(patch_size),
        "embed_dim": int(embed_dim),
        "depths": depths,
        "num_heads": [state[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1]
                      for i in range(num_stages)],
        "window_size": int((math.isqrt(table.shape[0]) + 1) // 2),
        "mlp_ratio": float(_need(state, "backbone.layers.0.blocks.0.mlp.fc1.weight").shape[0] / embed_dim),
        "qkv_bias": "backbone.layers.0.blocks.0.attn.qkv.bias" in state,
        "drop_path_rate": 0.0,
        "out_features": [f"stage{i + 1}" for i in out_indices],
    }


def read_segmenter_config(state: dict, num_heads: dict | None) -> dict:
    """Mask2Former: the backbone, the deformable pixel decoder and the video masked-attention decoder (``DEC_LAYERS``
    = the FFN layers + 1, as ``Mask2FormerConfig.decoder_layers`` counts)."""
    backbone = read_backbone_config(state)
    box_only = PD + "mask_features.weight" not in state
    feature_size = _need(state, PD + "input_proj.0.0.weight").shape[0]
    hidden_dim = _need(state, PR + "query_feat.weight").shape[1]
    out_indices = [int(name[len("stage"):]) - 1 for name in backbone["out_features"]]
    return {
        "backbone_config": backbone,
        "feature_size": int(feature_size),
        "mask_feature_size": int(feature_size if box_only else _need(state, PD + "mask_features.weight").shape[0]),
        "hidden_dim": int(hidden_dim),
        "encoder_layers": _count(state, re.escape(PD) + r"transformer\.encoder\.layers\.(\d+)\."),
        "encoder_feedforward_dim": int(_need(state, PD + "transformer.encoder.layers.0.linear1.weight").shape[0]),
        "decoder_layers": _count(state, re.escape(PR) + r"transformer_ffn_layers\.(\d+)\.") + 1,
        "dim_feedforward": int(_need(state, PR + "transformer_ffn_layers.0.linear1.weight").shape[0]),
        "num_queries": int(_need(state, PR + "query_feat.weight").shape[0]),
        "num_attention_heads": _heads("segmenter", hidden_dim, num_heads),
        "enforce_input_projection": PR + "input_proj.0.weight" in state,
        "pre_norm": False,
        "common_stride": 4,
        "feature_strides": [backbone["patch_size"] * 2**i for i in out_indices],
    }


def read_heads_config(state: dict, num_heads: dict | None, overrides: dict) -> dict:
    """Class head (linear, or OVFormer's ZeroShotClassifier), objectness and box head depths, box-only."""
    heads: dict = {}
    if _is_zero_shot(state):  # CLIP_CLASSIFIER: OVFormer's ZeroShotClassifier
        if overrides.get("clip_vision_config") is None:
            raise ValueError(
                "this checkpoint's classifier (ZeroShotClassifier, CLIP_CLASSIFIER: true) attends to CLIP ViT-B/32 "
                "image embeddings of the frames: pass clip_vision_config and clip_state_dict "
                "(--clip-model openai/clip-vit-base-patch32)"
            )
        zs_weight = state[PR + "class_embed.zs_weight"]  # (E, C + 1), last column: no object (zeros)
        num_labels = int(zs_weight.shape[1]) - 1
        heads.update({
            "use_text_classifier": True,
            "text_embedding_dim": int(zs_weight.shape[0]),
            "text_classifier_projection_layers": sum(
                1 for k in state if re.fullmatch(re.escape(PR) + r"class_embed\.linear\.\d+\.weight", k)
            ),
            "text_classifier_bias": PR + "class_embed.cls_bias" in state,
            "text_classifier_temperature": 1 / 50,  # ZeroShotClassifier's norm_temperature
            "clip_image_context_heads": int((num_heads or {}).get("clip_context", 8)),
        })
    else:
        num_labels = int(_need(state, PR + "class_embed.weight").shape[0]) - 1
    if num_labels < 1:
        raise ValueError("the classifier must have at least one class besides the no-object logit")
    if overrides.get("id2label") is not None and len(overrides["id2label"]) != num_labels:
        raise ValueError(
            f"`id2label` has {len(overrides['id2label'])} names but the checkpoint's classifier has {num_labels} classes"
        )
    objectness_layers = _count(state, re.escape(PR) + r"object_embed\.layers\.(\d+)\.")
    if objectness_layers < 1:
        raise ValueError("the official checkpoint has no object_embed (objectness head)")
    heads.update({
        "num_labels": num_labels,
        "objectness_head_layers": objectness_layers,
        "box_head_layers": _count(state, re.escape(PR) + r"box_embed\.layers\.(\d+)\."),
        "box_only": PD + "mask_features.weight" not in state,
        "box_format": "xywh",  # the release's box_embed: raw normalised (x, y, w, h)
    })
    return heads


def read_vision_config(state: dict, base: dict, num_heads: dict | None) -> dict:
    """EVA ViT-g of the caption head (BLIP-2's vision encoder)."""
    vision = {key[len(CH + "visual_encoder."):]: value for key, value in state.items()
              if key.startswith(CH + "visual_encoder.")}
    if not vision:
        if "vision_model.embeddings.class_embedding" in base:
            raise ValueError(
                "the official checkpoint has no visual_encoder weights: pass the vision config of the base BLIP-2 "
                "checkpoint (vision_config=...) together with base_state_dict"
            )
        raise ValueError("the official checkpoint has no captioning_head.visual_encoder weights")
    hidden = vision["cls_token"].shape[-1]
    patch = vision["patch_embed.proj.weight"].shape[-1]
    return {
        "hidden_size": int(hidden),
        "intermediate_size": int(vision["blocks.0.mlp.fc1.weight"].shape[0]),
        "num_hidden_layers": _count(vision, r"blocks\.(\d+)\."),
        "num_attention_heads": _heads("vision", hidden, num_heads),
        "patch_size": int(patch),
        "image_size": int(math.isqrt(vision["pos_embed"].shape[1] - 1) * patch),
        "qkv_bias": "blocks.0.attn.q_bias" in vision,
        "layer_norm_eps": 1e-6,
    }


def read_qformer_config(state: dict, num_heads: dict | None) -> dict:
    """LAVIS's BERT Q-Former: width, depth, cross-attention frequency, query-token FFN."""
    prefix = CH + "Qformer.bert.encoder.layer."
    hidden = int(_need(state, CH + "query_tokens").shape[-1])
    layers = _count(state, re.escape(prefix) + r"(\d+)\.")
    cross = [i for i in range(layers) if f"{prefix}{i}.crossattention.self.query.weight" in state]
    if not cross or cross[0] != 0:
        raise ValueError("the Q-Former must cross-attend in its first layer")
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": _heads("qformer", hidden, num_heads),
        "intermediate_size": int(_need(state, f"{prefix}0.intermediate_query.dense.weight").shape[0]),
        "cross_attention_frequency": int(cross[1] - cross[0] if len(cross) > 1 else layers),
        "layer_norm_eps": 1e-12,
    }


def read_aggregation_config(state: dict, qformer_width: int, text_width: int) -> dict:
    """The order-aware aggregation of a checkpoint that has its layers (``agg_linear``: ``linear``; with
    ``agg_self_attention``: ``self-attention``): ``t_agg`` and whether the clips are projected into the LM first,
    from ``agg_linear``'s shape; empty for the weight-free aggregations (the preset's, or an override)."""
    linear = state.get(CH + "agg_linear.weight")
    if linear is None:
        if any(k.startswith(CH + "agg_") for k in state):
            raise ValueError("the checkpoint has caption aggregation layers but no agg_linear")
        return {}
    width = int(linear.shape[0])
    if width not in (qformer_width, text_width) or linear.shape[1] % width:
        raise ValueError(f"agg_linear {tuple(linear.shape)} fits neither the Q-Former ({qformer_width}) nor the LM "
                         f"({text_width}) width")
    attention = CH + "agg_self_attention.self_attn.in_proj_weight" in state
    config = {
        "aggregation": "self-attention" if attention else "linear",
        "t_agg": int(linear.shape[1] // width),
        "aggregation_projection_first": width != qformer_width,
    }
    if attention:
        config["aggregation_position_embedding"] = CH + "agg_pos_embedding" in state
        config["aggregation_num_heads"] = 8  # the release's SelfAttentionLayer(nhead=8)
    return config


def read_text_config(state: dict, base: dict, num_heads: dict | None) -> dict:
    """OPT of the caption head (from the checkpoint, else from the base BLIP-2 state dict)."""
    lm = {key[len(CH + "opt_model."):]: value for key, value in state.items() if key.startswith(CH + "opt_model.")}
    if not lm:
        lm = {key[len("language_model."):]: value for key, value in base.items() if key.startswith("language_model.")}
    if not lm:
        raise ValueError("the official checkpoint has no captioning_head.opt_model weights; pass base_state_dict")
    embed = lm["model.decoder.embed_tokens.weight"]
    hidden = int(lm["model.decoder.layers.0.fc1.weight"].shape[1])
    return {
        "model_type": "opt",
        "vocab_size": int(embed.shape[0]),
        "hidden_size": hidden,
        "word_embed_proj_dim": int(embed.shape[1]),
        "num_hidden_layers": _count(lm, r"model\.decoder\.layers\.(\d+)\."),
        "ffn_dim": int(lm["model.decoder.layers.0.fc1.weight"].shape[0]),
        "num_attention_heads": _heads("text", hidden, num_heads),
        "max_position_embeddings": int(lm["model.decoder.embed_positions.weight"].shape[0]) - 2,
        "do_layer_norm_before": "model.decoder.final_layer_norm.weight" in lm,
        "pad_token_id": 1,
        "bos_token_id": 2,
        "eos_token_id": 2,
    }


def config_from_original(
    state: dict[str, torch.Tensor],
    preset: str | None = None,
    num_heads: dict | None = None,
    text_config=None,
    vision_config=None,
    base_state_dict: dict[str, torch.Tensor] | None = None,
    **overrides,
) -> CaptionFormerConfig:
    """The :class:`CaptionFormerConfig` of an official state dict, its sizes read from the parameter shapes, one
    reader per component (``read_segmenter_config``, ``read_heads_config``, ``read_vision_config``,
    ``read_qformer_config``, ``read_text_config``).

    ``preset`` (``vln``, ``vidstg``, ``vidstg_no_tempagg``, ``bensmot``, ``lvviscap``) sets the release's video level with the values of
    its evaluation config (checked against the weights; default: the preset whose checkpoints look like this one);
    ``num_heads`` gives head counts the shapes cannot tell (``segmenter``, ``vision``, ``qformer``, ``text``);
    ``text_config`` / ``vision_config`` replace the inferred LM / ViT configs (e.g.
    ``AutoConfig.from_pretrained("facebook/opt-2.7b")``); ``base_state_dict`` (transformers BLIP-2 names) supplies
    the ViT / LM shapes when the official checkpoint lacks them; other keyword arguments override config fields."""
    if preset is not None and preset not in RELEASE_PRESETS:
        raise ValueError(f"`preset` must be one of {sorted(RELEASE_PRESETS)}, got {preset!r}")
    if preset is None:
        preset = preset_for(state)
        logger.info("no preset given: the checkpoint looks like a %r one, using that preset", preset)
    check_preset(state, preset)
    problems = _check_supported(state)
    if problems:
        raise ValueError("unsupported official checkpoint:\n  " + "\n  ".join(problems))
    base = base_state_dict or {}
    segmenter_config = read_segmenter_config(state, num_heads)
    heads = read_heads_config(state, num_heads, overrides)
    if vision_config is None:
        vision_config = read_vision_config(state, base, num_heads)
    elif hasattr(vision_config, "to_dict"):
        vision_config = vision_config.to_dict()
    qformer_config = read_qformer_config(state, num_heads)
    if text_config is None:
        text_config = read_text_config(state, base, num_heads)
    elif hasattr(text_config, "to_dict"):
        text_config = text_config.to_dict()

    mean, std = state.get("pixel_mean"), state.get("pixel_std")
    image_mean = [float(v) / 255.0 for v in mean.flatten()] if mean is not None else list(IMAGENET_DEFAULT_MEAN)
    image_std = [float(v) / 255.0 for v in std.flatten()] if std is not None else list(IMAGENET_DEFAULT_STD)
    kwargs = {
        "segmenter_config": segmenter_config,
        "vision_config": vision_config,
        "qformer_config": qformer_config,
        "text_config": text_config,
        **heads,
        "num_query_tokens": int(_need(state, CH + "query_tokens").shape[1]),
        "caption_mask_convention": "release",
        "caption_mask_threshold": 0.5,
        "caption_frame": "middle",
        "vision_post_layernorm_eps": 1e-5,  # LAVIS's ln_vision is a default nn.LayerNorm (EVA's blocks: 1e-6)
        "segmenter_image_mean": image_mean,
        "segmenter_image_std": image_std,
        # the release feeds the segmenter's (ImageNet-normalised) input to EVA as is
        "vision_image_mean": image_mean,
        "vision_image_std": image_std,
        "score_threshold": 0.5,
        # the release prompts OPT with its (empty) text prompt tokenised with BOS: [queries, </s>]
        "caption_prompt_token_id": int(2 if text_config.get("bos_token_id") is None else text_config["bos_token_id"]),
    }
    kwargs.update(RELEASE_PRESETS[preset])
    aggregation = read_aggregation_config(state, qformer_config["hidden_size"], text_config["hidden_size"])
    if aggregation:
        logger.info("the checkpoint has %s aggregation layers (T_agg %d): they replace the preset's %r aggregation",
                    aggregation["aggregation"], aggregation["t_agg"], kwargs["aggregation"])
    kwargs.update(aggregation)
    kwargs.update(overrides)
    return CaptionFormerConfig(**kwargs)


# ---------------------------------------------------------------------------------------------------- mapping
# One executed table: every official key is matched (``re.fullmatch``) against these rules in order; the first
# rule that matches places it (``target``, with the pattern's groups: ``\1``, ``\2``...; ``{i+1}``-style fields via
# the transform) or drops it (``target=None``, with the reason as note). The README's table is rendered from this
# list (:func:`mapping_table_markdown`), so the mapping and its documentation cannot drift.
SEG = "model.segmenter."
PIX = SEG + "pixel_level_module."
DEC = SEG + "transformer_module."
CAP = "model.caption_head."


@dataclass(frozen=True)
class Rule:
    pattern: str
    target: str | None  # None: dropped on purpose (note = the reason)
    transform: str = ""  # how the tensor changes on the way (see _apply)
    note: str = ""


RULES: list[Rule] = [
    # dropped on purpose
    Rule(r"criterion\.empty_weight", None, note="loss buffer (class weights of the set criterion)"),
    Rule(r"pixel_(mean|std)", None, note="read into segmenter_image_mean / segmenter_image_std"),
    Rule(r"backbone\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index", None, "check_index",
         "buffer recomputed from the window size (checked equal before it is dropped)"),
    Rule(r"captioning_head\.Qformer\.bert\.embeddings\.(word_embeddings\.weight|position_embeddings\.weight|position_ids)",
         None, note="Q-Former text embeddings: captioning feeds query embeddings only"),
    Rule(r"captioning_head\.Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\..*", None,
         note="Q-Former text-token feed-forward: the 33 query tokens use intermediate_query / output_query"),
    Rule(r"captioning_head\.Qformer\.cls\..*", None, note="Q-Former LM head (set to None by the release)"),
    # Swin backbone
    Rule(r"backbone\.patch_embed\.proj\.(weight|bias)", PIX + r"encoder.swin.embeddings.patch_embeddings.projection.\1"),
    Rule(r"backbone\.patch_embed\.norm\.(weight|bias)", PIX + r"encoder.swin.embeddings.norm.\1"),
    Rule(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.norm1\.(weight|bias)",
         PIX + r"encoder.swin.encoder.layers.\1.blocks.\2.layernorm_before.\3"),
    Rule(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.norm2\.(weight|bias)",
         PIX + r"encoder.swin.encoder.layers.\1.blocks.\2.layernorm_after.\3"),
    Rule(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)",
         PIX + r"encoder.swin.encoder.layers.\1.blocks.\2.attention.{q,k,v}_proj.\3", "split_qkv", "split in 3"),
    Rule(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.proj\.(weight|bias)",
         PIX + r"encoder.swin.encoder.layers.\1.blocks.\2.attention.o_proj.\3"),
    Rule(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table",
         PIX + r"encoder.swin.encoder.layers.\1.blocks.\2.attention.relative_position_bias.relative_position_bias_table"),
    Rule(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)",
         PIX + r"encoder.swin.encoder.layers.\1.blocks.\2.mlp.\3.\4"),
    Rule(r"backbone\.layers\.(\d+)\.downsample\.(reduction|norm)\.(weight|bias)",
         PIX + r"encoder.swin.encoder.layers.\1.downsample.\2.\3"),
    Rule(r"backbone\.norm(\d+)\.(weight|bias)", PIX + r"encoder.hidden_states_norms.stage{\1+1}.\2", "",
         "stage index + 1"),
    # MSDeformAttn pixel decoder
    Rule(r"sem_seg_head\.pixel_decoder\.input_proj\.(\d+)\.(\d+)\.(weight|bias)",
         PIX + r"decoder.input_projections.\1.\2.\3"),
    Rule(r"sem_seg_head\.pixel_decoder\.transformer\.level_embed", PIX + "decoder.level_embed"),
    Rule(r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.self_attn\."
         r"(sampling_offsets|attention_weights|value_proj|output_proj)\.(weight|bias)",
         PIX + r"decoder.encoder.layers.\1.self_attn.\2.\3"),
    Rule(r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.norm1\.(weight|bias)",
         PIX + r"decoder.encoder.layers.\1.self_attn_layer_norm.\2"),
    Rule(r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.linear1\.(weight|bias)",
         PIX + r"decoder.encoder.layers.\1.fc1.\2"),
    Rule(r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.linear2\.(weight|bias)",
         PIX + r"decoder.encoder.layers.\1.fc2.\2"),
    Rule(r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.norm2\.(weight|bias)",
         PIX + r"decoder.encoder.layers.\1.final_layer_norm.\2"),
    Rule(r"sem_seg_head\.pixel_decoder\.mask_features\.(weight|bias)", PIX + r"decoder.mask_projection.\1"),
    Rule(r"sem_seg_head\.pixel_decoder\.(adapter_1|layer_1)\.weight", PIX + r"decoder.\1.0.weight"),
    Rule(r"sem_seg_head\.pixel_decoder\.(adapter_1|layer_1)\.norm\.(weight|bias)", PIX + r"decoder.\1.1.\2"),
    # video masked-attention decoder
    Rule(r"sem_seg_head\.predictor\.query_feat\.weight", DEC + "queries_features.weight"),
    Rule(r"sem_seg_head\.predictor\.query_embed\.weight", DEC + "queries_embedder.weight"),
    Rule(r"sem_seg_head\.predictor\.level_embed\.weight", DEC + "level_embed.weight"),
    Rule(r"sem_seg_head\.predictor\.input_proj\.(\d+)\.(weight|bias)", DEC + r"input_projections.\1.\2"),
    Rule(r"sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.self_attn\.in_proj_(weight|bias)",
         DEC + r"decoder.layers.\1.self_attn.{q,k,v}_proj.\2", "split_qkv", "split in 3"),
    Rule(r"sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)",
         DEC + r"decoder.layers.\1.self_attn.out_proj.\2"),
    Rule(r"sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.norm\.(weight|bias)",
         DEC + r"decoder.layers.\1.self_attn_layer_norm.\2"),
    Rule(r"sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.multihead_attn\.(in_proj_weight|in_proj_bias)",
         DEC + r"decoder.layers.\1.cross_attn.\2"),
    Rule(r"sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.multihead_attn\.out_proj\.(weight|bias)",
         DEC + r"decoder.layers.\1.cross_attn.out_proj.\2"),
    Rule(r"sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.norm\.(weight|bias)",
         DEC + r"decoder.layers.\1.cross_attn_layer_norm.\2"),
    Rule(r"sem_seg_head\.predictor\.transformer_ffn_layers\.(\d+)\.linear1\.(weight|bias)", DEC + r"decoder.layers.\1.fc1.\2"),
    Rule(r"sem_seg_head\.predictor\.transformer_ffn_layers\.(\d+)\.linear2\.(weight|bias)", DEC + r"decoder.layers.\1.fc2.\2"),
    Rule(r"sem_seg_head\.predictor\.transformer_ffn_layers\.(\d+)\.norm\.(weight|bias)",
         DEC + r"decoder.layers.\1.final_layer_norm.\2"),
    Rule(r"sem_seg_head\.predictor\.decoder_norm\.(weight|bias)", DEC + r"decoder.layernorm.\1"),
    Rule(r"sem_seg_head\.predictor\.mask_embed\.layers\.(\d+)\.(weight|bias)",
         DEC + r"decoder.mask_predictor.mask_embedder.\1.0.\2"),
    # heads
    Rule(r"sem_seg_head\.predictor\.class_embed\.(weight|bias)", SEG + r"class_head.classifier.\1", "drop_no_object",
         "no-object row dropped"),
    Rule(r"sem_seg_head\.predictor\.class_embed\.linear\.(\d+)\.(weight|bias)", SEG + r"class_head.projection{\1/2}.\2",
         "", "ZeroShotClassifier: Sequential(Linear, ReLU, Linear), Linear k at index 2k"),
    Rule(r"sem_seg_head\.predictor\.class_embed\.cross_attention\.multihead_attn\.(in_proj_weight|in_proj_bias)",
         SEG + r"class_head.image_context_attention.\1"),
    Rule(r"sem_seg_head\.predictor\.class_embed\.cross_attention\.multihead_attn\.out_proj\.(weight|bias)",
         SEG + r"class_head.image_context_attention.out_proj.\1"),
    Rule(r"sem_seg_head\.predictor\.class_embed\.cross_attention\.norm\.(weight|bias)",
         SEG + r"class_head.image_context_norm.\1"),
    Rule(r"sem_seg_head\.predictor\.class_embed\.zs_weight", SEG + "class_head.class_embeddings", "zs_weight",
         "transposed, no-object column dropped"),
    Rule(r"sem_seg_head\.predictor\.class_embed\.cls_bias", SEG + "class_head.bias"),
    Rule(r"sem_seg_head\.predictor\.object_embed\.layers\.(\d+)\.(weight|bias)", SEG + r"objectness_head{\1}.\2",
         "objectness", "last layer: logit 0 - logit 1"),
    Rule(r"sem_seg_head\.predictor\.box_embed\.layers\.(\d+)\.(weight|bias)", SEG + r"box_head.\1.0.\2", "tile_box",
         "last layer tiled clip_length times"),
    # caption head: EVA ViT-g, ln_vision, Q-Former, projections, OPT
    Rule(r"captioning_head\.visual_encoder\.cls_token", CAP + "vision_model.embeddings.class_embedding"),
    Rule(r"captioning_head\.visual_encoder\.pos_embed", CAP + "vision_model.embeddings.position_embedding"),
    Rule(r"captioning_head\.visual_encoder\.patch_embed\.proj\.(weight|bias)",
         CAP + r"vision_model.embeddings.patch_embedding.\1"),
    Rule(r"captioning_head\.visual_encoder\.blocks\.(\d+)\.norm(1|2)\.(weight|bias)",
         CAP + r"vision_model.encoder.layers.\1.layer_norm\2.\3"),
    Rule(r"captioning_head\.visual_encoder\.blocks\.(\d+)\.attn\.qkv\.weight",
         CAP + r"vision_model.encoder.layers.\1.self_attn.qkv.weight"),
    Rule(r"captioning_head\.visual_encoder\.blocks\.(\d+)\.attn\.(q_bias|v_bias)",
         CAP + r"vision_model.encoder.layers.\1.self_attn.qkv.bias", "qkv_bias", "bias = [q_bias, 0, v_bias]"),
    Rule(r"captioning_head\.visual_encoder\.blocks\.(\d+)\.attn\.proj\.(weight|bias)",
         CAP + r"vision_model.encoder.layers.\1.self_attn.projection.\2"),
    Rule(r"captioning_head\.visual_encoder\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)",
         CAP + r"vision_model.encoder.layers.\1.mlp.\2.\3"),
    Rule(r"captioning_head\.ln_vision\.(weight|bias)", CAP + r"vision_model.post_layernorm.\1"),
    Rule(r"captioning_head\.Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)", CAP + r"qformer.layernorm.\1"),
    Rule(r"captioning_head\.Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)",
         CAP + r"qformer.encoder.layer.\1.\2.attention.\3.\4"),
    Rule(r"captioning_head\.Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)",
         CAP + r"qformer.encoder.layer.\1.\2.output.\3.\4"),
    Rule(r"captioning_head\.Qformer\.bert\.encoder\.layer\.(\d+)\.(intermediate_query|output_query)\.(dense|LayerNorm)\.(weight|bias)",
         CAP + r"qformer.encoder.layer.\1.\2.\3.\4"),
    Rule(r"captioning_head\.query_tokens", CAP + "query_tokens"),
    Rule(r"captioning_head\.obj_linear_proj\.(weight|bias)", CAP + r"object_query_projection.\1"),
    Rule(r"captioning_head\.opt_proj\.(weight|bias)", CAP + r"language_projection.\1"),
    Rule(r"captioning_head\.agg_linear\.(weight|bias)", CAP + r"aggregation.linear.\1"),
    Rule(r"captioning_head\.agg_self_attention\.self_attn\.(in_proj_weight|in_proj_bias)",
         CAP + r"aggregation.self_attention.\1"),
    Rule(r"captioning_head\.agg_self_attention\.self_attn\.out_proj\.(weight|bias)",
         CAP + r"aggregation.self_attention.out_proj.\1"),
    Rule(r"captioning_head\.agg_self_attention\.norm\.(weight|bias)", CAP + r"aggregation.norm.\1"),
    Rule(r"captioning_head\.agg_pos_embedding", CAP + "aggregation.position_embedding"),
    Rule(r"captioning_head\.opt_model\.(.+)", r"language_model.\1", "", "transformers OPT names"),
]


def _target(rule: Rule, match: re.Match, config: CaptionFormerConfig) -> str:
    """The target name of a matched key: the pattern's groups filled in, then the computed fields: ``{\\N+1}`` (a
    Swin stage index plus one), ``{\\N/2}`` (the ZeroShotClassifier's Linear at index 2k: ``.k.0``, nothing for a
    1-layer projection) and ``{\\N}`` (an MLP objectness head's layer ``.N.0``, nothing for a 1-layer head)."""
    target = match.expand(rule.target.replace("{\\", "{g\\").replace("{q,k,v}", "QKV"))

    def field(found: re.Match) -> str:
        value, op = int(found.group(1)), found.group(2)
        if op == "+1":
            return str(value + 1)
        layers = config.text_classifier_projection_layers if op == "/2" else config.objectness_head_layers
        return "" if layers == 1 else f".{value // 2 if op == '/2' else value}.0"

    return re.sub(r"\{g(\d+)(\+1|/2)?\}", field, target)


def _apply(rule: Rule, key: str, value: torch.Tensor, target: str, config: CaptionFormerConfig, m: _Mapper) -> None:
    """Place ``value`` at ``target`` through the rule's transform."""
    if rule.transform == "split_qkv":
        for name, chunk in zip("qkv", value.chunk(3, dim=0)):
            m.put(target.replace("QKV", name), chunk.clone())
    elif rule.transform == "drop_no_object":  # inference reads sigmoid(logits[:, :-1]) only
        m.put(target, value[:-1].clone())
    elif rule.transform == "zs_weight":  # (E, C + 1) -> (C, E), the zero no-object column dropped
        m.put(target, value[:, :-1].t().contiguous())
    elif rule.transform == "objectness":  # softmax([a, b])[0] == sigmoid(a - b)
        layer = int(re.search(r"layers\.(\d+)\.", key).group(1))
        if layer == config.objectness_head_layers - 1:
            if value.shape[0] != 2:
                m.report.shape_mismatches.append(f"{key}: expected 2 logits (object, no object), got {value.shape[0]}")
                return
            value = (value[0] - value[1])[None]
        m.put(target, value.clone())
    elif rule.transform == "tile_box":  # one box per frame from the same query
        layer = int(re.search(r"layers\.(\d+)\.", key).group(1))
        if layer == config.box_head_layers - 1:
            value = value.repeat(config.clip_length, 1) if value.ndim == 2 else value.repeat(config.clip_length)
        m.put(target, value.clone())
    elif rule.transform == "qkv_bias":  # EVA has q and v biases and no k bias: joined once both are read
        m.pending.setdefault(target, {})[key.rsplit(".", 1)[1]] = value
    else:
        m.put(target, value)


class _Mapper:
    def __init__(self, source: dict[str, torch.Tensor], report: ConversionReport):
        self.source = dict(source)
        self.target: dict[str, torch.Tensor] = OrderedDict()
        self.pending: dict[str, dict] = {}
        self.report = report

    def put(self, key: str, value: torch.Tensor) -> None:
        self.target[key] = value
        self.report.mapped += 1

    def run(self, config: CaptionFormerConfig) -> None:
        compiled = [(re.compile(rule.pattern), rule) for rule in RULES]
        for key in list(self.source):
            value = self.source[key]
            for regex, rule in compiled:
                match = regex.fullmatch(key)
                if match is None:
                    continue
                self.source.pop(key)
                if rule.target is None:
                    if rule.transform == "check_index":
                        _check_relative_position_index(key, value)
                    self.report.dropped[key] = rule.note
                else:
                    _apply(rule, key, value, _target(rule, match, config), config, self)
                break
        for target, parts in self.pending.items():
            if "q_bias" in parts and "v_bias" in parts:
                q_bias, v_bias = parts["q_bias"], parts["v_bias"]
                self.put(target, torch.cat([q_bias, torch.zeros_like(q_bias), v_bias]))


def mapping_table_markdown() -> str:
    """The key-mapping table of the README, rendered from :data:`RULES` (the table the conversion executes): official
    key pattern -> target, or dropped with its reason."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| official key (regex) | captionformer_hf key | note |", "|---|---|---|"]
    for rule in RULES:
        target = "dropped" if rule.target is None else f"`{cell(rule.target)}`"
        lines.append(f"| `{cell(rule.pattern)}` | {target} | {cell(rule.note)} |")
    return "\n".join(lines)


def _fill_from_base(target: dict, expected: dict, base: dict, report: ConversionReport) -> None:
    """Fill the caption head's ViT / LM from a transformers BLIP-2 state dict (``vision_model.*``,
    ``language_model.*``) when the official checkpoint lacks them (trained from saved ViT features)."""
    prefixes = {"model.caption_head.vision_model.": "vision_model.", "language_model.": "language_model."}
    for key in expected:
        if key in target:
            continue
        for ours, theirs in prefixes.items():
            if key.startswith(ours) and theirs + key[len(ours):] in base:
                value = base[theirs + key[len(ours):]]
                if key.endswith("embeddings.position_embedding") and value.shape != expected[key].shape:
                    value = _resize_position_embedding(value, expected[key].shape[1] - 1)
                target[key] = value
                report.filled_from_base.append(key)


def _resize_position_embedding(value: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Bicubic resize of a ``(1, 1 + P, D)`` ViT position embedding to ``num_patches`` patches (EVA's
    ``interpolate_pos_embed``, as the release does when it builds its 364-pixel ViT from the 224-pixel one)."""
    cls_token, patches = value[:, :1], value[:, 1:]
    old, new = math.isqrt(patches.shape[1]), math.isqrt(num_patches)
    grid = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    grid = torch.nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([cls_token, grid.permute(0, 2, 3, 1).reshape(1, new * new, -1).to(value.dtype)], dim=1)


def convert_state_dict(
    state: dict[str, torch.Tensor],
    config: CaptionFormerConfig,
    expected: dict[str, torch.Tensor],
    base_state_dict: dict[str, torch.Tensor] | None = None,
    clip_state_dict: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Map an official state dict onto the keys of ``expected`` (a converted model's ``state_dict()``)."""
    report = ConversionReport()
    report.unsupported.extend(_check_supported(state))
    if report.unsupported:
        return {}, report
    m = _Mapper(state, report)
    m.run(config)
    target = m.target
    if "language_model.lm_head.weight" in expected and "language_model.lm_head.weight" not in target:
        embed = target.get("language_model.model.decoder.embed_tokens.weight")
        if embed is not None and config.tie_word_embeddings:
            target["language_model.lm_head.weight"] = embed
    if base_state_dict:
        _fill_from_base(target, expected, base_state_dict, report)
    if clip_state_dict:  # CLIPVisionModelWithProjection weights for the classifier's image context
        for key, value in clip_state_dict.items():
            ours = "model.segmenter.clip_image_encoder." + key
            if ours in expected and ours not in target:
                target[ours] = value
                report.filled_from_base.append(ours)
    report.unmapped.extend(sorted(m.source))
    for key, value in expected.items():
        if key in target:
            if tuple(target[key].shape) != tuple(value.shape):
                report.shape_mismatches.append(
                    f"{key}: converted {tuple(target[key].shape)}, model {tuple(value.shape)}"
                )
            continue
        unused = {**UNUSED_TARGET_KEYS, **(UNUSED_BOX_ONLY_TARGET_KEYS if config.box_only else {})}
        reason = next((r for p, r in unused.items() if re.fullmatch(p, key)), None)
        if reason is not None:
            report.unused_target[key] = reason
        else:
            report.missing.append(key)
    report.unexpected.extend(sorted(key for key in target if key not in expected))
    return target, report


def _check_relative_position_index(key: str, value: torch.Tensor) -> None:
    window = math.isqrt(value.shape[0]) if value.ndim == 2 else math.isqrt(math.isqrt(value.numel()))
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    index = relative[..., 0] * (2 * window - 1) + relative[..., 1]
    if not torch.equal(index.flatten(), value.flatten().to(index.dtype)):
        raise ValueError(f"{key} is not the standard Swin relative position index of a {window}x{window} window")


def convert_original_checkpoint(
    state: dict[str, torch.Tensor],
    preset: str | None = None,
    config: CaptionFormerConfig | None = None,
    base_state_dict: dict[str, torch.Tensor] | None = None,
    clip_state_dict: dict[str, torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
    **config_kwargs,
):
    """Build a :class:`CaptionFormerForDenseVideoObjectCaptioning` holding the official weights.

    ``base_state_dict``: a transformers BLIP-2 state dict for ViT / LM weights the checkpoint lacks;
    ``clip_state_dict`` (with ``clip_vision_config=...``): a ``CLIPVisionModelWithProjection`` state dict (CLIP
    ViT-B/32 in the release) for checkpoints with the ``ZeroShotClassifier``.

    Returns ``(model, report)``; raises ``ValueError`` (with the report) unless every official tensor was mapped or
    dropped on purpose and every parameter of the model was filled."""
    from .modeling.modeling_captionformer import CaptionFormerForDenseVideoObjectCaptioning

    state = normalize_state_dict(state)
    if config is None:
        config = config_from_original(state, preset=preset, base_state_dict=base_state_dict, **config_kwargs)
    elif preset is not None or config_kwargs:
        raise ValueError("pass either `config` or `preset` / config keyword arguments, not both")
    model = CaptionFormerForDenseVideoObjectCaptioning(config)
    expected = model.state_dict()
    converted, report = convert_state_dict(state, config, expected, base_state_dict, clip_state_dict)
    report.raise_for_problems()
    for key in report.unused_target:
        converted[key] = expected[key]
    model.load_state_dict(converted, strict=True)
    if dtype is not None:
        model = model.to(dtype)
    model.generation_config.num_beams = 5
    model.generation_config.max_new_tokens = config.max_caption_length
    # the release's transformers (4.28) normalises a finished beam by its length without the end token
    model.generation_config.beam_length_normalisation = "release"
    model.eval()
    logger.info(report.summary())
    return model, report


def release_video_processor(config: CaptionFormerConfig, shortest_edge: int = 480):
    """The processor settings of the release's evaluation configs: shortest edge 480 (detectron2's
    ``ResizeShortestEdge``, longest edge at most 1333: its rounded size and PIL bilinear resize of uint8 frames),
    ImageNet normalisation, padding to a multiple of 32."""
    from .processing.video_processing_captionformer import CaptionFormerVideoProcessor

    return CaptionFormerVideoProcessor(
        size={"shortest_edge": shortest_edge, "longest_edge": 1333},
        resize_convention="detectron2",
        size_divisor=32,
        image_mean=list(config.segmenter_image_mean),
        image_std=list(config.segmenter_image_std),
        clip_length=config.clip_length,
    )


CONVERTED_CARD = (
    "An official CaptionFormer checkpoint (gabfstr/CaptionFormer) converted to transformers with "
    "`captionformer convert`; its config runs the released code's video level (`video_inference_mode=\"release\"`)."
)
RELEASE_BASE_MODELS = ["Salesforce/blip2-opt-2.7b"]  # the caption head's EVA ViT-g, Q-Former and OPT-2.7B
# the benchmark each preset's checkpoint is evaluated on, named in the card's description (they have no Hub dataset
# id, so the card's `datasets` metadata stays empty)
PRESET_BENCHMARKS = {"vidstg": "VidSTG", "vidstg_no_tempagg": "VidSTG (no temporal aggregation)", "vln": "VLN",
                     "bensmot": "BenSMOT", "lvviscap": "LV-VISCap"}


def write_converted(model, output_dir: str | Path, tokenizer=None, push_to_hub: str | None = None,
                    shortest_edge: int = 480, preset: str | None = None) -> Path:
    """Save the converted model (safetensors + config + generation config) and, with a ``tokenizer``, the
    processor, the code and a model card (a folder that works without this package) into ``output_dir`` (absent or
    empty; written atomically); optionally push it to the Hub repository ``push_to_hub``."""
    from .processing.processing_captionformer import CaptionFormerProcessor

    output_dir = Path(output_dir)
    processor = None
    if tokenizer is not None:
        # the release trains captions ending with a newline (OPT's "\n" token) and generates as BLIP-2 does: it stops
        # at the newline only (an EOS token is generated past, and dropped from the text as a special token) and
        # passes min_length=1, which in its transformers (4.28: generated ids only, with an inputs_embeds prompt)
        # forbids an empty caption: min_new_tokens=1 here
        newline = tokenizer("\n", add_special_tokens=False).input_ids
        end_token = None
        if len(newline) == 1:
            model.generation_config.eos_token_id = [newline[0]]
            model.generation_config.min_new_tokens = 1
            end_token = tokenizer.convert_ids_to_tokens(newline[0])
        processor = CaptionFormerProcessor(
            video_processor=release_video_processor(model.config, shortest_edge),
            tokenizer=tokenizer,
            caption_end_token=end_token,
            max_caption_length=model.config.max_caption_length,
        )
    else:
        logger.warning("no tokenizer given: %s has the model only (no processor)", output_dir)
    with atomic_directory(output_dir, argument="output") as tmp:
        if processor is not None:  # weights, config, processor, the code and a model card: usable without this package
            from .hub import save_for_hub

            save_for_hub(model, processor, tmp, title=f"CaptionFormer ({preset or 'official'} checkpoint, converted)",
                         description=CONVERTED_CARD + (f" Its preset is the release's {PRESET_BENCHMARKS[preset]} "
                                                       "evaluation config." if preset in PRESET_BENCHMARKS else ""),
                         base_model=RELEASE_BASE_MODELS, tags=["converted"] + ([preset] if preset else []),
                         model_id=push_to_hub or os.fspath(output_dir))
        else:
            model.save_pretrained(tmp)
    if push_to_hub:
        if processor is None:
            raise ValueError("`push_to_hub` needs the processor: pass the tokenizer (--tokenizer)")
        from .hub import push_folder

        push_folder(output_dir, push_to_hub)
    return output_dir


def read_labels(path: str | Path) -> dict[int, str]:
    """Class names of the dataset's vocabulary (the .pth has none): a JSON list of names, a ``{"id": name}`` dict,
    or a COCO-style list of categories (``{"id", "name"}``, ids in increasing order as the release's
    ``*_categories.py``). Returns ``id2label`` with ids ``0..C-1`` in the classifier's order."""
    import json

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"`labels` {str(path)!r} is not a file")
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        try:
            items = sorted((int(k), str(v)) for k, v in data.items())
        except ValueError as error:
            raise ValueError(f"`labels`: dict keys must be integer ids, got {list(data)[:3]}") from error
        names = [name for _, name in items]
    elif isinstance(data, list) and all(isinstance(x, str) for x in data):
        names = data
    elif isinstance(data, list) and all(isinstance(x, dict) and "name" in x for x in data):
        names = [x["name"] for x in sorted(data, key=lambda x: x.get("id", 0))]
    else:
        raise ValueError("`labels` must hold a list of names, an {id: name} dict or a list of {'id', 'name'} categories")
    return dict(enumerate(names))


def _parse_num_heads(values: list[str] | None) -> dict[str, int]:
    heads = {}
    for value in values or []:
        name, _, number = value.partition("=")
        if name not in ("segmenter", "vision", "qformer", "text", "clip_context") or not number.isdigit():
            raise ValueError(
                f"--num-heads takes NAME=N with NAME in segmenter/vision/qformer/text/clip_context, got {value!r}"
            )
        heads[name] = int(number)
    return heads


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="official .pth (detectron2 checkpoint or state dict)")
    parser.add_argument("--output", required=True, help="output folder (safetensors, config, processor)")
    parser.add_argument("--preset", choices=sorted(RELEASE_PRESETS),
                        help="the benchmark's evaluation settings (the release's video level); checked against the "
                        "weights; default: the preset whose checkpoints look like this one")
    parser.add_argument("--tokenizer", help="tokenizer of the LM (Hub id or folder), e.g. facebook/opt-2.7b")
    parser.add_argument("--text-config", help="LM config (Hub id or folder) instead of the inferred one")
    parser.add_argument("--base-blip2", help="transformers BLIP-2 checkpoint (Hub id or folder) that supplies the "
                        "ViT / LM weights the official checkpoint lacks, e.g. Salesforce/blip2-opt-2.7b")
    parser.add_argument("--vision-image-size", type=int, default=364,
                        help="EVA input size when its weights come from --base-blip2 (release: 364)")
    parser.add_argument("--clip-model", help="CLIP vision model (Hub id or folder) for checkpoints with the "
                        "ZeroShotClassifier (CLIP_CLASSIFIER), e.g. openai/clip-vit-base-patch32")
    parser.add_argument("--labels", help="JSON file with the class names of the dataset's vocabulary (a list, an "
                        "{id: name} dict or COCO-style categories)")
    parser.add_argument("--num-heads", nargs="*", metavar="NAME=N", help="head counts the shapes cannot tell")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--shortest-edge", type=int, default=480, help="test size of the release (480)")
    parser.add_argument("--allow-pickle", action="store_true", help="load with weights_only=False (trusted files)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also push to this Hub repository")
    return parser


def main(args: argparse.Namespace | None = None) -> int:
    if args is None:
        from .utils import configure_logging

        configure_logging(verbose=True)
        args = build_parser().parse_args()
    from transformers import AutoConfig, AutoTokenizer

    check_new_directory(args.output, argument="output")  # before minutes of loading and converting
    state = load_original_state_dict(args.checkpoint, allow_pickle=args.allow_pickle)
    kwargs = {"num_heads": _parse_num_heads(args.num_heads)}
    if args.labels:
        kwargs["id2label"] = read_labels(args.labels)
    if args.text_config:
        kwargs["text_config"] = AutoConfig.from_pretrained(args.text_config)
    base = None
    if args.base_blip2:
        from transformers import Blip2ForConditionalGeneration

        blip2 = Blip2ForConditionalGeneration.from_pretrained(args.base_blip2)
        base = blip2.state_dict()
        if not any(k.startswith("captioning_head.visual_encoder.") for k in state):
            # the release runs EVA at CAPTIONING_HEAD.IMG_SIZE (364): position embedding resized from the base's
            vision_config = blip2.config.vision_config
            vision_config.image_size = args.vision_image_size
            kwargs["vision_config"] = vision_config
        kwargs.setdefault("text_config", blip2.config.text_config)
    clip_state = None
    if args.clip_model:
        from transformers import CLIPVisionModelWithProjection

        clip = CLIPVisionModelWithProjection.from_pretrained(args.clip_model)
        kwargs["clip_vision_config"] = clip.config
        clip_state = clip.state_dict()
    model, report = convert_original_checkpoint(
        state, preset=args.preset, base_state_dict=base, clip_state_dict=clip_state,
        dtype=getattr(torch, args.dtype), **kwargs
    )
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else None
    write_converted(model, args.output, tokenizer=tokenizer, push_to_hub=args.push_to_hub,
                    shortest_edge=args.shortest_edge, preset=args.preset or preset_for(state))
    print(report.summary())
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
