"""CaptionFormer configuration.

Remote-code safe: this file imports only ``transformers`` and ``huggingface_hub`` (never torch) and nothing from this
package.
"""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, Blip2QFormerConfig, Blip2VisionConfig, CLIPVisionConfig, Mask2FormerConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

# order-free (the paper's weighted sum and its ablations) and order-aware (the released caption head's `concat`,
# `linear` and `self-attention`: the sampled clips in time order)
_AGGREGATIONS = ("weighted", "mean", "best", "concat", "linear", "self-attention")
_CAPTION_FRAMES = ("middle", "first", "random")
_CAPTION_MASK_CONVENTIONS = ("object", "release")
_RELEASE_PRECISIONS = ("fp16_autocast", "native")


def _int_mapping(value, name: str, cast) -> dict:
    """``{int: cast(value)}`` of a dict whose keys are ints or their strings (as JSON stores them)."""
    if not isinstance(value, dict):
        raise ValueError(f"`{name}` must be a dict of class ids, got {type(value).__name__}")
    out = {}
    for key, item in value.items():
        try:
            number = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"`{name}`: keys must be class ids, got {key!r}") from None
        if isinstance(key, bool) or number < 0 or (cast is int and (isinstance(item, bool) or not isinstance(item, int)
                                                                     or item < 0)):
            raise ValueError(f"`{name}`: ids must be integers >= 0, got {key!r}: {item!r}")
        out[number] = cast(item)
    return out
_VIDEO_INFERENCE_MODES = ["paper", "release"]  # register_video_inference_mode (modeling) adds more


# The paper's architecture (and the official checkpoints'): Mask2Former with a Swin-B backbone (embed 128, depths
# 2-2-18-2, heads 4-8-16-32, window 12; 100 queries, 10 decoder layers, hidden 256), BLIP-2's EVA ViT-g at 364 px,
# its Q-Former (768 wide, 12 layers, 32 query tokens) and OPT-2.7B.
PAPER_SEGMENTER = {
    "backbone_config": {
        "model_type": "swin", "image_size": 384, "embed_dim": 128, "depths": [2, 2, 18, 2],
        "num_heads": [4, 8, 16, 32], "window_size": 12, "drop_path_rate": 0.0,
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
    },
    "num_queries": 100,
    "decoder_layers": 10,
    "hidden_dim": 256,
}
PAPER_VISION = {"image_size": 364}  # Blip2VisionConfig's defaults are EVA ViT-g (1408 wide, 39 layers, patch 14)
PAPER_TEXT = {
    "model_type": "opt", "vocab_size": 50272, "hidden_size": 2560, "num_hidden_layers": 32, "ffn_dim": 10240,
    "num_attention_heads": 32, "max_position_embeddings": 2048, "word_embed_proj_dim": 2560,
    "do_layer_norm_before": True, "pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 2,
}


@strict  # as Mask2FormerConfig: its validation (and warning for other backbones) runs on construction
class CaptionFormerSegmenterConfig(Mask2FormerConfig):
    """``Mask2FormerConfig`` (same fields, same ``model_type``, same JSON) with the backbones this package's segmenter
    is tested with. Mask2Former's own list holds only Swin (its checkpoints); the segmenter reads its multi-scale
    features from any ``AutoBackbone`` with four stages at strides 4-32, and the ResNet of the embedded default
    model is checked against transformers' Mask2Former in the tests. Other backbones still get Mask2Former's
    warning."""

    backbones_supported = ["swin", "resnet"]


