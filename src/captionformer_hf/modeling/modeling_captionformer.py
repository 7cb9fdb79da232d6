"""CaptionFormer models: clip segmenter + mask-conditioned BLIP-2 caption head (+ causal LM), and video inference.

Video inference goes one way: the video processor cuts clips and prepares pixel values; ``model(clips,
video_session=session)`` segments them and links them into trajectories (all video state is in the
:class:`CaptionFormerVideoSession` from :meth:`~CaptionFormerForDenseVideoObjectCaptioning.init_video_session`);
:meth:`~CaptionFormerForDenseVideoObjectCaptioning.finalize_video_session` captions the trajectories; the processor
post-processes once. The trajectory format is described in ``docs/format.md``.

Remote-code safe: imports only torch/transformers/scipy/torchvision and single-dot siblings of this folder; the
training losses (``loss_captionformer``, ``matching_captionformer``: torchvision ops) load on first use.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_utils import init
from transformers.models.mask2former.modeling_mask2former import Mask2FormerPreTrainedModel
from transformers.utils import ModelOutput, logging

from .captioning_captionformer import (
    ORDER_AWARE_AGGREGATIONS,
    CaptionFormerCaptionHead,
    CaptionFormerTemporalAggregation,
    uniform_clip_indices,
)
from .configuration_captionformer import CaptionFormerConfig
from .segmentation_captionformer import (
    CaptionFormerClassHead,
    CaptionFormerClipSegmenterMixin,
    clip_scores,
)
from .release_tracking_captionformer import ReleaseVideoLevel  # noqa: F401  (registers the "release" mode)
from .tracking_captionformer import PaperVideoLevel, duplicate_queries  # noqa: F401  (registers "paper")
from .video_level_captionformer import (
    CaptionFormerVideoOutput,
    CaptionFormerVideoSession,
    check_positive_ints,
    video_level_from_config,
)

logger = logging.get_logger(__name__)


@dataclass
class CaptionFormerModelOutput(ModelOutput):
    r"""
    Clip-level outputs. B = clips in the batch, Q = object queries, T = frames per clip, C = classes,
    H/4 x W/4 = mask resolution (a quarter of the input).

    object_queries (`torch.FloatTensor` of shape `(B, Q, D)`): final (layer-normed) decoder states.
    class_logits (`torch.FloatTensor` of shape `(B, Q, C)`): sigmoid class logits.
    objectness_logits (`torch.FloatTensor` of shape `(B, Q)`): objectness logits.
    scores (`torch.FloatTensor` of shape `(B, Q)`): per-clip confidence S = sqrt(max_c p_c * p_obj).
    pred_boxes (`torch.FloatTensor` of shape `(B, Q, T, 4)`): per-frame boxes, normalised (cx, cy, w, h).
    masks_logits (`torch.FloatTensor` of shape `(B, Q, T, H/4, W/4)`): per-frame mask logits.
    auxiliary_outputs (`list[dict]`): the same heads on every intermediate decoder layer (for auxiliary losses).
    attentions (`tuple[torch.FloatTensor]`, *optional*): decoder attentions when `output_attentions=True`.
    """

    object_queries: torch.FloatTensor | None = None
    class_logits: torch.FloatTensor | None = None
    objectness_logits: torch.FloatTensor | None = None
    scores: torch.FloatTensor | None = None
    pred_boxes: torch.FloatTensor | None = None
    masks_logits: torch.FloatTensor | None = None
    auxiliary_outputs: list | None = None
    attentions: tuple | None = None


@dataclass
class CaptionFormerDenseCaptioningOutput(CaptionFormerModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*): weighted sum of all losses (when `labels` are given).
    loss_dict (`dict[str, torch.FloatTensor]`, *optional*): every weighted loss term (`loss_class`,
        `loss_objectness`, `loss_mask`, `loss_dice`, `loss_bbox`, `loss_giou`, `loss_caption`, auxiliary terms
        suffixed `_{layer}`).
    matched_indices (`list[tuple[torch.LongTensor, torch.LongTensor]]`, *optional*): per clip, the
        (query, target) pairs of the final layer's Hungarian matching.
    """

    loss: torch.FloatTensor | None = None
    loss_dict: dict | None = None
    matched_indices: list | None = None


@dataclass
class CaptionFormerTrackingOutput(CaptionFormerModelOutput):
    r"""
    Clip outputs of a forward pass with a `video_session` (see `CaptionFormerModelOutput`) and how the clips' queries
    were linked.

    track_ids (`torch.LongTensor` of shape `(B, Q)`, on the CPU): the track each query joined, `-1` for queries
        in no track.
    mask_entries (`torch.BoolTensor` of shape `(B, Q, T)`, on the outputs' device): the (query, frame) pairs whose
        masks the video output may list, under the key (`track_ids[b, q]`, `frame_indices[b][t]`): the video
        processor's `post_process_clip_masks` encodes these.
    frame_indices (`list[list[int]]`): the source frame index of each real frame of each clip.
    """

    track_ids: torch.LongTensor | None = None
    mask_entries: torch.BoolTensor | None = None
    frame_indices: list | None = None


@dataclass
class CaptionFormerGenerateOutput(ModelOutput):
    r"""
    Clip-level captions of `generate(..., return_dict_in_generate=True)`. N = kept queries (score S above the
    threshold), in clip order, then query order.

    sequences (`torch.LongTensor` of shape `(N, L)`): caption token ids (new tokens only).
    batch_indices (`torch.LongTensor` of shape `(N,)`): the clip of each caption.
    query_indices (`torch.LongTensor` of shape `(N,)`): the query of each caption.
    detection_scores (`torch.FloatTensor` of shape `(N,)`): the per-clip score S of each query.
    clip_outputs (`CaptionFormerModelOutput`): the clip forward's outputs.
    """

    sequences: torch.LongTensor | None = None
    batch_indices: torch.LongTensor | None = None
    query_indices: torch.LongTensor | None = None
    detection_scores: torch.FloatTensor | None = None
    clip_outputs: CaptionFormerModelOutput | None = None


def _composite_modules(model: PreTrainedModel) -> list[tuple[PreTrainedModel, nn.Module]]:
    """``(owner, module)`` for each module of ``model`` without parameters or buffers of its own but with children,
    children before parents (transformers' initialisation order), each with the nearest pre-trained model holding it
    (whose ``_init_weights`` applies to it)."""
    found = []

    def visit(module: nn.Module, owner: PreTrainedModel) -> None:
        for child in module.children():
            visit(child, child if isinstance(child, PreTrainedModel) else owner)
        own = [*module.parameters(recurse=False), *(b for b in module.buffers(recurse=False) if b is not None)]
        if not own and next(module.children(), None) is not None:
            found.append((owner, module))

    visit(model, model)
    return found


