"""Convert an official CaptionFormer checkpoint (gabfstr/CaptionFormer, detectron2 ``.pth``) to this package.

Usage (also ``captionformer convert``)::

    python -m captionformer_hf.convert_captionformer_original_to_hf \\
        --checkpoint models/ckpt_vln.pth --preset vln --tokenizer facebook/opt-2.7b --output converted/vln

Every official parameter is mapped by name (the table is in the README and in ``KEY_MAPPING`` below); keys that
match no rule, rules that find no key and parameters of the converted model that nothing filled are collected in a
:class:`ConversionReport` and the conversion fails on any of them. A few official tensors are dropped on purpose
(``DROPPED_KEYS``: loss buffers, buffers recomputed from the config, the Q-Former's text-only branch), each for a
stated reason, and a few parameters of this package have no official counterpart but do not change any output
(``UNUSED_TARGET_KEYS``).

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

Not convertible (the conversion stops with a message naming the component): the experimental aggregation
modules (``agg_linear``, ``agg_self_attention``, ``agg_transformer``) and Swin's absolute position embedding.
"""

from __future__ import annotations

import argparse
import logging
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

# Tracking / aggregation settings of the released evaluation configs (configs/eval/*.yaml of gabfstr/CaptionFormer);
# they are not stored in the .pth.
RELEASE_PRESETS: dict[str, dict] = {
    "vln": {
        "clip_length": 1,
        "k_match": 5,
        "t_match": 20,
        "hysteresis_low": 0.3,
        "hysteresis_high": 0.9,
        "hysteresis_min_length": 5,
        "t_agg": 8,
        "max_caption_length": 30,
    },
    "vidstg": {
        "clip_length": 1,
        "k_match": 7,
        "t_match": 100,
        "hysteresis_low": 0.4,
        "hysteresis_high": 0.85,
        "hysteresis_min_length": 3,
        "t_agg": 32,
        "max_caption_length": 30,
    },
    "bensmot": {
        "clip_length": 1,
        "k_match": 7,
        "t_match": 40,
        "hysteresis_low": 0.3,
        "hysteresis_high": 0.8,
        "hysteresis_min_length": 5,
        "t_agg": 8,
        "max_caption_length": 200,
    },
}

# Head counts are not recoverable from parameter shapes: the release's values, used when the width matches.
RELEASE_NUM_HEADS = {"segmenter": 8, "vision": {1408: 16}, "qformer": {768: 12}, "text": {2560: 32, 2048: 32, 4096: 32}}

# Official keys dropped on purpose, with the reason (regular expressions on the official name).
DROPPED_KEYS: dict[str, str] = {
    r"criterion\.empty_weight": "loss buffer (class weights of the set criterion)",
    r"pixel_(mean|std)": "read into segmenter_image_mean / segmenter_image_std",
    r"backbone\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index": (
        "buffer recomputed from the window size (checked equal before it is dropped)"
    ),
    r"captioning_head\.Qformer\.bert\.embeddings\.(word_embeddings\.weight|position_embeddings\.weight|position_ids)": (
        "Q-Former text embeddings: captioning feeds query embeddings only"
    ),
    r"captioning_head\.Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\.": (
        "Q-Former text-token feed-forward: the 33 query tokens use intermediate_query / output_query"
    ),
    r"captioning_head\.Qformer\.cls\.": "Q-Former LM head (set to None by the release)",
}

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