class CaptionFormerConfig(PreTrainedConfig):
    r"""
    Configuration of a CaptionFormer model (CVPR 2026): a Mask2Former-style clip segmenter with box, class and
    objectness heads, a semi-online top-K tracker and a BLIP-2 caption head with temporal aggregation.

    ``CaptionFormerConfig()`` builds the paper's architecture: Mask2Former with a Swin-B backbone (embed 128, depths
    2-2-18-2, heads 4-8-16-32, window 12), 100 queries and 10 decoder layers; BLIP-2's EVA ViT-g (1408 wide, 39
    layers) at 364 pixels; a 12-layer Q-Former with 32 query tokens; OPT-2.7B — 3.85 billion parameters in all
    (OPT 2.65 B and the ViT 0.99 B, both frozen by default; the segmenter 107 M). Tiny configurations (tests, the
    toy default model) set every sub-config.

    Args:
        segmenter_config (`Mask2FormerConfig` or `dict`, *optional*):
            Clip segmenter: backbone (``segmenter_config.backbone_config``, any AutoBackbone config), pixel decoder and
            masked-attention decoder. ``num_queries``, ``decoder_layers``, ``hidden_dim`` and the point-sampling
            settings (``train_num_points``, ``oversample_ratio``, ``importance_sample_ratio``) are read from it.
        vision_config (`Blip2VisionConfig` or `dict`, *optional*): BLIP-2 vision encoder of the caption head.
        qformer_config (`Blip2QFormerConfig` or `dict`, *optional*): Q-Former of the caption head.
        text_config (`PreTrainedConfig` or `dict`, *optional*): any causal LM config (OPT by default).
        clip_length (`int`, defaults to 1): frames per clip (T). ``1`` makes tracking fully online.
        box_head_layers (`int`, defaults to 2): depth of the MLP box head (2 in the released code, 4 in the paper).
            ``0``: no box head; boxes are the bounding boxes of the predicted masks (the released mask checkpoints,
            trained with ``USE_BOXES: false``, have no box head) and the box losses are skipped.
        box_only (`bool`, defaults to `False`): no mask branch, as the released box checkpoints (``BOX_ONLY: true``,
            VidSTG / BenSMOT): the decoder's masked attention and the caption head's cross-attention are restricted
            to the predicted boxes (rasterised as the release does) and ``masks_logits`` are the rasterised boxes.
            Needs a box head.
        box_format (`str`, defaults to ``"cxcywh"``): what the box head predicts: ``"cxcywh"`` (sigmoid, normalised
            centre and size) or ``"xywh"`` (the release: raw normalised top-left corner and size, no sigmoid); both
            are returned as normalised (cx, cy, w, h).
        objectness_head_layers (`int`, defaults to 1): depth of the MLP objectness head (the released code uses a
            2-layer MLP with two logits; converted checkpoints store it as one logit, ``obj - no_obj``, which gives
            the same probability: ``softmax([a, b])[0] == sigmoid(a - b)``).
        use_text_classifier (`bool`, defaults to `False`): open-vocabulary classifier: cosine similarity between a
            projection of the query and class text embeddings (stored in the ``class_embeddings`` buffer or passed
            to ``forward``) instead of a linear layer.
        text_embedding_dim (`int`, defaults to 512): dimension of the class text embeddings.
        text_classifier_temperature (`float`, defaults to 0.02): softmax temperature of the cosine classifier.
        text_classifier_projection_layers (`int`, defaults to 1): depth of the query projection of the cosine
            classifier (the release's ``ZeroShotClassifier``: 2, with a hidden width of ``text_embedding_dim // 2``).
        text_classifier_bias (`bool`, defaults to `True`): learned bias added to the cosine logits (the release: none).
        clip_vision_config (`CLIPVisionConfig` or `dict`, *optional*): with the cosine classifier, OVFormer's image
            context (the release's ``ZeroShotClassifier``): the projected queries cross-attend (post-norm residual,
            ``clip_image_context_heads`` heads) to the CLIP image embeddings of the clip's frames before the cosine
            against the class embeddings. The frames' embeddings come from a frozen
            ``CLIPVisionModelWithProjection`` (ViT-B/32 in the release) on each frame's content, or are passed to
            ``forward`` as ``clip_image_embeds``.
        num_query_tokens (`int`, defaults to 32): learned Q-Former query tokens (one projected object query is
            prepended to them, as in the released code).
        score_threshold (`float`, defaults to 0.5): per-clip pruning threshold on S = sqrt(max_c p_c * p_obj).
        k_match (`int`, defaults to 7): memory clips used for association (K_match).
        duplicate_iou_threshold (`float`, *optional*): paper mode: per clip, a kept query whose mask (over the
            clip) overlaps a higher-scoring kept query's at an IoU above this is dropped before tracking, so that
            two queries on one object do not become two tracks; `None` (default, the paper): no suppression.
        match_cost_threshold (`float`, defaults to 0.7): largest combined cosine cost (1 - cos) at which a query
            joins an existing track; above it the query opens a new track.
        t_match (`int`, defaults to 100): memory-bank length per trajectory (T_match).
        hysteresis_low / hysteresis_high (`float`, defaults to 0.4 / 0.85): hysteresis thresholds on track scores.
        hysteresis_min_length (`int`, defaults to 3): minimum track length (frames) kept by the hysteresis filter.
        t_agg (`int`, defaults to 32): clips sampled uniformly per trajectory for caption aggregation (T_agg; the
            release's ``AGGREGATION_NUM_T``).
        aggregation (`str`, defaults to ``"weighted"``): how the Q-Former outputs of the sampled clips become one
            video-level LM prefix. Order-free: ``"weighted"`` (detection-score weighted sum, the paper), ``"mean"``
            (arithmetic mean) or ``"best"`` (single best-scoring clip); a weighted sum is the same for any order of
            the clips, so it cannot tell moving left from moving right. Order-aware (the released caption head's
            ``AGGREGATION_METHOD``), on exactly ``t_agg`` clips in time order (``linspace`` over the track's clips,
            repeating clips of a short track, as the release): ``"concat"`` (the clips' outputs concatenated in
            time order: a prefix of ``t_agg * (1 + num_query_tokens)`` tokens), ``"linear"`` (each token's
            ``t_agg`` outputs concatenated along features in time order, then a linear layer, ``agg_linear``) and
            ``"self-attention"`` (attention over time per token with a learned temporal position embedding, then
            the same linear layer).
        aggregation_num_heads (`int`, defaults to 8): heads of the ``"self-attention"`` aggregation (the release's).
        aggregation_position_embedding (`bool`, defaults to `True`): ``"self-attention"`` adds a learned temporal
            position embedding (one vector per sampled clip) to its queries and keys. The released
            ``agg_self_attention`` has none (its following ``agg_linear`` is what sees the order): converted
            checkpoints without ``agg_pos_embedding`` set it to `False`.
        aggregation_projection_first (`bool`, defaults to `False`): project each clip's Q-Former output into the LM
            before aggregating (the release's ``OPT_PROJ_BEFORE_AGGREGATION``): the aggregation layers are then as
            wide as the LM.
        video_inference_mode (`str`, defaults to ``"paper"``): what happens after the clip forward.
            ``"paper"`` (models trained here): queries with S below ``score_threshold`` are pruned, kept queries
            join tracks behind the ``match_cost_threshold`` gate, tracks are scored by their mean S, and caption
            clips are sampled over each track's own life (bounded memory, streaming). ``"release"`` (converted
            official checkpoints, set by the converter presets): exactly the released code's video level: all query
            slots of every clip are tracked (permuted by the top-K vote matching, no gate); box models keep a clip
            when S > ``presence_threshold`` and score a track by its class-only video score; mask models keep the
            ``max_trajectories`` best tracks by video score, with a mask on every frame; the released two-pass
            hysteresis; ``t_agg`` caption clips sampled by ``linspace`` over all clips of the video, weighted by
            S (``"best"``: the highest-S clip over the whole video); no caption when a track's best S is below
            ``caption_score_threshold``; clips of T > 1 frames are captioned from a random frame. Memory grows with
            the video (the release is offline). See the README for both side by side.
        presence_threshold (`float`, defaults to 0.2): release mode, box models: a clip of a track is kept iff its
            S exceeds this.
        max_trajectories (`int`, defaults to 50): release mode, mask models: tracks kept by video score.
        caption_score_threshold (`float`, defaults to 0.3): release mode: no caption for a track whose best S is
            below this.
        track_score_threshold (`float`, defaults to 0.0): release mode (``PER_FRAME_SCORE_THRESHOLD``): box models
            drop frames whose score is not above it, mask models drop tracks whose score is not above it; 0: off.
        release_class_agnostic (`bool`, defaults to `False`): release mode (``CLASS_AGNOSTIC_INFERENCE``): a track's
            per-frame scores (presence, hysteresis, per-frame threshold) are its objectness alone; mask models rank
            tracks by the class-only video score. Caption plans still use S.
        release_score_class (`int`, *optional*): release mode (``FILTER_PERSON_ONLY``, LV-VIS's person: 772): only
            this class's logit enters the scores and the video class; every track's label is this class (the
            release reports 0, the index inside its one-class slice).
        release_middle_clip_caption (`bool`, defaults to `False`): release mode (``MIDDLE_FRAME_CAPTIONING`` /
            ``TEST_AGG_MIDDLE_CLIP``): a track is captioned from the video's middle clip (``frames // clip_length //
            2``) alone, instead of its best clip (``aggregation="best"``) or the ``t_agg`` sampled clips.
        release_captions_per_video (`int`, defaults to 1): release mode (``NUM_CAPTIONS_PER_VIDEO``): P > 1 cuts the
            video's frames into P parts and captions a track in each part from its best clip there (no aggregation;
            this overrides ``aggregation`` and ``release_middle_clip_caption`` for captions), each frame carrying
            its part's caption; as the release, only the first qualifying track is captioned in the last part.
        release_label_mapping (`dict[int, int]`, *optional*): release mode (``LVVIS_ZS_VIDSTG_CLASS_FILTERING``):
            labels mapped through this dict (0-based ids; JSON keys may be strings), tracks whose label has no entry
            dropped. ``release_id2label`` names the mapped ids. See ``load_release_label_mapping`` for the
            release's 1-based ``lvvis_to_vidstg`` JSON.
        release_id2label (`dict[int, str]`, *optional*): names of the mapped labels (default: ``id2label``).
        release_association (`str`, defaults to ``"top_k"``): release mode: how a clip's queries join the slots:
            ``"top_k"`` (``TOPK_MATCHING``: the top-K vote over the memory, ``k_match`` / ``t_match``) or
            ``"hungarian_temporal"`` (box models, ``HUNGARIAN_TRACK_MATCHING``: one assignment against the previous
            clip on ``release_association_weights``) or ``"greedy"`` (``GREEDY_MATCHING``: offline, all clips
            associated at the end of the video by the release's greedy extraction from the softmax of the queries'
            cosine similarities; as the release, a clip's trajectory ids are used as its gather permutation).
        release_association_weights (`dict`, *optional*): ``"hungarian_temporal"``'s cost weights ``embed``,
            ``class``, ``bbox``, ``giou`` (the release's ``TRACKING_*_WEIGHT``; default 1, 0, 0, 0).
        release_precision (`str`, defaults to ``"fp16_autocast"``): release mode: the arithmetic of the video level.
            ``"fp16_autocast"``: what the released evaluation computes under ``torch.cuda.amp.autocast()`` (fp16
            class / objectness logits, boxes, mask logits and tracking costs; float32 where autocast or the release
            casts: embeddings after the layer norm, softmax, scores, the assignment). On CUDA the segmenter and
            caption head also run under autocast; on the CPU the same tensors are rounded to fp16 explicitly.
            ``"native"``: the model's own dtype (float32, bfloat16 or float16) throughout, float32 for the assignment.
        caption_frame (`str`, defaults to ``"middle"``): frame of a clip fed to the caption head at inference:
            ``"middle"``, ``"first"`` or ``"random"`` (drawn from torch's global generator; release mode always
            draws one, as the released code). Training samples one at random, as the released code.
        caption_mask_threshold (`float`, defaults to 0.5): mask probability above which a vision patch is attended.
        caption_mask_convention (`str`, defaults to ``"object"``): how the object mask restricts the Q-Former's
            cross-attention. ``"object"`` (the paper): the patches inside the mask and the CLS token. ``"release"``:
            what the released code computes, needed to reproduce converted official checkpoints: its boolean mask
            (``sigmoid < threshold``, i.e. True *outside* the object) with one True appended *after* the patches
            goes through LAVIS's ``invert_attention_mask``, which treats True as "attend"; EVA's CLS token is
            first, so token ``k`` is attended iff patch ``k`` is outside the object (CLS reads patch 0's entry,
            patch ``k - 1`` reads patch ``k``'s) and the last patch is always attended.
        max_caption_length (`int`, defaults to 32): maximum caption length in LM tokens.
        vision_post_layernorm_eps (`float`, *optional*): epsilon of the vision encoder's final LayerNorm (BLIP-2's
            ``ln_vision``); default: the vision config's ``layer_norm_eps``. Converted official checkpoints set
            1e-5 (LAVIS builds ``ln_vision`` as a default ``nn.LayerNorm``, while EVA's blocks use 1e-6).
        caption_prompt_token_id (`int`, *optional*): token whose embedding follows the visual prefix in the LM input
            (training and generation). The released code, like BLIP-2, appends OPT's BOS (``</s>``, id 2): converted
            checkpoints set it; ``None`` (default) feeds the visual prefix alone.
        freeze_segmenter / freeze_vision_encoder / freeze_language_model (`bool`): parameters frozen at init
            (two-stage training freezes the segmenter; the released code freezes the ViT and the LM).
        class_weight, objectness_weight, mask_weight, dice_weight, bbox_l1_weight, giou_weight, caption_weight:
            loss weights (paper: 2, 2, 5, 5, 5, 2, 1). The Hungarian matcher uses the same weights as costs.
        class_loss (`str`, defaults to ``"focal"``): the paper's sigmoid focal loss, or ``"release_bce"``: the
            released code's sigmoid BCE on the matched queries (``1.7 * sum / (B * Q)``), over Detic's federated
            categories when ``class_frequencies`` are given.
        class_frequencies (`list[float]`, *optional*): per-class training frequencies (image counts): the federated
            loss samples negative categories with probability ``frequency ** 0.5``.
        federated_num_categories (`int`, defaults to 50): categories per batch in the federated loss.
        objectness_loss (`str`, defaults to ``"bce"``): BCE, or ``"weighted_ce"``: the release's two-class
            cross-entropy where unmatched queries weigh ``no_object_weight``.
        no_object_weight (`float`, defaults to 0.4): the release's weight of the no-object class in the objectness loss.
        matcher_class_cost (`str`, defaults to ``"class"``): what the Hungarian matcher's class cost reads:
            ``"class"``, the target class's ``sigmoid(cls)``; ``"score"`` (the release's), the per-clip confidence
            ``sqrt(sigmoid(cls) * sigmoid(obj))`` for the target class, so the objectness takes part in the matching.
        segmenter_image_mean/std, vision_image_mean/std: normalisation of the two image encoders; the caption
            head re-normalises the segmenter's input.
    """

    model_type = "captionformer"
    sub_configs_defaults = {
        "segmenter_config": CaptionFormerSegmenterConfig,
        "vision_config": Blip2VisionConfig,
        "qformer_config": Blip2QFormerConfig,
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="opt"),
        "clip_vision_config": SubConfigSpec(config_class=CLIPVisionConfig, optional=True),
    }

    segmenter_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    clip_vision_config: dict | PreTrainedConfig | None = None

    clip_length: int = 1
    box_head_layers: int = 2
    box_only: bool = False
    box_format: str = "cxcywh"
    objectness_head_layers: int = 1
    use_text_classifier: bool = False
    text_embedding_dim: int = 512
    text_classifier_temperature: float = 0.02
    text_classifier_projection_layers: int = 1
    text_classifier_bias: bool = True
    clip_image_context_heads: int = 8
    num_query_tokens: int = 32
    score_threshold: float = 0.5

    k_match: int = 7
    match_cost_threshold: float = 0.7
    duplicate_iou_threshold: float | None = None
    t_match: int = 100
    hysteresis_low: float = 0.4
    hysteresis_high: float = 0.85
    hysteresis_min_length: int = 3
    t_agg: int = 32
    aggregation: str = "weighted"
    aggregation_num_heads: int = 8
    aggregation_position_embedding: bool = True
    aggregation_projection_first: bool = False
    video_inference_mode: str = "paper"
    presence_threshold: float = 0.2
    max_trajectories: int = 50
    caption_score_threshold: float = 0.3
    track_score_threshold: float = 0.0
    release_precision: str = "fp16_autocast"
    release_class_agnostic: bool = False
    release_score_class: int | None = None
    release_middle_clip_caption: bool = False
    release_captions_per_video: int = 1
    release_label_mapping: dict | None = None
    release_id2label: dict | None = None
    release_association: str = "top_k"
    release_association_weights: dict | None = None

    caption_frame: str = "middle"
    caption_mask_threshold: float = 0.5
    caption_mask_convention: str = "object"
    max_caption_length: int = 32
    caption_prompt_token_id: int | None = None
    vision_post_layernorm_eps: float | None = None

    freeze_segmenter: bool = False
    freeze_vision_encoder: bool = True
    freeze_language_model: bool = True

    class_weight: float = 2.0
    objectness_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    bbox_l1_weight: float = 5.0
    giou_weight: float = 2.0
    caption_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    class_loss: str = "focal"
    class_frequencies: list[float] | None = None
    federated_num_categories: int = 50
    objectness_loss: str = "bce"
    no_object_weight: float = 0.4
    matcher_class_cost: str = "class"

    segmenter_image_mean: list[float] | tuple[float, ...] = (0.485, 0.456, 0.406)
    segmenter_image_std: list[float] | tuple[float, ...] = (0.229, 0.224, 0.225)
    vision_image_mean: list[float] | tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    vision_image_std: list[float] | tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)

    initializer_range: float = 0.02
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        # the paper's architecture where a sub-config is not given (as transformers configs default to their
        # reference checkpoint)
        if self.segmenter_config is None:
            self.segmenter_config = dict(PAPER_SEGMENTER)
        if self.vision_config is None:
            self.vision_config = dict(PAPER_VISION)
        if self.text_config is None:
            self.text_config = dict(PAPER_TEXT)
        super().__post_init__(**kwargs)
        # The Q-Former cross-attends to the vision encoder: keep the two widths consistent.
        self.qformer_config.encoder_hidden_size = self.vision_config.hidden_size
        for name in ("segmenter_image_mean", "segmenter_image_std", "vision_image_mean", "vision_image_std"):
            value = getattr(self, name)
            if isinstance(value, tuple):
                setattr(self, name, list(value))
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        def positive_int(name: str, minimum: int = 1) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")

        def probability(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}")

        def non_negative(name: str) -> None:
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")

        for name in (
            "clip_length",
            "objectness_head_layers",
            "num_query_tokens",
            "k_match",
            "t_match",
            "hysteresis_min_length",
            "t_agg",
            "max_caption_length",
            "text_embedding_dim",
            "text_classifier_projection_layers",
            "clip_image_context_heads",
            "max_trajectories",
            "aggregation_num_heads",
            "release_captions_per_video",
        ):
            positive_int(name)
        positive_int("box_head_layers", minimum=0)
        for name in ("score_threshold", "hysteresis_low", "hysteresis_high", "caption_mask_threshold", "focal_alpha",
                     "presence_threshold", "caption_score_threshold", "track_score_threshold"):
            probability(name)
        if self.duplicate_iou_threshold is not None:
            probability("duplicate_iou_threshold")
        eps = self.vision_post_layernorm_eps
        if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1):
            raise ValueError(f"`vision_post_layernorm_eps` must be a number in (0, 1) or None, got {eps!r}")
        if self.class_loss not in ("focal", "release_bce"):
            raise ValueError(f"`class_loss` must be 'focal' or 'release_bce', got {self.class_loss!r}")
        if self.matcher_class_cost not in ("class", "score"):
            raise ValueError(f"`matcher_class_cost` must be 'class' or 'score', got {self.matcher_class_cost!r}")
        if self.objectness_loss not in ("bce", "weighted_ce"):
            raise ValueError(f"`objectness_loss` must be 'bce' or 'weighted_ce', got {self.objectness_loss!r}")
        probability("no_object_weight")
        positive_int("federated_num_categories")
        if self.class_frequencies is not None:
            if len(self.class_frequencies) != self.num_labels or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in self.class_frequencies
            ):
                raise ValueError(
                    f"`class_frequencies` must be {self.num_labels} non-negative numbers (one per class), got "
                    f"{len(self.class_frequencies)} values"
                )
        if self.video_inference_mode not in _VIDEO_INFERENCE_MODES:
            raise ValueError(
                f"`video_inference_mode` must be one of {tuple(_VIDEO_INFERENCE_MODES)} (more with "
                f"register_video_inference_mode), got {self.video_inference_mode!r}"
            )
        for name in (
            "class_weight",
            "objectness_weight",
            "mask_weight",
            "dice_weight",
            "bbox_l1_weight",
            "giou_weight",
            "caption_weight",
            "focal_gamma",
        ):
            non_negative(name)
        if (
            isinstance(self.match_cost_threshold, bool)
            or not isinstance(self.match_cost_threshold, (int, float))
            or not 0.0 <= self.match_cost_threshold <= 2.0
        ):
            raise ValueError(f"`match_cost_threshold` must be a number in [0, 2], got {self.match_cost_threshold!r}")
        if not (isinstance(self.text_classifier_temperature, (int, float)) and self.text_classifier_temperature > 0):
            raise ValueError(
                f"`text_classifier_temperature` must be a number > 0, got {self.text_classifier_temperature!r}"
            )
        if self.hysteresis_low > self.hysteresis_high:
            raise ValueError(
                f"`hysteresis_low` ({self.hysteresis_low}) must not exceed `hysteresis_high` ({self.hysteresis_high})"
            )
        if self.k_match > self.t_match:
            raise ValueError(f"`k_match` ({self.k_match}) must not exceed `t_match` ({self.t_match})")
        if self.aggregation not in _AGGREGATIONS:
            raise ValueError(f"`aggregation` must be one of {_AGGREGATIONS}, got {self.aggregation!r}")
        for name in ("aggregation_position_embedding", "aggregation_projection_first"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be a bool, got {getattr(self, name)!r}")
        if self.aggregation == "self-attention":
            width = self.text_config.hidden_size if self.aggregation_projection_first else self.qformer_config.hidden_size
            if width % self.aggregation_num_heads != 0:
                raise ValueError(
                    f"`aggregation='self-attention'`: its width ({width}) must be divisible by `aggregation_num_heads` "
                    f"({self.aggregation_num_heads})"
                )
        if self.caption_frame not in _CAPTION_FRAMES:
            raise ValueError(f"`caption_frame` must be one of {_CAPTION_FRAMES}, got {self.caption_frame!r}")
        if self.caption_mask_convention not in _CAPTION_MASK_CONVENTIONS:
            raise ValueError(
                f"`caption_mask_convention` must be one of {_CAPTION_MASK_CONVENTIONS}, "
                f"got {self.caption_mask_convention!r}"
            )
        if self.caption_prompt_token_id is not None and (
            isinstance(self.caption_prompt_token_id, bool)
            or not isinstance(self.caption_prompt_token_id, int)
            or not 0 <= self.caption_prompt_token_id < self.text_config.vocab_size
        ):
            raise ValueError(
                f"`caption_prompt_token_id` must be None or a token id in [0, {self.text_config.vocab_size}), "
                f"got {self.caption_prompt_token_id!r}"
            )
        if not isinstance(self.text_classifier_bias, bool):
            raise ValueError(f"`text_classifier_bias` must be a bool, got {self.text_classifier_bias!r}")
        if self.clip_vision_config is not None:
            if not self.use_text_classifier:
                raise ValueError("`clip_vision_config` (image context of the classifier) needs `use_text_classifier=True`")
            if self.clip_vision_config.projection_dim != self.text_embedding_dim:
                raise ValueError(
                    f"`clip_vision_config.projection_dim` ({self.clip_vision_config.projection_dim}) must equal "
                    f"`text_embedding_dim` ({self.text_embedding_dim})"
                )
            if self.text_embedding_dim % self.clip_image_context_heads != 0:
                raise ValueError(
                    f"`text_embedding_dim` ({self.text_embedding_dim}) must be divisible by "
                    f"`clip_image_context_heads` ({self.clip_image_context_heads})"
                )
        for name in ("release_class_agnostic", "release_middle_clip_caption"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be a bool, got {getattr(self, name)!r}")
        if self.release_score_class is not None and (
            isinstance(self.release_score_class, bool) or not isinstance(self.release_score_class, int)
            or not 0 <= self.release_score_class < self.num_labels
        ):
            raise ValueError(f"`release_score_class` must be None or a class id in [0, {self.num_labels}), got "
                             f"{self.release_score_class!r}")
        if self.release_label_mapping is not None:
            self.release_label_mapping = _int_mapping(self.release_label_mapping, "release_label_mapping", int)
        if self.release_id2label is not None:
            self.release_id2label = _int_mapping(self.release_id2label, "release_id2label", str)
        if self.release_association not in ("top_k", "hungarian_temporal", "greedy"):
            raise ValueError(f"`release_association` must be 'top_k', 'hungarian_temporal' or 'greedy', got "
                             f"{self.release_association!r}")
        weights = self.release_association_weights
        if weights is not None and (not isinstance(weights, dict) or not set(weights) <= {"embed", "class", "bbox", "giou"}
                                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                                               for v in weights.values())):
            raise ValueError("`release_association_weights` must map 'embed', 'class', 'bbox', 'giou' to numbers >= 0, "
                             f"got {weights!r}")
        if self.release_precision not in _RELEASE_PRECISIONS:
            raise ValueError(f"`release_precision` must be one of {_RELEASE_PRECISIONS}, got {self.release_precision!r}")
        if self.box_format not in ("cxcywh", "xywh"):
            raise ValueError(f"`box_format` must be 'cxcywh' or 'xywh', got {self.box_format!r}")
        if not isinstance(self.box_only, bool):
            raise ValueError(f"`box_only` must be a bool, got {self.box_only!r}")
        if self.box_only and self.box_head_layers == 0:
            raise ValueError("`box_only` needs a box head: `box_head_layers` must be >= 1")
        for name in ("segmenter_image_mean", "segmenter_image_std", "vision_image_mean", "vision_image_std"):
            value = getattr(self, name)
            if len(value) != 3 or not all(isinstance(v, (int, float)) for v in value):
                raise ValueError(f"`{name}` must be 3 numbers (one per RGB channel), got {value!r}")
            if name.endswith("std") and any(v <= 0 for v in value):
                raise ValueError(f"`{name}` must be > 0, got {value!r}")
        if self.num_labels is None or self.num_labels < 1:
            raise ValueError(f"`num_labels` must be >= 1, got {self.num_labels!r}")
        seg = self.segmenter_config
        if seg.num_queries < 1:
            raise ValueError(f"`segmenter_config.num_queries` must be >= 1, got {seg.num_queries}")
        if seg.hidden_dim % seg.num_attention_heads != 0:
            raise ValueError(
                f"`segmenter_config.hidden_dim` ({seg.hidden_dim}) must be divisible by "
                f"`segmenter_config.num_attention_heads` ({seg.num_attention_heads})"
            )
        if self.vision_config.image_size % self.vision_config.patch_size != 0:
            raise ValueError(
                f"`vision_config.image_size` ({self.vision_config.image_size}) must be divisible by "
                f"`vision_config.patch_size` ({self.vision_config.patch_size})"
            )
        if getattr(self.text_config, "is_encoder_decoder", False):
            raise ValueError(
                f"`text_config` must describe a causal (decoder-only) LM, got model_type {self.text_config.model_type!r}"
            )


__all__ = ["CaptionFormerConfig"]