class _CompositeInitialization:
    """Transformers' ``initialize_weights``, plus the composite modules it skips in a model defined outside the library.

    For such a model (``is_custom_code()``), transformers marks every module without parameters or buffers of its own
    as initialised without calling ``_init_weights`` on it: it cannot tell a module whose tensors all live in its
    children from one whose tensors were all loaded. Transformers' own models initialise exactly such composites:
    Mask2Former's deformable attention (its sampling grid), decoder layers (xavier) and prediction blocks; here also
    the class head (prior bias) and the linear temporal aggregation. So the composites not yet initialised when the
    call starts get, once transformers' pass is done, the ``_init_weights`` of the nearest pre-trained model holding
    them, children before parents. Every ``_init_weights`` in the tree uses transformers' guarded init functions,
    which leave a tensor flagged as loaded alone: on ``from_pretrained`` only missing weights are initialised.
    (This replaces switching ``is_custom_code`` off while initialising: that switch also decides whether transformers
    applies its checkpoint conversions, which must not reach our segmenter.)"""

    def initialize_weights(self):
        pending = [(owner, module) for owner, module in _composite_modules(self)
                   if not getattr(module, "_is_hf_initialized", False)]
        super().initialize_weights()
        if self.is_custom_code():
            with torch.no_grad(), init.guard_torch_init_functions():
                for owner, module in pending:
                    owner._init_weights(module)


class CaptionFormerSegmenter(_CompositeInitialization, CaptionFormerClipSegmenterMixin, Mask2FormerPreTrainedModel):
    """The clip segmenter as a Mask2Former pre-trained model, so that Mask2Former's own weight initialisation
    (deformable attention, decoder, embeddings) applies to it."""

    def __init__(self, config: CaptionFormerConfig):
        Mask2FormerPreTrainedModel.__init__(self, config.segmenter_config)
        self.build(config)
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, CaptionFormerClassHead):
            prior = torch.tensor(0.01)
            bias = float(-torch.log((1 - prior) / prior))
            if module.use_text_classifier:
                if module.bias is not None:
                    init.constant_(module.bias, bias)
            else:
                init.constant_(module.classifier.bias, bias)


class CaptionFormerPreTrainedModel(_CompositeInitialization, PreTrainedModel):
    config_class = CaptionFormerConfig
    config: CaptionFormerConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values_videos"
    input_modalities = ("video",)
    supports_gradient_checkpointing = True
    _keep_in_fp32_modules = ["query_tokens", "qformer"]
    _no_split_modules = ["Blip2Attention", "Blip2QFormerMultiHeadAttention", "Mask2FormerMaskedAttentionDecoderLayer"]
    _supports_sdpa = True

    @classmethod
    def from_pretrained(cls, *args, strict_weights: bool = True, **kwargs):
        """``PreTrainedModel.from_pretrained``, and a damaged checkpoint is refused at load with the names of the bad
        tensors: weights missing from it, stored with a non-float dtype for a float parameter, or not finite; a
        shape mismatch in one line. ``strict_weights=False`` lets missing weights start from their initialisation
        (a checkpoint continued with a changed architecture, e.g. a new aggregation layer)."""
        wants_info = kwargs.get("output_loading_info", False)
        kwargs["output_loading_info"] = True
        try:
            model, info = super().from_pretrained(*args, **kwargs)
        except RuntimeError as error:
            lines = [line.strip() for line in str(error).splitlines() if "size mismatch" in line or "shape" in line]
            if lines:
                raise ValueError("the checkpoint does not fit this model: " + "; ".join(lines[:5])
                                 + (f" (and {len(lines) - 5} more)" if len(lines) > 5 else "")) from None
            raise
        problems = []
        if strict_weights and info["missing_keys"]:
            missing = sorted(info["missing_keys"])
            problems.append(f"{len(missing)} weights missing from the checkpoint ({', '.join(missing[:5])}"
                            + (", ..." if len(missing) > 5 else "") + ")")
        if info.get("mismatched_keys"):
            problems.append(f"weights of another shape: {', '.join(str(k) for k in list(info['mismatched_keys'])[:5])}")
        stored = _stored_dtypes(args[0] if args else kwargs.get("pretrained_model_name_or_path"), kwargs)
        parameters = dict(model.named_parameters())
        wrong_type = sorted(name for name, dtype in stored.items()
                            if name in parameters and parameters[name].is_floating_point() and dtype in _NOT_FLOAT)
        if wrong_type:
            problems.append(f"weights stored as integers ({', '.join(wrong_type[:5])}"
                            + (", ..." if len(wrong_type) > 5 else "") + ")")
        not_finite = sorted(name for name, tensor in parameters.items()
                            if tensor.is_floating_point() and tensor.device.type != "meta"
                            and not bool(torch.isfinite(tensor).all()))
        if not_finite:
            problems.append(f"weights with NaN or infinite values ({', '.join(not_finite[:5])}"
                            + (", ..." if len(not_finite) > 5 else "") + ")")
        if problems:
            raise ValueError("the checkpoint is damaged: " + "; ".join(problems))
        return (model, info) if wants_info else model

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, CaptionFormerCaptionHead):
            init.normal_(module.query_tokens, mean=0.0, std=self.config.initializer_range)
        if isinstance(module, CaptionFormerTemporalAggregation):
            module.initialize(init, self.config.initializer_range)

    @staticmethod
    def _check_pixel_values(pixel_values_videos, clip_length: int) -> None:
        if not isinstance(pixel_values_videos, torch.Tensor):
            raise TypeError(
                f"`pixel_values_videos` must be a torch.Tensor of shape (batch, frames, 3, height, width), "
                f"got {type(pixel_values_videos).__name__}"
            )
        if pixel_values_videos.ndim != 5:
            raise ValueError(
                "`pixel_values_videos` must have 5 dimensions (batch, frames, 3, height, width), got shape "
                f"{tuple(pixel_values_videos.shape)}"
            )
        if pixel_values_videos.shape[2] != 3:
            raise ValueError(
                f"`pixel_values_videos` must have 3 channels at dim 2, got shape {tuple(pixel_values_videos.shape)}"
            )
        if pixel_values_videos.shape[1] != clip_length:
            raise ValueError(
                f"`pixel_values_videos` clips must have config.clip_length={clip_length} frames, got "
                f"{pixel_values_videos.shape[1]}: the model's forward takes clips. For a whole video use "
                "`captionformer_hf.predict_video(model, processor, video)`, `model.track_video(...)` or "
                "`pipeline('dense-video-object-captioning')`; the video processor's `iter_clip_batches` cuts clips"
            )
        if not pixel_values_videos.is_floating_point():
            raise TypeError(f"`pixel_values_videos` must be a float tensor, got {pixel_values_videos.dtype}")
        if min(pixel_values_videos.shape[-2:]) < 32:
            raise ValueError(
                f"`pixel_values_videos` frames must be at least 32x32 pixels, got {tuple(pixel_values_videos.shape[-2:])}"
            )


_NOT_FLOAT = {"I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL"}


