"""CaptionFormer models: clip segmenter + mask-conditioned BLIP-2 caption head (+ causal LM).

Remote-code safe: imports only torch/transformers/scipy/torchvision and single-dot siblings of this folder.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_utils import init
from transformers.models.mask2former.modeling_mask2former import Mask2FormerPreTrainedModel
from transformers.utils import ModelOutput

from .captioning_captionformer import CaptionFormerCaptionHead, aggregate_caption_queries
from .configuration_captionformer import CaptionFormerConfig
from .loss_captionformer import CaptionFormerLoss
from .segmentation_captionformer import (
    CaptionFormerClassHead,
    CaptionFormerClipSegmenterMixin,
    clip_scores,
)
from .tracking_captionformer import CaptionFormerTrackingSession

logger = logging.getLogger(__name__)


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


class CaptionFormerSegmenter(CaptionFormerClipSegmenterMixin, Mask2FormerPreTrainedModel):
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


class CaptionFormerPreTrainedModel(PreTrainedModel):
    config_class = CaptionFormerConfig
    config: CaptionFormerConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values_videos"
    input_modalities = ("video",)
    supports_gradient_checkpointing = True
    _keep_in_fp32_modules = ["query_tokens", "qformer"]
    _no_split_modules = ["Blip2Attention", "Blip2QFormerMultiHeadAttention", "Mask2FormerMaskedAttentionDecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, CaptionFormerCaptionHead):
            init.normal_(module.query_tokens, mean=0.0, std=self.config.initializer_range)

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
                f"{pixel_values_videos.shape[1]}; split the video into clips with the video processor"
            )
        if not pixel_values_videos.is_floating_point():
            raise TypeError(f"`pixel_values_videos` must be a float tensor, got {pixel_values_videos.dtype}")
        if min(pixel_values_videos.shape[-2:]) < 32:
            raise ValueError(
                f"`pixel_values_videos` frames must be at least 32x32 pixels, got {tuple(pixel_values_videos.shape[-2:])}"
            )


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
        content_size: tuple[int, int] | None = None,
        **kwargs,
    ) -> CaptionFormerModelOutput:
        r"""
        pixel_values_videos (`torch.FloatTensor` of shape `(B, T, 3, H, W)`): clips of `config.clip_length` frames,
            normalised with `config.segmenter_image_mean/std`.
        class_embeddings (`torch.FloatTensor` of shape `(C, E)`, *optional*): class text embeddings for the
            open-vocabulary classifier (defaults to the stored `class_embeddings` buffer).
        clip_image_embeds (`torch.FloatTensor` of shape `(B, T, E)`, *optional*): CLIP image embeddings of the
            frames for a classifier with image context (`config.clip_vision_config`); computed by the model's CLIP
            encoder when not given.
        content_size (`tuple[int, int]`, *optional*): `(h, w)` of the frames' content (the rest is padding), for
            the CLIP image embeddings.
        """
        self._check_pixel_values(pixel_values_videos, self.config.clip_length)
        if class_embeddings is not None and not self.config.use_text_classifier:
            raise ValueError("`class_embeddings` needs a model built with `use_text_classifier=True`")
        if clip_image_embeds is not None and self.config.clip_vision_config is None:
            raise ValueError("`clip_image_embeds` needs a classifier with image context (`clip_vision_config`)")
        layers, _, decoder_out = self.segmenter(
            pixel_values_videos,
            class_embeddings=class_embeddings,
            output_attentions=bool(output_attentions),
            clip_image_embeds=clip_image_embeds,
            content_size=content_size,
        )
        final = layers[-1]
        return CaptionFormerModelOutput(
            object_queries=final["object_queries"],
            class_logits=final["class_logits"],
            objectness_logits=final["objectness_logits"],
            scores=clip_scores(final["class_logits"], final["objectness_logits"]),
            pred_boxes=final["pred_boxes"],
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


class CaptionFormerForDenseVideoObjectCaptioning(CaptionFormerPreTrainedModel, GenerationMixin):
    """CaptionFormer with its causal LM: clip-level losses for training, captions for inference.

    Video-level inference (tracking, temporal aggregation) builds on :meth:`forward`, :meth:`encode_captions` and
    :meth:`generate_captions`.
    """

    def __init__(self, config: CaptionFormerConfig):
        super().__init__(config)
        self.model = CaptionFormerModel(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.criterion = CaptionFormerLoss(config)
        self.post_init()
        self.apply_freezing()

    # ------------------------------------------------------------------ plumbing
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
        **kwargs,
    ) -> CaptionFormerDenseCaptioningOutput:
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
        """
        outputs = self.model(
            pixel_values_videos,
            class_embeddings=class_embeddings,
            output_attentions=output_attentions,
            clip_image_embeds=clip_image_embeds,
        )
        result = CaptionFormerDenseCaptioningOutput(**dict(outputs.items()))
        if labels is None:
            return result
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
            loss_fn = self.caption_loss if caption_level == "clip" else self.video_caption_loss
            loss_dict["loss_caption"] = self.config.caption_weight * loss_fn(pixel_values_videos, outputs, labels, indices)
        if not loss_dict:
            raise ValueError("nothing to train: the segmenter is frozen and `labels` carry no `caption_ids`")
        result.loss = sum(loss_dict.values())
        result.loss_dict = loss_dict
        result.matched_indices = indices
        return result

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

    def caption_loss(self, pixel_values_videos, outputs, labels, indices) -> torch.Tensor:
        """LM cross-entropy of the matched objects' captions, averaged per caption then over captions (as the
        released code). Each clip is captioned from one random frame at training time."""
        device = pixel_values_videos.device
        batch_size, num_frames = pixel_values_videos.shape[:2]
        rows, queries, caption_ids, caption_masks = [], [], [], []
        for b, (src, tgt) in enumerate(indices):
            target = labels[b]
            if "caption_ids" not in target or len(src) == 0:
                continue
            ids = target["caption_ids"][tgt].to(device)
            mask = target.get("caption_attention_mask", torch.ones_like(target["caption_ids"]))[tgt].to(device)
            keep = mask.sum(1) > 0
            rows.append(torch.full((int(keep.sum()),), b, dtype=torch.long, device=device))
            queries.append(src.to(device)[keep])
            caption_ids.append(ids[keep])
            caption_masks.append(mask[keep])
        if not rows or sum(len(r) for r in rows) == 0:
            # no captioned object: a zero that still touches the trainable caption parameters
            return sum(p.sum() * 0.0 for p in self.model.caption_head.parameters() if p.requires_grad)
        rows, queries = torch.cat(rows), torch.cat(queries)
        length = max(x.shape[1] for x in caption_ids)
        pad = lambda x: nn.functional.pad(x, (0, length - x.shape[1]))  # noqa: E731
        caption_ids = torch.cat([pad(x) for x in caption_ids])
        caption_masks = torch.cat([pad(x) for x in caption_masks])

        if self.training:
            frame_of_clip = torch.randint(0, num_frames, (batch_size,), device=device)
        else:
            frame_of_clip = torch.full((batch_size,), self._caption_frame(num_frames), device=device)
        frames = pixel_values_videos[torch.arange(batch_size, device=device), frame_of_clip]
        masks = outputs.masks_logits[rows, queries, frame_of_clip[rows]]
        caption_queries = self.model.encode_captions(
            frames, rows, outputs.object_queries[rows, queries], masks,
            outputs.pred_boxes[rows, queries, frame_of_clip[rows]],
        )
        return self.caption_lm_loss(caption_queries, caption_ids, caption_masks)

    def video_caption_loss(self, pixel_values_videos, outputs, labels, indices) -> torch.Tensor:
        """Video-level caption loss: the clips of the batch come from one video; per track (``track_ids``), the
        Q-Former outputs of the clips where it is matched are summed with normalised detection-score weights and
        the LM is trained on the track's caption once."""
        device = pixel_values_videos.device
        batch_size, num_frames = pixel_values_videos.shape[:2]
        frame_of_clip = (
            torch.randint(0, num_frames, (batch_size,), device=device)
            if self.training
            else torch.full((batch_size,), self._caption_frame(num_frames), device=device)
        )
        per_track = {}
        for b, (src, tgt) in enumerate(indices):
            target = labels[b]
            if "track_ids" not in target or "caption_ids" not in target:
                raise ValueError("`caption_level='video'` needs `track_ids` and `caption_ids` in every clip's labels")
            mask = target.get("caption_attention_mask", torch.ones_like(target["caption_ids"]))
            for q, j in zip(src.tolist(), tgt.tolist()):
                if mask[j].sum() == 0:
                    continue
                entry = per_track.setdefault(int(target["track_ids"][j]), {"items": [], "ids": target["caption_ids"][j], "mask": mask[j]})
                entry["items"].append((b, q))
        if not per_track:
            return sum(p.sum() * 0.0 for p in self.model.caption_head.parameters() if p.requires_grad)
        items = [(b, q) for entry in per_track.values() for b, q in entry["items"]]
        rows = torch.tensor([b for b, _ in items], device=device)
        queries = torch.tensor([q for _, q in items], device=device)
        frames = pixel_values_videos[torch.arange(batch_size, device=device), frame_of_clip]
        caption_queries = self.model.encode_captions(
            frames, rows, outputs.object_queries[rows, queries], outputs.masks_logits[rows, queries, frame_of_clip[rows]],
            outputs.pred_boxes[rows, queries, frame_of_clip[rows]],
        )
        scores = outputs.scores[rows, queries].detach()
        aggregated, caption_ids, caption_masks, start = [], [], [], 0
        for entry in per_track.values():
            count = len(entry["items"])
            aggregated.append(
                aggregate_caption_queries(caption_queries[None, start : start + count], scores[None, start : start + count],
                                          method=self.config.aggregation)[0]
            )
            caption_ids.append(entry["ids"])
            caption_masks.append(entry["mask"])
            start += count
        length = max(x.shape[0] for x in caption_ids)
        pad = lambda x: nn.functional.pad(x, (0, length - x.shape[0]))  # noqa: E731
        return self.caption_lm_loss(
            torch.stack(aggregated),
            torch.stack([pad(x) for x in caption_ids]).to(device),
            torch.stack([pad(x) for x in caption_masks]).to(device),
        )

    def language_prefix(self, caption_queries: torch.Tensor) -> torch.Tensor:
        """LM input embeddings ``(N, L_q [+ 1], D_lm)`` that precede a caption: the projected Q-Former outputs, then
        ``config.caption_prompt_token_id``'s embedding when set (the release, like BLIP-2, appends OPT's BOS)."""
        prefix = self.model.caption_head.language_projection(caption_queries)
        embeddings = self.get_input_embeddings()
        prefix = prefix.to(embeddings.weight.dtype)
        token_id = self.config.caption_prompt_token_id
        if token_id is not None:
            prompt = embeddings(torch.full((prefix.shape[0], 1), token_id, dtype=torch.long, device=prefix.device))
            prefix = torch.cat([prefix, prompt], dim=1)
        return prefix

    def caption_lm_loss(self, caption_queries, caption_ids, caption_attention_mask) -> torch.Tensor:
        """Mean over captions of the per-caption token cross-entropy, the LM conditioned on ``caption_queries``."""
        prefix = self.language_prefix(caption_queries)
        token_embeds = self.get_input_embeddings()(caption_ids)
        inputs_embeds = torch.cat([prefix, token_embeds], dim=1)
        attention_mask = torch.cat(
            [torch.ones(prefix.shape[:2], dtype=caption_attention_mask.dtype, device=prefix.device), caption_attention_mask],
            dim=1,
        )
        logits = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask).logits
        num_prefix = prefix.shape[1]
        # token i of the caption is predicted at position num_prefix + i - 1
        pred = logits[:, num_prefix - 1 : -1].float()
        token_loss = nn.functional.cross_entropy(pred.transpose(1, 2), caption_ids, reduction="none")
        weights = caption_attention_mask.to(token_loss.dtype)
        per_caption = (token_loss * weights).sum(1) / weights.sum(1).clamp(min=1)
        return per_caption.mean()

    def _caption_frame(self, num_frames: int) -> int:
        return {"first": 0, "middle": num_frames // 2}.get(self.config.caption_frame, num_frames // 2)

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
        """Caption token ids ``(N, L)`` (new tokens only) for N objects.

        ``caption_queries`` is ``(N, L_q, D)`` (one clip per object) or ``(N, K, L_q, D)`` (K clips per object,
        aggregated with ``clip_scores`` ``(N, K)`` by ``aggregation``, default ``config.aggregation``)."""
        if caption_queries.ndim == 4:
            if clip_scores is None:
                raise ValueError("`clip_scores` (N, K) are needed to aggregate (N, K, L, D) caption queries")
            caption_queries = aggregate_caption_queries(
                caption_queries, clip_scores, valid, aggregation or self.config.aggregation
            )
        elif caption_queries.ndim != 3:
            raise ValueError(
                f"`caption_queries` must have shape (N, L, D) or (N, K, L, D), got {tuple(caption_queries.shape)}"
            )
        prefix = self.language_prefix(caption_queries)
        attention_mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        generate_kwargs.setdefault("max_new_tokens", self.config.max_caption_length)
        if prefix.shape[0] == 0:
            return torch.zeros(0, 0, dtype=torch.long, device=prefix.device)
        # this model's generation config (saved with it: beams, end tokens) rather than the bare LM's, updated with
        # the call's arguments
        generation_config = generate_kwargs.pop("generation_config", None) or copy.deepcopy(self.generation_config)
        model_kwargs = generation_config.update(**generate_kwargs)
        return self.language_model.generate(
            inputs_embeds=prefix, attention_mask=attention_mask, generation_config=generation_config, **model_kwargs
        )

    @torch.no_grad()
    def generate(
        self,
        pixel_values_videos: torch.Tensor,
        threshold: float | None = None,
        class_embeddings: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> dict:
        """Clip-level dense captioning: segment the clips, keep queries whose score S exceeds ``threshold``
        (default ``config.score_threshold``) and caption each from ``config.caption_frame``.

        Returns a dict with ``batch_indices`` / ``query_indices`` ``(N,)``, ``scores`` ``(N,)``, ``sequences``
        ``(N, L)`` and the clip ``outputs``."""
        outputs = self.model(pixel_values_videos, class_embeddings=class_embeddings)
        threshold = self.config.score_threshold if threshold is None else threshold
        batch_indices, query_indices = torch.nonzero(outputs.scores > threshold, as_tuple=True)
        frame = self._caption_frame(pixel_values_videos.shape[1])
        caption_queries = self.model.encode_captions(
            pixel_values_videos[:, frame],
            batch_indices,
            outputs.object_queries[batch_indices, query_indices],
            outputs.masks_logits[batch_indices, query_indices, frame],
            outputs.pred_boxes[batch_indices, query_indices, frame],
        )
        sequences = self.generate_captions(caption_queries, **generate_kwargs)
        return {
            "batch_indices": batch_indices,
            "query_indices": query_indices,
            "scores": outputs.scores[batch_indices, query_indices],
            "sequences": sequences,
            "outputs": outputs,
        }

    # ------------------------------------------------------------------ video level
    def _iter_clips(self, video):
        """Yield ``(clip (T, 3, H, W), number of real frames)``; a short last clip is padded with its last frame."""
        clip_length = self.config.clip_length

        def pad(clip):
            real = clip.shape[0]
            if real > clip_length:
                raise ValueError(f"a clip has {real} frames, more than config.clip_length={clip_length}")
            if real < clip_length:
                clip = torch.cat([clip, clip[-1:].expand(clip_length - real, *clip.shape[1:])])
            return clip, real

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
            for start in range(0, video.shape[0], clip_length):
                yield pad(video[start : start + clip_length])
            return
        if not hasattr(video, "__iter__"):
            raise TypeError(f"`video` must be a tensor or an iterable of clips, got {type(video).__name__}")
        for clip in video:
            if not isinstance(clip, torch.Tensor):
                raise TypeError(f"each clip must be a torch.Tensor, got {type(clip).__name__}")
            if clip.ndim == 5 and clip.shape[0] == 1:
                clip = clip[0]
            if clip.ndim != 4 or clip.shape[1] != 3 or clip.shape[0] == 0:
                raise ValueError(f"each clip must have shape (T, 3, H, W) with 1 <= T <= clip_length, got {tuple(clip.shape)}")
            yield pad(clip)

    @torch.no_grad()
    def track_video(
        self,
        video,
        *,
        threshold: float | None = None,
        clip_batch_size: int = 1,
        return_masks: bool = True,
        mask_size: tuple[int, int] | None = None,
        content_size: tuple[int, int] | None = None,
        caption: bool = True,
        aggregation: str | None = None,
        tokenizer=None,
        session: CaptionFormerTrackingSession | None = None,
        class_embeddings: torch.Tensor | None = None,
        progress: bool = False,
        **generate_kwargs,
    ) -> dict:
        """Streaming dense video object captioning: clips are segmented one batch at a time, linked into
        trajectories by a :class:`CaptionFormerTrackingSession`, and each final trajectory gets one caption from its
        temporally aggregated Q-Former queries. Only the tracker state (bounded) and the output (per-frame boxes and
        RLE masks) are kept, so memory does not grow with the video beyond the output itself.

        Args:
            video: segmenter-normalised frames ``(frames, 3, H, W)`` or ``(1, frames, 3, H, W)``, or an iterable of
                clips ``(T', 3, H, W)`` with ``T' <= config.clip_length`` (e.g. from a decoder); short clips are
                padded with their last frame and the padding is dropped from the output.
            threshold: per-clip score pruning threshold (default ``config.score_threshold``).
            clip_batch_size: clips per segmenter forward pass.
            return_masks: encode per-frame masks as COCO RLE strings in ``mask_rle``.
            mask_size: ``(height, width)`` the masks are encoded at (default: the input size); with
                ``content_size`` (the part of the input holding the image, the rest being bottom/right padding), the
                masks are cropped to the content and resized to ``mask_size`` (e.g. the original video size, which
                saves the post-processing a decode/re-encode).
            caption: generate one caption per trajectory (``caption_ids``; ``caption`` too with a ``tokenizer``).
            aggregation: ``"weighted"`` / ``"mean"`` / ``"best"`` (default ``config.aggregation``).
            session: a tracking session to use (default: one from the config).
            generate_kwargs: passed to the LM's ``generate`` (``num_beams``, ``max_new_tokens``...).

        Returns:
            ``{"num_frames", "input_size": [H, W], "trajectories": [...]}``: trajectories in the DESIGN.md format but
            in the model's input space: ``box`` is normalised ``(cx, cy, w, h)`` and ``mask_rle`` is at the input
            size. ``CaptionFormerVideoProcessor.post_process_dense_captions`` maps them to the original video
            (absolute ``[x, y, w, h]``, masks at the original size) and the processor decodes the captions.
        """
        if clip_batch_size < 1:
            raise ValueError(f"`clip_batch_size` must be >= 1, got {clip_batch_size}")
        if session is None:
            session = CaptionFormerTrackingSession.from_config(self.config, score_threshold=threshold)
        aggregation = aggregation or self.config.aggregation
        caption_frame = self._caption_frame(self.config.clip_length)
        device = self.device
        state = {"frames": 0, "input_size": None}
        iterator = self._iter_clips(video)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(desc="clips", unit="clip")

        def flush(batch):
            clips = torch.stack([c for c, _ in batch]).to(device=device, dtype=self.dtype)
            self._check_pixel_values(clips, self.config.clip_length)
            if state["input_size"] is None:
                state["input_size"] = tuple(clips.shape[-2:])
            elif tuple(clips.shape[-2:]) != state["input_size"]:
                raise ValueError(f"all clips must have the same size {state['input_size']}, got {tuple(clips.shape[-2:])}")
            outputs = self.model(clips, class_embeddings=class_embeddings, content_size=content_size)
            for b, (_, real) in enumerate(batch):
                self._track_clip(session, outputs, b, real, state, clips[b, caption_frame], caption, caption_frame,
                                 return_masks, mask_size, content_size)
                state["frames"] += real
            if bar is not None:
                bar.update(len(batch))

        batch = []
        for item in iterator:
            batch.append(item)
            if len(batch) == clip_batch_size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
        if bar is not None:
            bar.close()
        if state["frames"] == 0:
            raise ValueError("`video` has no frames")
        tracks = session.finalize()
        trajectories = self._trajectories(session, tracks, caption, aggregation, tokenizer, generate_kwargs)
        result = {"num_frames": state["frames"], "input_size": list(state["input_size"]), "trajectories": trajectories}
        if return_masks:
            result["mask_size"] = list(mask_size or state["input_size"])
        return result

    def _track_clip(self, session, outputs, b, real, state, caption_frame_pixels, caption, caption_frame, return_masks,
                    mask_size=None, content_size=None):
        scores = outputs.scores[b]
        keep = torch.nonzero(scores >= session.score_threshold).flatten()
        payloads = [None] * scores.shape[0]
        if len(keep):
            boxes = outputs.pred_boxes[b, keep, :real].float().cpu().tolist()  # (K, real, 4) normalised cxcywh
            low_res = outputs.masks_logits[b, keep, :real]  # (K, real, h, w)
            visible = (low_res > 0).flatten(2).any(-1).cpu()
            rles = (
                self._encode_masks(low_res, state["input_size"], content_size, mask_size) if return_masks else None
            )
            for k, query in enumerate(keep.tolist()):
                frames = []
                for t in range(real):
                    if not visible[k, t]:
                        continue
                    entry = {"frame_index": state["frames"] + t, "box": [round(v, 5) for v in boxes[k][t]]}
                    if rles is not None:
                        entry["mask_rle"] = rles[k][t]
                    frames.append(entry)
                payloads[query] = {"frames": frames}
        results = session.update(outputs.object_queries[b], scores, outputs.class_logits[b].sigmoid(), payloads)
        wanting = [(q, track_id) for q, track_id, wants in results if wants and caption]
        if wanting:
            queries = torch.tensor([q for q, _ in wanting], device=scores.device)
            caption_queries = self.model.encode_captions(
                caption_frame_pixels[None],
                torch.zeros(len(wanting), dtype=torch.long, device=scores.device),
                outputs.object_queries[b, queries],
                outputs.masks_logits[b, queries, caption_frame],
                outputs.pred_boxes[b, queries, caption_frame],
            )
            for (_, track_id), caption_query in zip(wanting, caption_queries):
                session.set_caption_query(track_id, caption_query)

    @staticmethod
    def _encode_masks(low_res, input_size, content_size=None, mask_size=None):
        """Per-frame COCO RLE strings ``[K][T]`` of mask logits ``(K, T, h, w)``: upsampled to the input size,
        cropped to ``content_size`` and resized to ``mask_size`` (both default to the input size)."""
        from pycocotools import mask as mask_utils

        num, frames = low_res.shape[:2]
        logits = low_res.float().flatten(0, 1)[:, None]
        input_size = tuple(input_size)
        content_size = tuple(content_size or input_size)
        mask_size = tuple(mask_size or content_size)
        # one resize: the whole padded input at the scale that brings the content to mask_size, then a crop
        full = (
            round(mask_size[0] * input_size[0] / content_size[0]),
            round(mask_size[1] * input_size[1] / content_size[1]),
        )
        logits = nn.functional.interpolate(logits, size=full, mode="bilinear", align_corners=False)
        logits = logits[..., : mask_size[0], : mask_size[1]]
        binary = (logits[:, 0] > 0).cpu().numpy().astype(np.uint8)  # (K*T, H, W)
        encoded = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        strings = [rle["counts"].decode("ascii") for rle in encoded]
        return [strings[k * frames : (k + 1) * frames] for k in range(num)]

    def _trajectories(self, session, tracks, caption, aggregation, tokenizer, generate_kwargs) -> list[dict]:
        id2label = self.config.id2label or {}
        trajectories, to_caption, queries = [], [], []
        for track in tracks:
            frames = []
            for observation in track.observations:
                for entry in observation.payload.get("frames", []):
                    frames.append({**entry, "score": round(observation.score, 4)})
            category = None
            category_id = None
            if track.class_prob_sum is not None:
                category_id = int(track.class_prob_sum.argmax())
                category = id2label.get(category_id, str(category_id))
            trajectory = {
                "track_id": int(track.track_id),
                "score": round(float(np.mean([o.score for o in track.observations])), 4),
                "category": category,
                "category_id": category_id,
                "caption": "",
                "frames": frames,
            }
            trajectories.append(trajectory)
            if caption:
                samples, sample_scores = session.caption_samples(track)
                if samples is not None:
                    to_caption.append(len(trajectories) - 1)
                    queries.append(aggregate_caption_queries(samples[None], sample_scores[None], method=aggregation)[0])
        if to_caption:
            stacked = torch.stack(queries).to(self.device)
            sequences = self.generate_captions(stacked, **generate_kwargs)
            for index, sequence in zip(to_caption, sequences):
                trajectories[index]["caption_ids"] = sequence.tolist()
                if tokenizer is not None:
                    text = tokenizer.decode(sequence, skip_special_tokens=True)
                    trajectories[index]["caption"] = text.split("\n")[0].strip()
        return trajectories

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
        config = CaptionFormerConfig(
            segmenter_config=seg_config.to_dict(),
            vision_config=blip_model.config.vision_config.to_dict(),
            qformer_config=blip_model.config.qformer_config.to_dict(),
            text_config=blip_model.config.text_config.to_dict(),
            num_query_tokens=blip_model.config.num_query_tokens,
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