# Human-readable mapping (official -> this package); the README's table is generated from the same list.
KEY_MAPPING: list[tuple[str, str, str]] = [
    ("backbone.patch_embed.proj / .norm", "model.segmenter.pixel_level_module.encoder.swin.embeddings."
     "patch_embeddings.projection / .norm", ""),
    ("backbone.layers.{i}.blocks.{j}.norm1 / norm2", "...encoder.swin.encoder.layers.{i}.blocks.{j}.layernorm_before "
     "/ layernorm_after", ""),
    ("backbone.layers.{i}.blocks.{j}.attn.qkv", "...blocks.{j}.attention.q_proj / k_proj / v_proj", "split in 3"),
    ("backbone.layers.{i}.blocks.{j}.attn.proj", "...blocks.{j}.attention.o_proj", ""),
    ("backbone.layers.{i}.blocks.{j}.attn.relative_position_bias_table",
     "...blocks.{j}.attention.relative_position_bias.relative_position_bias_table", ""),
    ("backbone.layers.{i}.blocks.{j}.mlp.fc1 / fc2", "...blocks.{j}.mlp.fc1 / fc2", ""),
    ("backbone.layers.{i}.downsample.reduction / norm", "...encoder.swin.encoder.layers.{i}.downsample.reduction / "
     "norm", ""),
    ("backbone.norm{i}", "...pixel_level_module.encoder.hidden_states_norms.stage{i+1}", ""),
    ("sem_seg_head.pixel_decoder.input_proj.{i}.{0,1}", "...pixel_level_module.decoder.input_projections.{i}.{0,1}",
     ""),
    ("sem_seg_head.pixel_decoder.transformer.level_embed", "...pixel_level_module.decoder.level_embed", ""),
    ("sem_seg_head.pixel_decoder.transformer.encoder.layers.{n}.self_attn.*",
     "...decoder.encoder.layers.{n}.self_attn.* (sampling_offsets, attention_weights, value_proj, output_proj)", ""),
    ("...transformer.encoder.layers.{n}.norm1 / linear1 / linear2 / norm2",
     "...decoder.encoder.layers.{n}.self_attn_layer_norm / fc1 / fc2 / final_layer_norm", ""),
    ("sem_seg_head.pixel_decoder.mask_features", "...pixel_level_module.decoder.mask_projection", ""),
    ("sem_seg_head.pixel_decoder.adapter_1 / adapter_1.norm", "...decoder.adapter_1.0 / adapter_1.1", ""),
    ("sem_seg_head.pixel_decoder.layer_1 / layer_1.norm", "...decoder.layer_1.0 / layer_1.1", ""),
    ("sem_seg_head.predictor.query_feat / query_embed / level_embed",
     "model.segmenter.transformer_module.queries_features / queries_embedder / level_embed", ""),
    ("sem_seg_head.predictor.transformer_self_attention_layers.{i}.self_attn.in_proj_*",
     "...transformer_module.decoder.layers.{i}.self_attn.q_proj / k_proj / v_proj", "split in 3"),
    ("...transformer_self_attention_layers.{i}.self_attn.out_proj / norm",
     "...decoder.layers.{i}.self_attn.out_proj / self_attn_layer_norm", ""),
    ("...transformer_cross_attention_layers.{i}.multihead_attn.* / norm",
     "...decoder.layers.{i}.cross_attn.* / cross_attn_layer_norm", ""),
    ("...transformer_ffn_layers.{i}.linear1 / linear2 / norm", "...decoder.layers.{i}.fc1 / fc2 / final_layer_norm",
     ""),
    ("sem_seg_head.predictor.decoder_norm", "...transformer_module.decoder.layernorm", ""),
    ("sem_seg_head.predictor.mask_embed.layers.{k}", "...decoder.mask_predictor.mask_embedder.{k}.0", ""),
    ("sem_seg_head.predictor.class_embed", "model.segmenter.class_head.classifier", "no-object row dropped"),
    ("sem_seg_head.predictor.class_embed.linear.{0,2} (ZeroShotClassifier)",
     "model.segmenter.class_head.projection.{0,1}.0", ""),
    ("sem_seg_head.predictor.class_embed.cross_attention.multihead_attn.* / .norm",
     "model.segmenter.class_head.image_context_attention.* / image_context_norm", ""),
    ("sem_seg_head.predictor.class_embed.zs_weight", "model.segmenter.class_head.class_embeddings",
     "transposed, no-object column dropped"),
    ("(CLIP ViT-B/32, --clip-model)", "model.segmenter.clip_image_encoder.*", "CLIPVisionModelWithProjection"),
    ("sem_seg_head.predictor.object_embed.layers.{k}", "model.segmenter.objectness_head.{k}.0",
     "last layer: logit 0 - logit 1"),
    ("sem_seg_head.predictor.box_embed.layers.{k}", "model.segmenter.box_head.{k}.0",
     "last layer tiled clip_length times"),
    ("captioning_head.visual_encoder.cls_token / pos_embed / patch_embed.proj",
     "model.caption_head.vision_model.embeddings.class_embedding / position_embedding / patch_embedding", ""),
    ("captioning_head.visual_encoder.blocks.{i}.norm1 / norm2 / mlp.fc1 / mlp.fc2",
     "...vision_model.encoder.layers.{i}.layer_norm1 / layer_norm2 / mlp.fc1 / mlp.fc2", ""),
    ("captioning_head.visual_encoder.blocks.{i}.attn.qkv / q_bias + v_bias / proj",
     "...encoder.layers.{i}.self_attn.qkv.weight / qkv.bias / projection", "bias = [q_bias, 0, v_bias]"),
    ("captioning_head.ln_vision", "model.caption_head.vision_model.post_layernorm", ""),
    ("captioning_head.Qformer.bert.embeddings.LayerNorm", "model.caption_head.qformer.layernorm", ""),
    ("captioning_head.Qformer.bert.encoder.layer.{i}.attention.self.*", "...qformer.encoder.layer.{i}.attention."
     "attention.*", ""),
    ("captioning_head.Qformer.bert.encoder.layer.{i}.crossattention.self.*",
     "...qformer.encoder.layer.{i}.crossattention.attention.*", ""),
    ("...layer.{i}.{attention,crossattention}.output.* / intermediate_query.* / output_query.*", "same names", ""),
    ("captioning_head.query_tokens", "model.caption_head.query_tokens", ""),
    ("captioning_head.obj_linear_proj", "model.caption_head.object_query_projection", ""),
    ("captioning_head.opt_proj", "model.caption_head.language_projection", ""),
    ("captioning_head.opt_model.*", "language_model.*", "transformers OPT names"),
]