def _stored_dtypes(source, kwargs) -> dict:
    """``{tensor name: safetensors dtype}`` of a local checkpoint folder's weights (empty when it cannot be read:
    a Hub id not in the cache, another format)."""
    import json
    import os
    import struct

    if not isinstance(source, (str, os.PathLike)) or not os.path.isdir(source):
        return {}
    folder = os.path.join(source, kwargs.get("subfolder") or "")
    names = [name for name in os.listdir(folder) if name.endswith(".safetensors")] if os.path.isdir(folder) else []
    dtypes = {}
    for name in names:
        try:
            with open(os.path.join(folder, name), "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(min(length, 100 << 20)))
        except (OSError, ValueError, struct.error):
            continue
        dtypes.update({key: value.get("dtype") for key, value in header.items() if isinstance(value, dict)})
    return dtypes


# what the processor returns beside the pixel values: geometry the clip forward does not need
# the processor's other outputs, for post-processing: accepted by forward, unused
_PROCESSOR_KEYS = ("original_sizes", "content_sizes", "num_frames")


def _check_unused_kwargs(kwargs: dict) -> None:
    unknown = sorted(k for k in kwargs if k not in _PROCESSOR_KEYS)
    if unknown:
        raise TypeError(f"unexpected arguments: {', '.join(unknown)}")


class CaptionFormerModel(CaptionFormerPreTrainedModel):
    """Clip segmenter and caption head without the language model."""

    def __init__(self, config: CaptionFormerConfig):
        super().__init__(config)
        self.segmenter = CaptionFormerSegmenter(config)
        self.caption_head = CaptionFormerCaptionHead(config)
        self.post_init()

    def forward(
        self,
        pixel_values_videos: torch.Tensor,
        class_embeddings: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        clip_image_embeds: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> CaptionFormerModelOutput | tuple:
        r"""
        pixel_values_videos (`torch.FloatTensor` of shape `(B, T, 3, H, W)`): clips of `config.clip_length` frames,
            normalised with `config.segmenter_image_mean/std` (what the video processor returns for a clip; the
            processor's other outputs, `original_sizes`, `content_sizes` and `num_frames`, are accepted and unused:
            they are for post-processing).
        class_embeddings (`torch.FloatTensor` of shape `(C, E)`, *optional*): class text embeddings for the
            open-vocabulary classifier (defaults to the stored `class_embeddings` buffer).
        clip_image_embeds (`torch.FloatTensor` of shape `(B, T, E)`, *optional*): CLIP image embeddings of the
            frames for a classifier with image context (`config.clip_vision_config`); computed by the model's CLIP
            encoder when not given.
        pixel_mask (`torch.LongTensor` of shape `(B, H, W)`, *optional*): 1 on each clip's frame content, 0 on the
            padding (the processor's); the CLIP image embeddings are computed on the content only.
        """
        self._check_pixel_values(pixel_values_videos, self.config.clip_length)
        _check_unused_kwargs(kwargs)
        output = self.segment_clips(pixel_values_videos, class_embeddings, output_attentions, clip_image_embeds,
                                    pixel_mask)
        return output if return_dict is not False else output.to_tuple()

    def segment_clips(
        self,
        pixel_values_videos: torch.Tensor,
        class_embeddings: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        clip_image_embeds: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
    ) -> CaptionFormerModelOutput:
        """The clip forward on clips of ``T <= config.clip_length`` frames (the released code runs the short last
        clip of a video as it is; boxes are the first ``T`` of the box head's ``clip_length``)."""
        if class_embeddings is not None and not self.config.use_text_classifier:
            raise ValueError("`class_embeddings` needs a model built with `use_text_classifier=True`")
        if clip_image_embeds is not None and self.config.clip_vision_config is None:
            raise ValueError("`clip_image_embeds` needs a classifier with image context (`clip_vision_config`)")
        layers, _, decoder_out = self.segmenter(
            pixel_values_videos,
            class_embeddings=class_embeddings,
            output_attentions=bool(output_attentions),
            clip_image_embeds=clip_image_embeds,
            pixel_mask=pixel_mask,
        )
        final = layers[-1]
        num_frames = pixel_values_videos.shape[1]
        return CaptionFormerModelOutput(
            object_queries=final["object_queries"],
            class_logits=final["class_logits"],
            objectness_logits=final["objectness_logits"],
            scores=clip_scores(final["class_logits"], final["objectness_logits"]),
            pred_boxes=final["pred_boxes"][:, :, :num_frames],
            masks_logits=final["masks_logits"],
            auxiliary_outputs=layers[:-1],
            attentions=decoder_out.attentions,
        )

    def encode_captions(
        self,
        frames: torch.Tensor,
        frame_indices: torch.Tensor,
        object_queries: torch.Tensor,
        masks_logits: torch.Tensor,
        boxes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Q-Former outputs ``(N, 1 + num_query_tokens, D_qformer)`` of N objects.

        Args:
            frames: ``(F, 3, H, W)`` segmenter-normalised frames (each encoded once by the vision encoder).
            frame_indices: ``(N,)`` index into ``frames`` of the frame each object is captioned from.
            object_queries: ``(N, D)`` object queries. masks_logits: ``(N, h, w)`` their masks on that frame.
            boxes: ``(N, 4)`` their boxes on that frame (needed by box-only models, ``config.box_only``).
        """
        if self.config.box_only and boxes is None:
            raise ValueError("`boxes` are needed: this box-only model restricts the caption head to boxes")
        if object_queries.shape[0] == 0:
            hidden = self.config.qformer_config.hidden_size
            return object_queries.new_zeros(0, 1 + self.config.num_query_tokens, hidden)
        vision_tokens = self.caption_head.encode_frames(frames)
        return self.caption_head(vision_tokens[frame_indices], object_queries, masks_logits, boxes)


class _ReleaseBeamNormalisation:
    """A view of a causal LM whose beam search scores a hypothesis that ends with an end token as transformers 4.28
    did (the release's version): its summed log-probabilities over its length *without* the end token (a hypothesis
    cut at the maximum length counts every token in both). transformers 5 counts the end token (``(cur_len + 1 -
    prompt_len) ** length_penalty`` in ``_update_finished_beams``), so short and long finished beams can swap rank.
    Everything else is the LM itself: the view only rescales, in ``_update_finished_beams``, the log-probabilities of
    candidates that end with an end token by ``(L / (L - 1)) ** length_penalty`` (L: generated length with it)."""

    def __init__(self, model, eos_token_ids: torch.Tensor):
        self.__dict__.update(_model=model, _eos=eos_token_ids)

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, *args, **kwargs):
        return self._model(*args, **kwargs)

    def _update_finished_beams(self, **kwargs):
        length = kwargs["cur_len"] + 1 - kwargs["decoder_prompt_len"]  # generated tokens with the one just chosen
        last = kwargs["topk_running_sequences"][:, :, kwargs["cur_len"]]
        ended = torch.isin(last, self._eos.to(last.device))
        scale = (length / (length - 1)) ** kwargs["length_penalty"] if length > 1 else float("inf")
        log_probs = kwargs["topk_log_probs"]
        kwargs["topk_log_probs"] = torch.where(ended, log_probs * scale, log_probs)
        return type(self._model)._update_finished_beams(self._model, **kwargs)


def release_beam_search(model, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False,
                        **model_kwargs):
    """transformers' beam search (``GenerationMixin._beam_search``) with the release's length normalisation of finished
    hypotheses (see :class:`_ReleaseBeamNormalisation`); a ``custom_generate`` of ``generate``. Used when the
    generation config has ``beam_length_normalisation="release"`` (converted official checkpoints)."""
    eos = generation_config._eos_token_tensor
    eos = torch.zeros(0, dtype=torch.long) if eos is None else eos.reshape(-1)
    return GenerationMixin._beam_search(_ReleaseBeamNormalisation(model, eos), input_ids, logits_processor,
                                        stopping_criteria, generation_config, synced_gpus, **model_kwargs)


class CaptionFormerForDenseVideoObjectCaptioning(CaptionFormerPreTrainedModel, GenerationMixin):
    """CaptionFormer with its causal LM: clip-level losses for training, captions for inference.

    Video-level inference (tracking, temporal aggregation) builds on :meth:`forward`, :meth:`encode_captions` and
    :meth:`generate_captions`.
    """

    def __init__(self, config: CaptionFormerConfig):
        super().__init__(config)
        self.model = CaptionFormerModel(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()
        self.apply_freezing()

    # ------------------------------------------------------------------ plumbing
    @property
    def criterion(self):
        """The training losses (:class:`CaptionFormerLoss`, with its Hungarian matcher), built on first use: their
        imports (losses, matcher, torchvision ops) are training-only, and inference never loads them. No weights."""
        loss = self.__dict__.get("_criterion")
        if loss is None:
            from .loss_captionformer import CaptionFormerLoss

            loss = CaptionFormerLoss(self.config)
            self.__dict__["_criterion"] = loss  # not a submodule: nothing in the state dict or the module tree
        return loss.to(self.device)

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings):
        self.language_model.set_output_embeddings(new_embeddings)

    def apply_freezing(self) -> None:
        """Freeze what the config asks for (segmenter for two-stage training, ViT and LM as in the release)."""
        self.freeze_segmenter(self.config.freeze_segmenter)
        self.model.caption_head.vision_model.requires_grad_(not self.config.freeze_vision_encoder)
        self.language_model.requires_grad_(not self.config.freeze_language_model)

    def set_clip_length(self, clip_length: int) -> None:
        """Change the frames per clip (e.g. continue a model trained on clips of 2 frames with clips of 5). The box
        head's last layer predicts one box per frame: its per-frame weights are averaged and repeated for the new
        length (the released code uses one box head for every frame)."""
        check_positive_ints(clip_length=clip_length)
        old = self.config.clip_length
        if clip_length == old:
            return
        segmenter = self.model.segmenter
        if segmenter.box_head is not None:
            linear = [m for m in segmenter.box_head.modules() if isinstance(m, nn.Linear)][-1]
            with torch.no_grad():
                weight = linear.weight.view(old, 4, -1).mean(0).repeat(clip_length, 1)
                bias = linear.bias.view(old, 4).mean(0).repeat(clip_length)
            linear.weight = nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
            linear.bias = nn.Parameter(bias, requires_grad=linear.bias.requires_grad)
            linear.out_features = 4 * clip_length
        self.config.clip_length = clip_length
        segmenter.clip_length = clip_length

    def freeze_segmenter(self, freeze: bool = True) -> None:
        """Two-stage training switch: (un)freeze the whole clip segmenter (backbone, pixel decoder, decoder, heads).
        A frozen segmenter is also kept in eval mode by :meth:`train`."""
        self.config.freeze_segmenter = bool(freeze)
        self.model.segmenter.requires_grad_(not freeze)
        if self.model.segmenter.clip_image_encoder is not None:  # always frozen (pre-extracted in the release)
            self.model.segmenter.clip_image_encoder.requires_grad_(False)
        if freeze:
            self.model.segmenter.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_segmenter:
            self.model.segmenter.eval()
        if self.config.freeze_vision_encoder:
            self.model.caption_head.vision_model.eval()
        return self

    # ------------------------------------------------------------------ forward / loss
    def forward(
        self,
        pixel_values_videos: torch.Tensor,
        labels: list[dict] | None = None,
        class_embeddings: torch.Tensor | None = None,
        num_masks: float | None = None,
        caption_level: str = "clip",
        output_attentions: bool | None = None,
        clip_image_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        video_session: CaptionFormerVideoSession | None = None,
        frame_indices: list[list[int]] | None = None,
        pixel_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> CaptionFormerDenseCaptioningOutput | CaptionFormerTrackingOutput | tuple:
        r"""
        pixel_values_videos (`torch.FloatTensor` of shape `(B, T, 3, H, W)`): clips (see `CaptionFormerModel`).
        labels (`list[dict]`, *optional*): one dict per clip with
            - `class_labels` `(N,)` int64 class ids,
            - `mask_labels` `(N, T, H', W')` float {0, 1} masks (any resolution),
            - `boxes` `(N, T, 4)` normalised (cx, cy, w, h),
            - `valid` `(N, T)` bool, object visible in the frame (default: mask non-empty),
            - `caption_ids` `(N, L)` int64 caption tokens (ending with the end-of-caption token) and
              `caption_attention_mask` `(N, L)`; objects whose mask row is all zero have no caption.
        num_masks (`float`, *optional*): number of target objects used to normalise the losses (pass the global
            count under data parallelism).
        caption_level (`str`, defaults to `"clip"`): `"clip"`: one caption loss per matched object and clip;
            `"video"`: the batch holds clips of one video and `labels` carry `track_ids`; each track's Q-Former
            outputs over the clips where it is matched are aggregated (detection-score weighted, the paper's
            temporal aggregation) into one video-level query with one LM loss.
        clip_image_embeds (`torch.FloatTensor` of shape `(B, T, E)`, *optional*): see `CaptionFormerModel`.
        video_session (`CaptionFormerVideoSession`, *optional*): video inference: the clips (consecutive, in order;
            the last may have fewer than `clip_length` frames) are segmented and linked into the session's
            trajectories; returns a `CaptionFormerTrackingOutput`. See `init_video_session`.
        frame_indices (`list[list[int]]`, *optional*): with `video_session`, the source frame index of each real
            frame of each clip (the video processor's `iter_clip_batches` gives them); default: consecutive.
        pixel_mask (`torch.LongTensor` of shape `(B, H, W)`, *optional*): see `CaptionFormerModel`.
        """
        if video_session is not None:
            if labels is not None:
                raise ValueError("`labels` (training) and `video_session` (inference) cannot be given together")
            _check_unused_kwargs(kwargs)
            result = self._forward_video_session(
                video_session, pixel_values_videos, frame_indices, class_embeddings, clip_image_embeds, pixel_mask
            )
            return result if return_dict is not False else result.to_tuple()
        if frame_indices is not None:
            raise ValueError("`frame_indices` are only used with a `video_session`")
        outputs = self.model(
            pixel_values_videos,
            class_embeddings=class_embeddings,
            output_attentions=output_attentions,
            clip_image_embeds=clip_image_embeds,
            pixel_mask=pixel_mask,
            **kwargs,
        )
        result = CaptionFormerDenseCaptioningOutput(**dict(outputs.items()))
        if labels is None:
            return result if return_dict is not False else result.to_tuple()
        self._check_labels(labels, pixel_values_videos)
        layers = list(outputs.auxiliary_outputs) + [
            {
                "object_queries": outputs.object_queries,
                "class_logits": outputs.class_logits,
                "objectness_logits": outputs.objectness_logits,
                "pred_boxes": outputs.pred_boxes,
                "masks_logits": outputs.masks_logits,
            }
        ]
        if self.config.freeze_segmenter:
            indices = self.criterion.matcher(layers[-1], labels)
            loss_dict = {}
        else:
            loss_dict, indices = self.criterion(layers, labels, num_masks=num_masks)
        if caption_level not in ("clip", "video"):
            raise ValueError(f"`caption_level` must be 'clip' or 'video', got {caption_level!r}")
        if self.config.caption_weight > 0 and any("caption_ids" in t for t in labels):
            loss_dict["loss_caption"] = self.config.caption_weight * self.caption_loss(
                pixel_values_videos, outputs, labels, indices, caption_level
            )
        if not loss_dict:
            raise ValueError("nothing to train: the segmenter is frozen and `labels` carry no `caption_ids`")
        result.loss = sum(loss_dict.values())
        result.loss_dict = loss_dict
        result.matched_indices = indices
        return result if return_dict is not False else result.to_tuple()

    def training_caption_frames(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        """Frame of each clip fed to the caption head ``(B,)``: a random one while training (as the released code),
        ``config.caption_frame`` otherwise."""
        batch_size, num_frames = pixel_values_videos.shape[:2]
        device = pixel_values_videos.device
        if self.training:
            return torch.randint(0, num_frames, (batch_size,), device=device)
        return torch.full((batch_size,), self.caption_frame_index(num_frames), device=device)

    def caption_inputs(self, pixel_values_videos, outputs, labels, indices, caption_level: str = "clip"):
        """What the LM conditions on for the caption loss, with the targets: ``(caption_queries, clip_scores,
        valid, caption_ids, caption_attention_mask)``; clip level, ``caption_queries`` ``(N, L, D)`` (one per matched
        object and clip, from one frame of the clip) and no scores; video level, ``(N, K, L, D)`` with
        ``clip_scores`` / ``valid`` ``(N, K)``: per track, its matched clips sampled as at inference. ``None`` when
        nothing in the batch has a caption."""
        from .loss_captionformer import clip_caption_targets, pad_track_clips, video_caption_targets

        device = pixel_values_videos.device
        if caption_level == "clip":
            targets = clip_caption_targets(labels, indices, device)
        else:
            targets = video_caption_targets(labels, indices, self.caption_clip_indices, device)
        if targets is None:
            return None
        rows, queries = targets[0], targets[1]
        frame_of_clip = self.training_caption_frames(pixel_values_videos)
        frames = pixel_values_videos[torch.arange(pixel_values_videos.shape[0], device=device), frame_of_clip]
        caption_queries = self.model.encode_captions(
            frames, rows, outputs.object_queries[rows, queries], outputs.masks_logits[rows, queries, frame_of_clip[rows]],
            outputs.pred_boxes[rows, queries, frame_of_clip[rows]],
        )
        if caption_level == "clip":
            return caption_queries, None, None, targets[2], targets[3]
        counts, caption_ids, caption_masks = targets[2:]
        padded, clip_scores, valid = pad_track_clips(caption_queries, outputs.scores[rows, queries].detach().float(),
                                                     counts)
        return padded, clip_scores, valid, caption_ids, caption_masks

    def caption_logits(self, caption_queries, caption_ids, caption_attention_mask, clip_scores=None, valid=None):
        """The LM's logits ``(N, P + L, V)`` over the caption prefix of ``caption_queries`` (aggregated over clips
        when ``(N, K, L, D)``) followed by the caption tokens (teacher forcing)."""
        prefix = self.language_prefix(caption_queries, clip_scores, valid)
        token_embeds = self.get_input_embeddings()(caption_ids)
        inputs_embeds = torch.cat([prefix, token_embeds.to(prefix.dtype)], dim=1)
        attention_mask = torch.cat(
            [torch.ones(prefix.shape[:2], dtype=caption_attention_mask.dtype, device=prefix.device),
             caption_attention_mask],
            dim=1,
        )
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask).logits

    def caption_loss(self, pixel_values_videos, outputs, labels, indices, caption_level: str = "clip") -> torch.Tensor:
        """The caption LM loss of the matched objects (``caption_level`` ``"clip"`` or ``"video"``, see ``forward``):
        :meth:`caption_inputs`, :meth:`caption_logits`, then ``caption_token_loss`` on tensors."""
        from .loss_captionformer import caption_token_loss

        inputs = self.caption_inputs(pixel_values_videos, outputs, labels, indices, caption_level)
        if inputs is None:  # a zero that still reaches the trainable caption parameters
            return sum(p.sum() * 0.0 for p in self.model.caption_head.parameters() if p.requires_grad)
        caption_queries, clip_scores, valid, caption_ids, caption_masks = inputs
        logits = self.caption_logits(caption_queries, caption_ids, caption_masks, clip_scores, valid)
        return caption_token_loss(logits, caption_ids, caption_masks)

    @staticmethod
    def _check_labels(labels, pixel_values_videos) -> None:
        if not isinstance(labels, (list, tuple)) or len(labels) != pixel_values_videos.shape[0]:
            raise ValueError(
                f"`labels` must be a list with one dict per clip ({pixel_values_videos.shape[0]}), got "
                f"{type(labels).__name__} of length {len(labels) if hasattr(labels, '__len__') else '?'}"
            )
        num_frames = pixel_values_videos.shape[1]
        for i, target in enumerate(labels):
            for key in ("class_labels", "mask_labels", "boxes"):
                if key not in target:
                    raise ValueError(f"`labels[{i}]` is missing `{key}`")
            n = len(target["class_labels"])
            if target["mask_labels"].ndim != 4 or target["mask_labels"].shape[:2] != (n, num_frames):
                raise ValueError(
                    f"`labels[{i}]['mask_labels']` must have shape ({n}, {num_frames}, H, W), got "
                    f"{tuple(target['mask_labels'].shape)}"
                )
            if tuple(target["boxes"].shape) != (n, num_frames, 4):
                raise ValueError(
                    f"`labels[{i}]['boxes']` must have shape ({n}, {num_frames}, 4), got {tuple(target['boxes'].shape)}"
                )

    def language_prefix(
        self,
        caption_queries: torch.Tensor,
        clip_scores: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        aggregation: str | None = None,
    ) -> torch.Tensor:
        """LM input embeddings ``(N, L', D_lm)`` that precede a caption: the projected Q-Former outputs, then
        ``config.caption_prompt_token_id``'s embedding when set (the release, like BLIP-2, appends OPT's BOS).

        ``caption_queries`` is ``(N, L, D)`` (one clip per object) or ``(N, K, L, D)`` (K clips per object in time
        order, aggregated by ``aggregation``, default ``config.aggregation``, with the clips' detection scores
        ``clip_scores`` ``(N, K)``; ``valid`` ``(N, K)`` marks real clips). See ``CaptionFormerTemporalAggregation``."""
        head = self.model.caption_head
        projection = head.language_projection
        if caption_queries.ndim == 4:
            if self.config.aggregation_projection_first:
                caption_queries = projection(caption_queries.to(projection.weight.dtype))
            caption_queries = head.aggregation(caption_queries, clip_scores, valid, aggregation)
            prefix = caption_queries if self.config.aggregation_projection_first else projection(
                caption_queries.to(projection.weight.dtype))
        elif caption_queries.ndim == 3:
            prefix = projection(caption_queries.to(projection.weight.dtype))
        else:
            raise ValueError(
                f"`caption_queries` must have shape (N, L, D) or (N, K, L, D), got {tuple(caption_queries.shape)}"
            )
        embeddings = self.get_input_embeddings()
        prefix = prefix.to(embeddings.weight.dtype)
        token_id = self.config.caption_prompt_token_id
        if token_id is not None:
            prompt = embeddings(torch.full((prefix.shape[0], 1), token_id, dtype=torch.long, device=prefix.device))
            prefix = torch.cat([prefix, prompt], dim=1)
        return prefix

    def caption_clip_indices(self, count: int, aggregation: str | None = None) -> list[int]:
        """Which of a trajectory's ``count`` time-ordered clips its caption aggregates (``config.t_agg`` of them,
        sampled uniformly; exactly ``t_agg``, repeating clips of a short trajectory, for the order-aware
        aggregations)."""
        method = aggregation or self.config.aggregation
        return uniform_clip_indices(count, self.config.t_agg, exact=method in ORDER_AWARE_AGGREGATIONS)

    def caption_frame_index(self, num_frames: int) -> int:
        """Frame of a clip of ``num_frames`` frames fed to the caption head at inference (``config.caption_frame``:
        ``"middle"``, ``"first"``, or ``"random"``: drawn with ``torch.randint`` on the global generator, as the
        released code does)."""
        if self.config.caption_frame == "random":
            return int(torch.randint(num_frames, (1,)))
        return 0 if self.config.caption_frame == "first" else num_frames // 2

    # ------------------------------------------------------------------ inference
    def encode_captions(self, frames, frame_indices, object_queries, masks_logits, boxes=None) -> torch.Tensor:
        """See :meth:`CaptionFormerModel.encode_captions`."""
        return self.model.encode_captions(frames, frame_indices, object_queries, masks_logits, boxes)

    @torch.no_grad()
    def generate_captions(
        self,
        caption_queries: torch.Tensor,
        clip_scores: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        aggregation: str | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """Caption token ids ``(N, L)`` (new tokens only) for N objects (the LM's ``GenerateOutput`` when this call
        passes ``return_dict_in_generate=True``; the generation config's own setting is not followed here).

        ``caption_queries`` is ``(N, L_q, D)`` (one clip per object) or ``(N, K, L_q, D)`` (K clips per object in time
        order, aggregated with ``clip_scores`` ``(N, K)`` by ``aggregation``, default ``config.aggregation``; see
        :meth:`language_prefix`)."""
        if caption_queries.ndim == 4 and clip_scores is None and (aggregation or self.config.aggregation) in (
                "weighted", "best"):
            raise ValueError("`clip_scores` (N, K) are needed to aggregate (N, K, L, D) caption queries")
        prefix = self.language_prefix(caption_queries, clip_scores, valid, aggregation)
        attention_mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        generate_kwargs.setdefault("max_new_tokens", self.config.max_caption_length)
        if prefix.shape[0] == 0:
            return torch.zeros(0, 0, dtype=torch.long, device=prefix.device)
        # this model's generation config (saved with it: beams, end tokens) rather than the bare LM's, updated with
        # the call's arguments
        generation_config = copy.deepcopy(generate_kwargs.pop("generation_config", None) or self.generation_config)
        # token ids unless this call asks for a GenerateOutput, whatever the generation config says
        generation_config.return_dict_in_generate = False
        model_kwargs = generation_config.update(**generate_kwargs)
        if getattr(generation_config, "beam_length_normalisation", "transformers") == "release" and (
                generation_config.num_beams or 1) > 1 and not generation_config.do_sample:
            model_kwargs.setdefault("custom_generate", release_beam_search)
        return self.language_model.generate(
            inputs_embeds=prefix, attention_mask=attention_mask, generation_config=generation_config, **model_kwargs
        )

    @torch.no_grad()
    def generate(
        self,
        pixel_values_videos: torch.Tensor,
        threshold: float | None = None,
        class_embeddings: torch.Tensor | None = None,
        return_dict_in_generate: bool | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor | CaptionFormerGenerateOutput:
        """Clip-level dense captioning, as ``GenerationMixin.generate``: segment the clips, keep the queries whose
        score S exceeds ``threshold`` (default ``config.score_threshold``), caption each from
        ``config.caption_frame``.

        Returns the caption token ids ``(N, L)`` of the N kept queries (in clip, then query order); with
        ``return_dict_in_generate=True`` (or the generation config's), a :class:`CaptionFormerGenerateOutput` that
        also says which query each caption belongs to. ``generate_kwargs`` go to the LM's ``generate``."""
        if return_dict_in_generate is None:
            return_dict_in_generate = bool(self.generation_config.return_dict_in_generate)
        outputs = self.model(pixel_values_videos, class_embeddings=class_embeddings)
        threshold = self.config.score_threshold if threshold is None else threshold
        batch_indices, query_indices = torch.nonzero(outputs.scores > threshold, as_tuple=True)
        frame = self.caption_frame_index(pixel_values_videos.shape[1])
        caption_queries = self.model.encode_captions(
            pixel_values_videos[:, frame],
            batch_indices,
            outputs.object_queries[batch_indices, query_indices],
            outputs.masks_logits[batch_indices, query_indices, frame],
            outputs.pred_boxes[batch_indices, query_indices, frame],
        )
        sequences = self.generate_captions(caption_queries, **generate_kwargs)
        if not return_dict_in_generate:
            return sequences
        return CaptionFormerGenerateOutput(
            sequences=sequences,
            batch_indices=batch_indices,
            query_indices=query_indices,
            detection_scores=outputs.scores[batch_indices, query_indices],
            clip_outputs=outputs,
        )

    # ------------------------------------------------------------------ video level
    def init_video_session(
        self,
        threshold: float | None = None,
        caption: bool = True,
        **tracker_overrides,
    ) -> CaptionFormerVideoSession:
        """A new :class:`CaptionFormerVideoSession` holding one video's tracking and caption state.

        Args:
            threshold: the paper mode's per-clip score pruning threshold (default ``config.score_threshold``;
                release mode has none: a ``ValueError``).
            caption: keep what the caption head needs for the clips aggregation can sample (``False``: no captions).
            tracker_overrides: tracker settings other than the config's (``k_match``, ``t_match``, ``t_agg``,
                ``match_cost_threshold``, ``hysteresis_low`` / ``hysteresis_high`` / ``hysteresis_min_length``;
                release mode, box models: ``presence_threshold``).
        """
        video_level = video_level_from_config(self.config, threshold=threshold, **tracker_overrides)
        return CaptionFormerVideoSession(video_level, caption=caption)

    def pad_clips(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        """Clips ``(B, T', 3, H, W)`` with ``T' <= config.clip_length`` frames (the end of a video) padded to
        ``config.clip_length`` by repeating their last frame."""
        clip_length = self.config.clip_length
        num_frames = pixel_values_videos.shape[1]
        if num_frames > clip_length:
            raise ValueError(f"a clip has {num_frames} frames, more than config.clip_length={clip_length}")
        if num_frames == 0:
            raise ValueError("a clip has no frames")
        if num_frames < clip_length:
            last = pixel_values_videos[:, -1:]
            pixel_values_videos = torch.cat([pixel_values_videos, last.expand(-1, clip_length - num_frames, -1, -1, -1)], 1)
        return pixel_values_videos

    @torch.no_grad()
    def _forward_video_session(
        self,
        session: CaptionFormerVideoSession,
        pixel_values_videos: torch.Tensor,
        frame_indices=None,
        class_embeddings=None,
        clip_image_embeds=None,
        pixel_mask=None,
    ) -> CaptionFormerTrackingOutput:
        if not isinstance(session, CaptionFormerVideoSession):
            raise TypeError(
                f"`video_session` must be a CaptionFormerVideoSession (model.init_video_session()), got "
                f"{type(session).__name__}"
            )
        if not isinstance(pixel_values_videos, torch.Tensor) or pixel_values_videos.ndim != 5:
            self._check_pixel_values(pixel_values_videos, self.config.clip_length)
        real_frames = pixel_values_videos.shape[1]
        batch_size = pixel_values_videos.shape[0]
        if frame_indices is None:
            frame_indices = [
                list(range(session.num_frames + b * real_frames, session.num_frames + (b + 1) * real_frames))
                for b in range(batch_size)
            ]
        elif len(frame_indices) != batch_size or any(not 1 <= len(f) <= real_frames for f in frame_indices):
            raise ValueError(
                f"`frame_indices` must give, for each of the {batch_size} clips, the source index of each of its real "
                f"frames (at most {real_frames}), got {frame_indices!r}"
            )
        session.check_input_size(tuple(pixel_values_videos.shape[-2:]))
        video_level = session.video_level
        if video_level.pads_short_clips:
            clips = self.pad_clips(pixel_values_videos)
            with video_level.autocast(clips.device):
                outputs = self.model(
                    clips, class_embeddings=class_embeddings, clip_image_embeds=clip_image_embeds, pixel_mask=pixel_mask
                )
        else:  # a short last clip runs as it is
            self._check_pixel_values(pixel_values_videos[:, :1].expand(-1, self.config.clip_length, -1, -1, -1),
                                     self.config.clip_length)
            if real_frames > self.config.clip_length:
                raise ValueError(f"a clip has {real_frames} frames, more than config.clip_length={self.config.clip_length}")
            clips = pixel_values_videos
            with video_level.autocast(clips.device):
                outputs = self.model.segment_clips(clips, class_embeddings, None, clip_image_embeds, pixel_mask)
        outputs = video_level.prepare_outputs(outputs)
        track_ids = video_level.step(self, session, clips, outputs, frame_indices)
        session.num_frames += sum(len(f) for f in frame_indices)
        entries = video_level.mask_entries(outputs, track_ids, frame_indices)
        return CaptionFormerTrackingOutput(**dict(outputs.items()), track_ids=track_ids, mask_entries=entries,
                                           frame_indices=[list(f) for f in frame_indices])

    @torch.no_grad()
    def finalize_video_session(
        self,
        session: CaptionFormerVideoSession,
        caption: bool = True,
        aggregation: str | None = None,
        caption_batch_size: int = 64,
        **generate_kwargs,
    ) -> CaptionFormerVideoOutput:
        """End of the video: the session's video-level algorithm returns the trajectories (paper mode: hysteresis
        filter, then one caption per trajectory from ``t_agg`` clips sampled uniformly over its life; release mode:
        the release's selection and caption plans). The vision encoder and Q-Former run here, ``caption_batch_size``
        pairs at a time, aggregated by ``aggregation`` (default ``config.aggregation``); ``generate_kwargs`` go to
        the LM's ``generate``."""
        if not isinstance(session, CaptionFormerVideoSession):
            raise TypeError(f"`session` must be a CaptionFormerVideoSession, got {type(session).__name__}")
        if session.finalized:
            raise ValueError("this video session is already finalized")
        if session.num_frames == 0:
            raise ValueError("`video` has no frames: the session saw no clip")
        session.finalized = True
        return session.video_level.finalize(self, session, caption, aggregation, caption_batch_size, generate_kwargs)

    def _clip_batches(self, video, batch_size: int):
        """``(pixel_values (B, T', 3, H, W), frame_indices or None, pixel_mask or None)`` batches of a normalised
        video tensor, an iterable of clips ``(T', 3, H, W)`` / clip batches ``(B, T', 3, H, W)``, or the batches the
        video processor's ``iter_clip_batches`` yields."""
        clip_length = self.config.clip_length
        if isinstance(video, torch.Tensor):
            if video.ndim == 5:
                if video.shape[0] != 1:
                    raise ValueError(
                        f"`video` must hold one video: (1, frames, 3, H, W) or (frames, 3, H, W), got {tuple(video.shape)}"
                    )
                video = video[0]
            if video.ndim != 4 or video.shape[1] != 3:
                raise ValueError(f"`video` must have shape (frames, 3, H, W), got {tuple(video.shape)}")
            if video.shape[0] == 0:
                raise ValueError("`video` has no frames")
            items = (video[start : start + clip_length] for start in range(0, video.shape[0], clip_length))
        elif isinstance(video, (str, bytes)) or not hasattr(video, "__iter__"):
            raise TypeError(
                f"`video` must be a normalised frames tensor or an iterable of clips, got {type(video).__name__}; "
                "to caption a video file use `captionformer_hf.predict_video(model, processor, video)` or the pipeline"
            )
        else:
            items = iter(video)
        pending = []

        def flush():
            batch = torch.stack(pending)
            pending.clear()
            return batch, None, None

        for item in items:
            pixel_values = item.get("pixel_values_videos") if isinstance(item, Mapping) else getattr(item, "pixel_values_videos", None)
            if pixel_values is not None:  # a processor batch: used as it is
                if pending:
                    yield flush()
                frame_indices = item["frame_indices"] if isinstance(item, Mapping) else getattr(item, "frame_indices", None)
                content = item.get("pixel_mask") if isinstance(item, Mapping) else getattr(item, "pixel_mask", None)
                yield pixel_values, frame_indices, content
                continue
            if not isinstance(item, torch.Tensor):
                raise TypeError(f"each clip must be a torch.Tensor, got {type(item).__name__}")
            if item.ndim == 5:
                if pending:
                    yield flush()
                yield item, None, None
                continue
            if item.ndim != 4 or item.shape[1] != 3 or not 1 <= item.shape[0] <= clip_length:
                raise ValueError(
                    f"each clip must have shape (T, 3, H, W) with 1 <= T <= config.clip_length={clip_length}, got "
                    f"{tuple(item.shape)}"
                )
            if pending and (item.shape != pending[0].shape):
                yield flush()
            pending.append(item)
            if len(pending) == batch_size:
                yield flush()
        if pending:
            yield flush()

    @torch.no_grad()
    def track_video(
        self,
        video,
        *,
        threshold: float | None = None,
        clip_batch_size: int = 1,
        caption: bool = True,
        aggregation: str | None = None,
        session: CaptionFormerVideoSession | None = None,
        class_embeddings: torch.Tensor | None = None,
        progress: bool = False,
        on_clip_batch=None,
        **generate_kwargs,
    ) -> CaptionFormerVideoOutput:
        """Streaming dense video object captioning, a thin loop over :meth:`init_video_session`, ``forward`` with
        the session and :meth:`finalize_video_session`: clips are segmented a batch at a time and linked into
        trajectories; each final trajectory gets one caption from its temporally aggregated Q-Former queries. In paper
        mode only the session state (bounded) and the output grow, so memory does not grow with the video beyond the
        output; release mode keeps every clip's scores, boxes and caption inputs (masks only on the caption head's patch
        grid) until the end, as the released code keeps its outputs.

        Args:
            video: segmenter-normalised frames ``(frames, 3, H, W)`` or ``(1, frames, 3, H, W)``, an iterable of clips
                ``(T', 3, H, W)`` (``T' <= config.clip_length``; short clips are padded with their last frame and the
                padding is not reported), of clip batches ``(B, T', 3, H, W)``, or of the video processor's
                ``iter_clip_batches`` batches (which carry the source frame indices).
            threshold: the paper mode's per-clip score pruning threshold (default ``config.score_threshold``).
            clip_batch_size: clips per segmenter forward pass (for tensors and clip iterables).
            caption: generate one caption per trajectory (``caption_ids``).
            aggregation: ``"weighted"`` / ``"mean"`` / ``"best"`` / ``"concat"`` / ``"linear"`` /
                ``"self-attention"`` (default ``config.aggregation``; release mode: only the session's).
            session: a session to use (default: :meth:`init_video_session` with ``threshold``).
            on_clip_batch: called with each forward's :class:`CaptionFormerTrackingOutput` before the next batch
                (``predict_video`` hands the masks to the processor's ``post_process_clip_masks`` this way).
            generate_kwargs: passed to the LM's ``generate`` (``num_beams``, ``max_new_tokens``, ``do_sample``...).

        Returns:
            :class:`CaptionFormerVideoOutput` (boxes in the model's input space, no masks; the video processor's
            ``post_process_dense_captions`` maps them to the original video and joins the masks that
            ``post_process_clip_masks`` encoded from each batch, the processor decodes captions).
        """
        check_positive_ints(clip_batch_size=clip_batch_size)
        if session is None:
            session = self.init_video_session(threshold=threshold, caption=caption)
        bar = logging.tqdm(desc="clips", unit="clip") if progress else None
        for pixel_values, frame_indices, pixel_mask in self._clip_batches(video, clip_batch_size):
            outputs = self(
                pixel_values.to(device=self.device, dtype=self.dtype),
                video_session=session,
                frame_indices=frame_indices,
                class_embeddings=class_embeddings,
                pixel_mask=pixel_mask,
            )
            if on_clip_batch is not None:
                on_clip_batch(outputs)
            if bar is not None:
                bar.update(pixel_values.shape[0])
        if bar is not None:
            bar.close()
        return self.finalize_video_session(session, caption=caption, aggregation=aggregation, **generate_kwargs)

    # ------------------------------------------------------------------ composition
    @classmethod
    def from_pretrained_components(
        cls,
        segmenter: str,
        blip2: str,
        clip_length: int = 1,
        **config_kwargs,
    ) -> "CaptionFormerForDenseVideoObjectCaptioning":
        """Build CaptionFormer from a Mask2Former checkpoint (``Mask2FormerForUniversalSegmentation`` or
        ``Mask2FormerModel``) and a BLIP-2 checkpoint (``Blip2ForConditionalGeneration``, decoder-only LM), each a
        Hub id or a local path. The class head starts from Mask2Former's class predictor (its no-object row
        dropped) when the vocabularies agree; the box, objectness and object-query projection heads are new."""
        from transformers import Blip2ForConditionalGeneration, Mask2FormerForUniversalSegmentation

        seg_model = Mask2FormerForUniversalSegmentation.from_pretrained(segmenter)
        blip_model = Blip2ForConditionalGeneration.from_pretrained(blip2)
        if blip_model.config.text_config.is_encoder_decoder:
            raise ValueError(f"`blip2` ({blip2}) must use a decoder-only LM (e.g. OPT), not an encoder-decoder")
        seg_config = seg_model.config
        config_kwargs.setdefault("id2label", dict(seg_config.id2label))
        query_tokens = config_kwargs.pop("num_query_tokens", blip_model.config.num_query_tokens)
        if query_tokens != blip_model.config.num_query_tokens:
            raise ValueError(
                f"`num_query_tokens` ({query_tokens}) must be the BLIP-2 checkpoint's ({blip_model.config.num_query_tokens})"
            )
        config = CaptionFormerConfig(
            segmenter_config=seg_config.to_dict(),
            vision_config=blip_model.config.vision_config.to_dict(),
            qformer_config=blip_model.config.qformer_config.to_dict(),
            text_config=blip_model.config.text_config.to_dict(),
            num_query_tokens=query_tokens,
            clip_length=clip_length,
            **config_kwargs,
        )
        model = cls(config)
        segmenter_module = model.model.segmenter
        segmenter_module.pixel_level_module.load_state_dict(seg_model.model.pixel_level_module.state_dict())
        segmenter_module.transformer_module.load_state_dict(seg_model.model.transformer_module.state_dict())
        head = segmenter_module.class_head
        if not config.use_text_classifier and seg_model.class_predictor.out_features == config.num_labels + 1:
            with torch.no_grad():
                head.classifier.weight.copy_(seg_model.class_predictor.weight[:-1])
                head.classifier.bias.copy_(seg_model.class_predictor.bias[:-1])
        caption_head = model.model.caption_head
        caption_head.vision_model.load_state_dict(blip_model.vision_model.state_dict())
        caption_head.qformer.load_state_dict(blip_model.qformer.state_dict())
        caption_head.language_projection.load_state_dict(blip_model.language_projection.state_dict())
        with torch.no_grad():
            caption_head.query_tokens.copy_(blip_model.query_tokens)
        model.language_model.load_state_dict(blip_model.language_model.state_dict())
        logger.info("Built CaptionFormer from segmenter=%s and blip2=%s", segmenter, blip2)
        return model


__all__ = [
    "CaptionFormerModelOutput",
    "CaptionFormerDenseCaptioningOutput",
    "CaptionFormerPreTrainedModel",
    "CaptionFormerModel",
    "CaptionFormerForDenseVideoObjectCaptioning",
]