def mapping_table_markdown() -> str:
    """The key-mapping table of the README (official name -> this package, note), built from ``KEY_MAPPING`` and
    ``DROPPED_KEYS`` so that the two cannot drift apart (a test checks the README holds it)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| official (gabfstr/CaptionFormer) | captionformer_hf | note |", "|---|---|---|"]
    lines += [f"| `{cell(source)}` | `{cell(target)}` | {cell(note)} |" for source, target, note in KEY_MAPPING]
    lines += [f"| `{cell(pattern)}` (regex) | dropped | {cell(reason)} |" for pattern, reason in DROPPED_KEYS.items()]
    return "\n".join(lines)


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
    for name in ("agg_linear", "agg_self_attention", "agg_transformer", "agg_pos_embedding"):
        if any(k.startswith(f"captioning_head.{name}") for k in state):
            problems.append(f"experimental caption aggregation module captioning_head.{name}; not convertible")
    if "backbone.absolute_pos_embed" in state:
        problems.append("Swin absolute position embedding (APE); not convertible")
    return problems


def _is_zero_shot(state: dict) -> bool:
    return "sem_seg_head.predictor.class_embed.zs_weight" in state


def config_from_original(
    state: dict[str, torch.Tensor],
    preset: str | None = None,
    num_heads: dict | None = None,
    text_config=None,
    vision_config=None,
    base_state_dict: dict[str, torch.Tensor] | None = None,
    **overrides,
) -> CaptionFormerConfig:
    """The :class:`CaptionFormerConfig` of an official state dict, its sizes read from the parameter shapes.

    ``preset`` (``vln``, ``vidstg``, ``bensmot``) sets the tracker / aggregation values of the released
    evaluation configs; ``num_heads`` gives head counts the shapes cannot tell (``segmenter``, ``vision``,
    ``qformer``, ``text``); ``text_config`` / ``vision_config`` replace the inferred LM / ViT configs (e.g.
    ``AutoConfig.from_pretrained("facebook/opt-2.7b")``); ``base_state_dict`` (transformers BLIP-2 names) supplies
    the ViT / LM shapes when the official checkpoint lacks them; other keyword arguments override config fields."""
    if preset is not None and preset not in RELEASE_PRESETS:
        raise ValueError(f"`preset` must be one of {sorted(RELEASE_PRESETS)}, got {preset!r}")
    problems = _check_supported(state)
    if problems:
        raise ValueError("unsupported official checkpoint:\n  " + "\n  ".join(problems))
    base = base_state_dict or {}

    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise ValueError(f"the official checkpoint has no {key!r}")
        return state[key]

    # --- Swin backbone
    patch = need("backbone.patch_embed.proj.weight")
    embed_dim, patch_size = patch.shape[0], patch.shape[-1]
    num_stages = _count(state, r"backbone\.layers\.(\d+)\.")
    depths = [_count(state, rf"backbone\.layers\.{i}\.blocks\.(\d+)\.") for i in range(num_stages)]
    table = need("backbone.layers.0.blocks.0.attn.relative_position_bias_table")
    window_size = (math.isqrt(table.shape[0]) + 1) // 2
    swin_heads = [state[f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1]
                  for i in range(num_stages)]
    mlp_ratio = need("backbone.layers.0.blocks.0.mlp.fc1.weight").shape[0] / embed_dim
    pd = "sem_seg_head.pixel_decoder."
    pr = "sem_seg_head.predictor."
    box_only = pd + "mask_features.weight" not in state  # BOX_ONLY: no mask branch, res3-res5 only
    out_indices = [i for i in range(num_stages) if f"backbone.norm{i}.weight" in state]
    wanted = list(range(num_stages - 3, num_stages)) if box_only else list(range(num_stages))
    if out_indices != wanted:
        raise ValueError(
            f"the Swin backbone must output stages {[i + 2 for i in wanted]} (res*) for a "
            f"{'box-only' if box_only else 'mask'} checkpoint, got norms for res{[i + 2 for i in out_indices]}"
        )
    out_features = [f"stage{i + 1}" for i in out_indices]
    backbone_config = {
        "model_type": "swin",
        "image_size": 384,
        "patch_size": int(patch_size),
        "embed_dim": int(embed_dim),
        "depths": depths,
        "num_heads": swin_heads,
        "window_size": int(window_size),
        "mlp_ratio": float(mlp_ratio),
        "qkv_bias": "backbone.layers.0.blocks.0.attn.qkv.bias" in state,
        "drop_path_rate": 0.0,
        "out_features": out_features,
    }

    # --- pixel decoder and masked-attention decoder
    feature_size = need(pd + "input_proj.0.0.weight").shape[0]
    hidden_dim = need(pr + "query_feat.weight").shape[1]
    segmenter_config = {
        "backbone_config": backbone_config,
        "feature_size": int(feature_size),
        "mask_feature_size": int(feature_size if box_only else need(pd + "mask_features.weight").shape[0]),
        "hidden_dim": int(hidden_dim),
        "encoder_layers": _count(state, re.escape(pd) + r"transformer\.encoder\.layers\.(\d+)\."),
        "encoder_feedforward_dim": int(need(pd + "transformer.encoder.layers.0.linear1.weight").shape[0]),
        "decoder_layers": _count(state, re.escape(pr) + r"transformer_ffn_layers\.(\d+)\.") + 1,
        "dim_feedforward": int(need(pr + "transformer_ffn_layers.0.linear1.weight").shape[0]),
        "num_queries": int(need(pr + "query_feat.weight").shape[0]),
        "num_attention_heads": _heads("segmenter", hidden_dim, num_heads),
        "enforce_input_projection": pr + "input_proj.0.weight" in state,
        "pre_norm": False,
        "common_stride": 4,
        "feature_strides": [patch_size * 2**i for i in out_indices],
    }
    classifier = {}
    if _is_zero_shot(state):  # CLIP_CLASSIFIER: OVFormer's ZeroShotClassifier
        if overrides.get("clip_vision_config") is None:
            raise ValueError(
                "this checkpoint's classifier (ZeroShotClassifier, CLIP_CLASSIFIER: true) attends to CLIP ViT-B/32 "
                "image embeddings of the frames: pass clip_vision_config and clip_state_dict "
                "(--clip-model openai/clip-vit-base-patch32)"
            )
        zs_weight = state[pr + "class_embed.zs_weight"]  # (E, C + 1), last column: no object (zeros)
        num_labels = int(zs_weight.shape[1]) - 1
        classifier = {
            "use_text_classifier": True,
            "text_embedding_dim": int(zs_weight.shape[0]),
            "text_classifier_projection_layers": sum(
                1 for k in state if re.fullmatch(re.escape(pr) + r"class_embed\.linear\.\d+\.weight", k)
            ),
            "text_classifier_bias": pr + "class_embed.cls_bias" in state,
            "text_classifier_temperature": 1 / 50,  # ZeroShotClassifier's norm_temperature
            "clip_image_context_heads": int((num_heads or {}).get("clip_context", 8)),
        }
    else:
        num_labels = int(need(pr + "class_embed.weight").shape[0]) - 1
    if num_labels < 1:
        raise ValueError("the classifier must have at least one class besides the no-object logit")
    if overrides.get("id2label") is not None and len(overrides["id2label"]) != num_labels:
        raise ValueError(
            f"`id2label` has {len(overrides['id2label'])} names but the checkpoint's classifier has {num_labels} classes"
        )
    objectness_layers = _count(state, re.escape(pr) + r"object_embed\.layers\.(\d+)\.")
    if objectness_layers < 1:
        raise ValueError("the official checkpoint has no object_embed (objectness head)")
    box_layers = _count(state, re.escape(pr) + r"box_embed\.layers\.(\d+)\.")

    # --- caption head
    ch = "captioning_head."
    if vision_config is None:
        vision = {key[len(ch + "visual_encoder."):]: value for key, value in state.items()
                  if key.startswith(ch + "visual_encoder.")}
        if vision:
            vision_hidden = vision["cls_token"].shape[-1]
            vision_config = {
                "hidden_size": int(vision_hidden),
                "intermediate_size": int(vision["blocks.0.mlp.fc1.weight"].shape[0]),
                "num_hidden_layers": _count(vision, r"blocks\.(\d+)\."),
                "num_attention_heads": _heads("vision", vision_hidden, num_heads),
                "patch_size": int(vision["patch_embed.proj.weight"].shape[-1]),
                "image_size": int(math.isqrt(vision["pos_embed"].shape[1] - 1) * vision["patch_embed.proj.weight"].shape[-1]),
                "qkv_bias": "blocks.0.attn.q_bias" in vision,
                "layer_norm_eps": 1e-6,
            }
        elif "vision_model.embeddings.class_embedding" in base:
            raise ValueError(
                "the official checkpoint has no visual_encoder weights: pass the vision config of the base BLIP-2 "
                "checkpoint (vision_config=...) together with base_state_dict"
            )
        else:
            raise ValueError("the official checkpoint has no captioning_head.visual_encoder weights")
    qformer_prefix = ch + "Qformer.bert.encoder.layer."
    qformer_hidden = int(need(ch + "query_tokens").shape[-1])
    num_qformer_layers = _count(state, re.escape(qformer_prefix) + r"(\d+)\.")
    cross_layers = [i for i in range(num_qformer_layers)
                    if f"{qformer_prefix}{i}.crossattention.self.query.weight" in state]
    if not cross_layers or cross_layers[0] != 0:
        raise ValueError("the Q-Former must cross-attend in its first layer")
    frequency = cross_layers[1] - cross_layers[0] if len(cross_layers) > 1 else num_qformer_layers
    qformer_config = {
        "hidden_size": qformer_hidden,
        "num_hidden_layers": num_qformer_layers,
        "num_attention_heads": _heads("qformer", qformer_hidden, num_heads),
        "intermediate_size": int(need(f"{qformer_prefix}0.intermediate_query.dense.weight").shape[0]),
        "cross_attention_frequency": int(frequency),
        "layer_norm_eps": 1e-12,
    }
    if text_config is None:
        lm = {key[len(ch + "opt_model."):]: value for key, value in state.items() if key.startswith(ch + "opt_model.")}
        if not lm:
            lm = {key[len("language_model."):]: value for key, value in base.items() if key.startswith("language_model.")}
        if not lm:
            raise ValueError("the official checkpoint has no captioning_head.opt_model weights; pass base_state_dict")
        embed = lm["model.decoder.embed_tokens.weight"]
        text_hidden = int(lm["model.decoder.layers.0.fc1.weight"].shape[1])
        text_config = {
            "model_type": "opt",
            "vocab_size": int(embed.shape[0]),
            "hidden_size": text_hidden,
            "word_embed_proj_dim": int(embed.shape[1]),
            "num_hidden_layers": _count(lm, r"model\.decoder\.layers\.(\d+)\."),
            "ffn_dim": int(lm["model.decoder.layers.0.fc1.weight"].shape[0]),
            "num_attention_heads": _heads("text", text_hidden, num_heads),
            "max_position_embeddings": int(lm["model.decoder.embed_positions.weight"].shape[0]) - 2,
            "do_layer_norm_before": "model.decoder.final_layer_norm.weight" in lm,
            "pad_token_id": 1,
            "bos_token_id": 2,
            "eos_token_id": 2,
        }
    elif hasattr(text_config, "to_dict"):
        text_config = text_config.to_dict()
    if hasattr(vision_config, "to_dict"):
        vision_config = vision_config.to_dict()

    mean = state.get("pixel_mean")
    std = state.get("pixel_std")
    image_mean = [float(v) / 255.0 for v in mean.flatten()] if mean is not None else list(IMAGENET_DEFAULT_MEAN)
    image_std = [float(v) / 255.0 for v in std.flatten()] if std is not None else list(IMAGENET_DEFAULT_STD)

    kwargs = {
        "segmenter_config": segmenter_config,
        "vision_config": vision_config,
        "qformer_config": qformer_config,
        "text_config": text_config,
        "num_labels": num_labels,
        **classifier,
        "num_query_tokens": int(need(ch + "query_tokens").shape[1]),
        "objectness_head_layers": objectness_layers,
        "box_head_layers": box_layers,
        "box_only": box_only,
        "box_format": "xywh",  # the release's box_embed: raw normalised (x, y, w, h)
        "caption_mask_convention": "release",
        "caption_mask_threshold": 0.5,
        "aggregation": "weighted",
        "caption_frame": "middle",
        "segmenter_image_mean": image_mean,
        "segmenter_image_std": image_std,
        # the release feeds the segmenter's (ImageNet-normalised) input to EVA as is
        "vision_image_mean": image_mean,
        "vision_image_std": image_std,
        "score_threshold": 0.5,
        # the release prompts OPT with its (empty) text prompt tokenised with BOS: [queries, </s>]
        "caption_prompt_token_id": int(2 if text_config.get("bos_token_id") is None else text_config["bos_token_id"]),
    }
    if preset is not None:
        kwargs.update(RELEASE_PRESETS[preset])
    kwargs.update(overrides)
    return CaptionFormerConfig(**kwargs)


# ---------------------------------------------------------------------------------------------------- mapping
class _Mapper:
    def __init__(self, source: dict[str, torch.Tensor], report: ConversionReport):
        self.source = dict(source)
        self.target: dict[str, torch.Tensor] = OrderedDict()
        self.report = report

    def take(self, key: str) -> torch.Tensor | None:
        """Pop an official tensor (``None`` if absent: the target stays unfilled and is reported as missing)."""
        return self.source.pop(key, None)

    def put(self, key: str, value: torch.Tensor | None) -> None:
        if value is not None:
            self.target[key] = value
            self.report.mapped += 1

    def rename(self, source: str, target: str) -> None:
        self.put(target, self.take(source))

    def rename_prefix(self, source: str, target: str, names=("weight", "bias")) -> None:
        for name in names:
            self.rename(f"{source}.{name}", f"{target}.{name}")

    def split_qkv(self, source: str, targets: tuple[str, str, str], names=("weight", "bias")) -> None:
        for name in names:
            value = self.take(f"{source}{name}")
            if value is None:
                continue
            for target, chunk in zip(targets, value.chunk(3, dim=0)):
                self.put(f"{target}.{name}", chunk.clone())


def _map_swin(m: _Mapper, config: CaptionFormerConfig) -> None:
    src, dst = "backbone.", "model.segmenter.pixel_level_module.encoder."
    swin = config.segmenter_config.backbone_config
    m.rename_prefix(src + "patch_embed.proj", dst + "swin.embeddings.patch_embeddings.projection")
    m.rename_prefix(src + "patch_embed.norm", dst + "swin.embeddings.norm")
    for i, depth in enumerate(swin.depths):
        for j in range(depth):
            s, d = f"{src}layers.{i}.blocks.{j}.", f"{dst}swin.encoder.layers.{i}.blocks.{j}."
            m.rename_prefix(s + "norm1", d + "layernorm_before")
            m.split_qkv(s + "attn.qkv.", (d + "attention.q_proj", d + "attention.k_proj", d + "attention.v_proj"),
                        names=("weight", "bias") if swin.qkv_bias else ("weight",))
            m.rename_prefix(s + "attn.proj", d + "attention.o_proj")
            m.rename(s + "attn.relative_position_bias_table",
                     d + "attention.relative_position_bias.relative_position_bias_table")
            m.rename_prefix(s + "norm2", d + "layernorm_after")
            m.rename_prefix(s + "mlp.fc1", d + "mlp.fc1")
            m.rename_prefix(s + "mlp.fc2", d + "mlp.fc2")
        if i < len(swin.depths) - 1:
            m.rename(f"{src}layers.{i}.downsample.reduction.weight", f"{dst}swin.encoder.layers.{i}.downsample.reduction.weight")
            m.rename_prefix(f"{src}layers.{i}.downsample.norm", f"{dst}swin.encoder.layers.{i}.downsample.norm")
        if f"stage{i + 1}" in swin.out_features:
            m.rename_prefix(f"{src}norm{i}", f"{dst}hidden_states_norms.stage{i + 1}")


def _map_pixel_decoder(m: _Mapper, config: CaptionFormerConfig) -> None:
    src, dst = "sem_seg_head.pixel_decoder.", "model.segmenter.pixel_level_module.decoder."
    for i in range(3):
        for j in range(2):
            m.rename_prefix(f"{src}input_proj.{i}.{j}", f"{dst}input_projections.{i}.{j}")
    m.rename(src + "transformer.level_embed", dst + "level_embed")
    for n in range(config.segmenter_config.encoder_layers):
        s, d = f"{src}transformer.encoder.layers.{n}.", f"{dst}encoder.layers.{n}."
        for name in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
            m.rename_prefix(s + "self_attn." + name, d + "self_attn." + name)
        m.rename_prefix(s + "norm1", d + "self_attn_layer_norm")
        m.rename_prefix(s + "linear1", d + "fc1")
        m.rename_prefix(s + "linear2", d + "fc2")
        m.rename_prefix(s + "norm2", d + "final_layer_norm")
    if config.box_only:  # no mask branch in the release
        return
    m.rename_prefix(src + "mask_features", dst + "mask_projection")
    m.rename(src + "adapter_1.weight", dst + "adapter_1.0.weight")
    m.rename_prefix(src + "adapter_1.norm", dst + "adapter_1.1")
    m.rename(src + "layer_1.weight", dst + "layer_1.0.weight")
    m.rename_prefix(src + "layer_1.norm", dst + "layer_1.1")


def _map_decoder_and_heads(m: _Mapper, config: CaptionFormerConfig) -> None:
    src, dst = "sem_seg_head.predictor.", "model.segmenter.transformer_module."
    seg = config.segmenter_config
    m.rename(src + "query_feat.weight", dst + "queries_features.weight")
    m.rename(src + "query_embed.weight", dst + "queries_embedder.weight")
    m.rename(src + "level_embed.weight", dst + "level_embed.weight")
    if seg.enforce_input_projection:
        for i in range(3):
            m.rename_prefix(f"{src}input_proj.{i}", f"{dst}input_projections.{i}")
    for i in range(seg.decoder_layers - 1):
        d = f"{dst}decoder.layers.{i}."
        s = f"{src}transformer_self_attention_layers.{i}."
        m.split_qkv(s + "self_attn.in_proj_", (d + "self_attn.q_proj", d + "self_attn.k_proj", d + "self_attn.v_proj"))
        m.rename_prefix(s + "self_attn.out_proj", d + "self_attn.out_proj")
        m.rename_prefix(s + "norm", d + "self_attn_layer_norm")
        s = f"{src}transformer_cross_attention_layers.{i}."
        m.rename(s + "multihead_attn.in_proj_weight", d + "cross_attn.in_proj_weight")
        m.rename(s + "multihead_attn.in_proj_bias", d + "cross_attn.in_proj_bias")
        m.rename_prefix(s + "multihead_attn.out_proj", d + "cross_attn.out_proj")
        m.rename_prefix(s + "norm", d + "cross_attn_layer_norm")
        s = f"{src}transformer_ffn_layers.{i}."
        m.rename_prefix(s + "linear1", d + "fc1")
        m.rename_prefix(s + "linear2", d + "fc2")
        m.rename_prefix(s + "norm", d + "final_layer_norm")
    m.rename_prefix(src + "decoder_norm", dst + "decoder.layernorm")
    if not config.box_only:
        for k in range(3):
            m.rename_prefix(f"{src}mask_embed.layers.{k}", f"{dst}decoder.mask_predictor.mask_embedder.{k}.0")

    heads = "model.segmenter."
    if config.use_text_classifier:  # ZeroShotClassifier
        c, d = src + "class_embed.", heads + "class_head."
        layers = config.text_classifier_projection_layers
        for k in range(layers):  # nn.Sequential(Linear, ReLU, Linear): Linear k at index 2k
            target = d + "projection" if layers == 1 else f"{d}projection.{k}.0"
            m.rename_prefix(f"{c}linear.{2 * k}", target)
        for name in ("in_proj_weight", "in_proj_bias"):
            m.rename(f"{c}cross_attention.multihead_attn.{name}", f"{d}image_context_attention.{name}")
        m.rename_prefix(c + "cross_attention.multihead_attn.out_proj", d + "image_context_attention.out_proj")
        m.rename_prefix(c + "cross_attention.norm", d + "image_context_norm")
        zs_weight = m.take(c + "zs_weight")
        if zs_weight is not None:  # (E, C + 1) -> (C, E), the zero no-object column dropped
            m.put(d + "class_embeddings", zs_weight[:, :-1].t().contiguous())
        if config.text_classifier_bias:
            m.rename(c + "cls_bias", d + "bias")
    else:
        # class: drop the no-object logit (inference reads sigmoid(logits[:, :-1]) only)
        for name in ("weight", "bias"):
            value = m.take(f"{src}class_embed.{name}")
            if value is not None:
                m.put(f"{heads}class_head.classifier.{name}", value[:-1].clone())
    # objectness: softmax([a, b])[0] == sigmoid(a - b)
    layers = config.objectness_head_layers
    for k in range(layers):
        weight, bias = m.take(f"{src}object_embed.layers.{k}.weight"), m.take(f"{src}object_embed.layers.{k}.bias")
        if weight is None or bias is None:
            continue
        if k == layers - 1:
            if weight.shape[0] != 2:
                m.report.shape_mismatches.append(
                    f"{src}object_embed.layers.{k}.weight: expected 2 logits (object, no object), got {weight.shape[0]}"
                )
                continue
            weight, bias = (weight[0] - weight[1])[None], (bias[0] - bias[1])[None]
        prefix = f"{heads}objectness_head" if layers == 1 else f"{heads}objectness_head.{k}.0"
        m.put(f"{prefix}.weight", weight.clone())
        m.put(f"{prefix}.bias", bias.clone())
    # boxes: one box per frame from the same query -> tile the last layer clip_length times
    for k in range(config.box_head_layers):
        weight, bias = m.take(f"{src}box_embed.layers.{k}.weight"), m.take(f"{src}box_embed.layers.{k}.bias")
        if weight is None or bias is None:
            continue
        if k == config.box_head_layers - 1:
            weight, bias = weight.repeat(config.clip_length, 1), bias.repeat(config.clip_length)
        m.put(f"{heads}box_head.{k}.0.weight", weight.clone())
        m.put(f"{heads}box_head.{k}.0.bias", bias.clone())


def _map_caption_head(m: _Mapper, config: CaptionFormerConfig) -> None:
    src, dst = "captioning_head.", "model.caption_head."
    if any(key.startswith(src + "visual_encoder.") for key in m.source):
        s, d = src + "visual_encoder.", dst + "vision_model."
        m.rename(s + "cls_token", d + "embeddings.class_embedding")
        m.rename(s + "pos_embed", d + "embeddings.position_embedding")
        m.rename_prefix(s + "patch_embed.proj", d + "embeddings.patch_embedding")
        for i in range(config.vision_config.num_hidden_layers):
            sb, db = f"{s}blocks.{i}.", f"{d}encoder.layers.{i}."
            m.rename_prefix(sb + "norm1", db + "layer_norm1")
            m.rename(sb + "attn.qkv.weight", db + "self_attn.qkv.weight")
            if config.vision_config.qkv_bias:
                q_bias, v_bias = m.take(sb + "attn.q_bias"), m.take(sb + "attn.v_bias")
                if q_bias is not None and v_bias is not None:
                    m.put(db + "self_attn.qkv.bias", torch.cat([q_bias, torch.zeros_like(q_bias), v_bias]))
            m.rename_prefix(sb + "attn.proj", db + "self_attn.projection")
            m.rename_prefix(sb + "norm2", db + "layer_norm2")
            m.rename_prefix(sb + "mlp.fc1", db + "mlp.fc1")
            m.rename_prefix(sb + "mlp.fc2", db + "mlp.fc2")
    if src + "ln_vision.weight" in m.source:
        m.rename_prefix(src + "ln_vision", dst + "vision_model.post_layernorm")
    q, dq = src + "Qformer.bert.", dst + "qformer."
    m.rename_prefix(q + "embeddings.LayerNorm", dq + "layernorm")
    frequency = config.qformer_config.cross_attention_frequency
    for i in range(config.qformer_config.num_hidden_layers):
        s, d = f"{q}encoder.layer.{i}.", f"{dq}encoder.layer.{i}."
        blocks = ["attention"] + (["crossattention"] if i % frequency == 0 else [])
        for block in blocks:
            for name in ("query", "key", "value"):
                m.rename_prefix(f"{s}{block}.self.{name}", f"{d}{block}.attention.{name}")
            m.rename_prefix(f"{s}{block}.output.dense", f"{d}{block}.output.dense")
            m.rename_prefix(f"{s}{block}.output.LayerNorm", f"{d}{block}.output.LayerNorm")
        m.rename_prefix(s + "intermediate_query.dense", d + "intermediate_query.dense")
        m.rename_prefix(s + "output_query.dense", d + "output_query.dense")
        m.rename_prefix(s + "output_query.LayerNorm", d + "output_query.LayerNorm")
    m.rename(src + "query_tokens", dst + "query_tokens")
    m.rename_prefix(src + "obj_linear_proj", dst + "object_query_projection")
    m.rename_prefix(src + "opt_proj", dst + "language_projection")
    lm = src + "opt_model."
    for key in [k for k in m.source if k.startswith(lm)]:
        m.rename(key, "language_model." + key[len(lm):])


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
    # drop what is dropped on purpose (checking the recomputed buffers on the way)
    for key in list(m.source):
        for pattern, reason in DROPPED_KEYS.items():
            if re.match(pattern, key):
                value = m.source.pop(key)
                if key.endswith("relative_position_index"):
                    _check_relative_position_index(key, value)
                report.dropped[key] = reason
                break
    _map_swin(m, config)
    _map_pixel_decoder(m, config)
    _map_decoder_and_heads(m, config)
    _map_caption_head(m, config)
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
    model.eval()
    logger.info(report.summary())
    return model, report


def release_video_processor(config: CaptionFormerConfig, shortest_edge: int = 480):
    """The processor settings of the release's evaluation configs: shortest edge 480 (detectron2's
    ``ResizeShortestEdge``, longest edge at most 1333), ImageNet normalisation, padding to a multiple of 32."""
    from .processing.video_processing_captionformer import CaptionFormerVideoProcessor

    return CaptionFormerVideoProcessor(
        size={"shortest_edge": shortest_edge, "longest_edge": 1333},
        size_divisor=32,
        image_mean=list(config.segmenter_image_mean),
        image_std=list(config.segmenter_image_std),
        clip_length=config.clip_length,
    )


def write_converted(model, output_dir: str | Path, tokenizer=None, push_to_hub: str | None = None,
                    shortest_edge: int = 480) -> Path:
    """Save the converted model (safetensors + config + generation config) and, with a ``tokenizer``, the
    processor, into ``output_dir`` (absent or empty; written atomically); optionally push both to the Hub repository
    ``push_to_hub``."""
    from .processing.processing_captionformer import CaptionFormerProcessor

    output_dir = Path(output_dir)
    if tokenizer is not None:
        # the release stops captions at a newline (OPT's "\n" token) as BLIP-2 does; keep the EOS token too
        newline = tokenizer("\n", add_special_tokens=False).input_ids
        if len(newline) == 1:
            model.generation_config.eos_token_id = [newline[0]] + (
                [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
            )
    processor = None
    if tokenizer is not None:
        processor = CaptionFormerProcessor(
            video_processor=release_video_processor(model.config, shortest_edge),
            tokenizer=tokenizer,
            max_caption_length=model.config.max_caption_length,
        )
    else:
        logger.warning("no tokenizer given: %s has the model only (no processor)", output_dir)
    with atomic_directory(output_dir, argument="output") as tmp:
        model.save_pretrained(tmp)
        if processor is not None:
            processor.save_pretrained(tmp)
    if push_to_hub:
        model.push_to_hub(push_to_hub)
        if processor is not None:
            processor.push_to_hub(push_to_hub)
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
    parser.add_argument("--preset", choices=sorted(RELEASE_PRESETS), help="tracker / aggregation settings")
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
        logging.basicConfig(level=logging.INFO)
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
                    shortest_edge=args.shortest_edge)
    print(report.summary())
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
