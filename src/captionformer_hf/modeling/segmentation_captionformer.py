"""Clip-level segmenter of CaptionFormer.

A Mask2Former (transformers blocks: AutoBackbone, ``Mask2FormerPixelLevelModule``, ``Mask2FormerTransformerModule``
and its masked-attention decoder) extended to clips of T frames as in Mask2Former-VIS: the pixel level runs per
frame, the decoder's queries attend to the features of all T frames (flattened over time, with a temporal sine
embedding added to the 2D one), and every query predicts one mask per frame. For T = 1 the segmenter computes
exactly what ``Mask2FormerModel`` computes (covered by a parity test), so image Mask2Former checkpoints load as is.

On top: an MLP box head (per-frame boxes), a class head (linear, or cosine against class text embeddings for open
vocabulary), an objectness head and the per-clip score S = sqrt(max_c sigmoid(cls) * sigmoid(obj)).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerMaskPredictor,
    Mask2FormerMLPPredictionHead,
    Mask2FormerPixelLevelModule,
    Mask2FormerTransformerModule,
)


def rasterize_boxes(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Cells of an ``h x w`` grid inside normalised (cx, cy, w, h) boxes ``(..., 4)`` -> bool ``(..., h, w)``.

    The release's ``attn_masking_from_bbox``: with (x, y) the top-left corner, columns ``[x0, x1)`` with
    ``x0 = floor(clamp(x * w, 0, w - 1))`` and ``x1 = floor(clamp(x0 + box_w * w, 0, w - 1))`` (so the last column
    and row are never inside), rows likewise."""
    height, width = size
    x = boxes[..., 0] - boxes[..., 2] / 2
    y = boxes[..., 1] - boxes[..., 3] / 2
    x0 = (x * width).clamp(0, width - 1).long()
    y0 = (y * height).clamp(0, height - 1).long()
    x1 = (x0 + boxes[..., 2] * width).clamp(0, width - 1).long()
    y1 = (y0 + boxes[..., 3] * height).clamp(0, height - 1).long()
    rows = torch.arange(height, device=boxes.device)
    cols = torch.arange(width, device=boxes.device)
    in_y = (rows >= y0[..., None]) & (rows < y1[..., None])  # (..., h)
    in_x = (cols >= x0[..., None]) & (cols < x1[..., None])  # (..., w)
    return in_y[..., :, None] & in_x[..., None, :]


class CaptionFormerVideoMaskPredictor(Mask2FormerMaskPredictor):
    """Mask2Former's mask predictor for clips: pixel embeddings ``(B, T, C, H, W)`` give masks ``(B, Q, T, H, W)``
    and an attention mask over the ``T * h * w`` keys of the next decoder layer (``True`` = not attended).

    Box-only models (``box_predictor`` set): the attention mask keeps the keys inside each query's predicted box
    and the "masks" are the rasterised boxes (logit +/- ``BOX_MASK_LOGIT``)."""

    BOX_MASK_LOGIT = 20.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.box_predictor = None  # callable (B, Q, D) -> (B, Q, T, 4) boxes; set on box-only segmenters

    def forward(self, outputs, pixel_embeddings, attention_mask_target_size=None):
        if self.box_predictor is not None:
            return self._box_forward(outputs, pixel_embeddings, attention_mask_target_size)
        mask_embeddings = self.mask_embedder(outputs.transpose(0, 1))  # (B, Q, C)
        outputs_mask = torch.einsum("bqc,btchw->bqthw", mask_embeddings, pixel_embeddings)
        batch_size, num_queries, num_frames = outputs_mask.shape[:3]
        attention_mask = nn.functional.interpolate(
            outputs_mask.flatten(1, 2), size=attention_mask_target_size, mode="bilinear", align_corners=False
        )
        attention_mask = attention_mask.view(batch_size, num_queries, -1)  # (B, Q, T*h*w), (t, h, w) order
        attention_mask = attention_mask.sigmoid().unsqueeze(1).repeat(1, self.num_heads, 1, 1)
        attention_mask = (attention_mask.flatten(0, 1) < 0.5).bool().detach()
        return outputs_mask, attention_mask

    def _box_forward(self, outputs, pixel_embeddings, attention_mask_target_size):
        # (B, Q, T, 4): the box head predicts clip_length boxes; a shorter clip (the end of a video) uses its first T
        boxes = self.box_predictor(outputs.transpose(0, 1)).detach()[:, :, : pixel_embeddings.shape[1]]
        batch_size, num_queries = boxes.shape[:2]
        inside = rasterize_boxes(boxes, tuple(attention_mask_target_size))  # (B, Q, T, h, w)
        attention_mask = (~inside).view(batch_size, num_queries, -1).unsqueeze(1).repeat(1, self.num_heads, 1, 1)
        box_masks = rasterize_boxes(boxes, tuple(pixel_embeddings.shape[-2:]))
        logit = torch.tensor(self.BOX_MASK_LOGIT, dtype=pixel_embeddings.dtype, device=boxes.device)
        outputs_mask = torch.where(box_masks, logit, -logit)
        return outputs_mask, attention_mask.flatten(0, 1)


def temporal_sine_embedding(num_frames: int, dim: int, device, dtype, temperature: int = 10000) -> torch.Tensor:
    """Sine embedding of the frame index, ``(T, dim)``: the z term of Mask2Former-VIS's ``PositionEmbeddingSine3D``
    (position ``(t + 1) / T * 2 pi``, interleaved sin / cos over ``dim`` channels). Zero when ``T == 1`` so single
    frames are exactly image Mask2Former; the released code adds its value there too, but one vector added to every
    key shifts all attention logits of a query equally, so the outputs are the same."""
    if num_frames == 1:
        return torch.zeros(1, dim, device=device, dtype=dtype)
    position = torch.arange(1, num_frames + 1, device=device, dtype=torch.float32) / (num_frames + 1e-6) * 2 * math.pi
    dim_t = torch.arange(dim, device=device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / dim)
    pos = position[:, None] / dim_t
    pos = torch.stack((pos[:, 0::2].sin(), pos[:, 1::2].cos()), dim=2).flatten(1)
    return pos.to(dtype)


class CaptionFormerVideoTransformerModule(Mask2FormerTransformerModule):
    """Mask2Former's transformer module over clips (same parameters and names as the image module)."""

    def __init__(self, in_features: int, config):
        super().__init__(in_features, config)
        self.decoder.mask_predictor = CaptionFormerVideoMaskPredictor(
            hidden_size=config.hidden_dim,
            num_heads=config.num_attention_heads,
            mask_feature_size=config.mask_feature_size,
        )

    def forward(self, multi_scale_features, mask_features, num_frames: int, output_attentions: bool = False):
        """``multi_scale_features``: list of ``(B*T, C, h, w)``; ``mask_features``: ``(B*T, C, H, W)``."""
        multi_stage_features, multi_stage_positional_embeddings, size_list = [], [], []
        for i in range(self.num_feature_levels):
            feature = multi_scale_features[i]
            frames_batch, _, height, width = feature.shape
            batch_size = frames_batch // num_frames
            size_list.append((height, width))
            pos = self.position_embedder(feature.shape, feature.device, feature.dtype, None)  # (B*T, C, h, w)
            hidden_dim = pos.shape[1]
            pos = pos.view(batch_size, num_frames, hidden_dim, height, width)
            pos = pos + temporal_sine_embedding(num_frames, hidden_dim, feature.device, feature.dtype)[
                None, :, :, None, None
            ]
            projected = self.input_projections[i](feature) + self.level_embed.weight[i][None, :, None, None]
            projected = projected.view(batch_size, num_frames, hidden_dim, height, width)
            # (B, T, C, h, w) -> (T*h*w, B, C), keys ordered (t, h, w)
            multi_stage_positional_embeddings.append(pos.permute(1, 3, 4, 0, 2).flatten(0, 2))
            multi_stage_features.append(projected.permute(1, 3, 4, 0, 2).flatten(0, 2))

        batch_size = multi_stage_features[0].shape[1]
        pixel_embeddings = mask_features.view(batch_size, num_frames, *mask_features.shape[1:])
        query_embeddings = self.queries_embedder.weight.unsqueeze(1).repeat(1, batch_size, 1)
        query_features = self.queries_features.weight.unsqueeze(1).repeat(1, batch_size, 1)
        return self.decoder(
            inputs_embeds=query_features,
            multi_stage_positional_embeddings=multi_stage_positional_embeddings,
            pixel_embeddings=pixel_embeddings,
            encoder_hidden_states=multi_stage_features,
            query_position_embeddings=query_embeddings,
            feature_size_list=size_list,
            output_hidden_states=False,
            output_attentions=output_attentions,
            return_dict=True,
        )


class CaptionFormerClassHead(nn.Module):
    """Linear sigmoid classifier, or (``use_text_classifier``) cosine similarity against class text embeddings.

    With ``clip_vision_config`` the projected queries first cross-attend to the CLIP image embeddings of the clip's
    frames (post-norm residual), as the release's ``ZeroShotClassifier`` (from OVFormer) does."""

    def __init__(self, config):
        super().__init__()
        hidden = config.segmenter_config.hidden_dim
        self.use_text_classifier = config.use_text_classifier
        self.temperature = config.text_classifier_temperature
        self.uses_image_context = config.clip_vision_config is not None
        if self.use_text_classifier:
            dim = config.text_embedding_dim
            if config.text_classifier_projection_layers == 1:
                self.projection = nn.Linear(hidden, dim)
            else:
                self.projection = Mask2FormerMLPPredictionHead(
                    hidden, dim // 2, dim, config.text_classifier_projection_layers
                )
            if config.text_classifier_bias:
                self.bias = nn.Parameter(torch.full((1,), -math.log((1 - 0.01) / 0.01)))
            else:
                self.bias = None
            if self.uses_image_context:
                self.image_context_attention = nn.MultiheadAttention(dim, config.clip_image_context_heads)
                self.image_context_norm = nn.LayerNorm(dim)
            self.register_buffer("class_embeddings", torch.zeros(config.num_labels, dim))
        else:
            self.classifier = nn.Linear(hidden, config.num_labels)

    def forward(
        self,
        queries: torch.Tensor,
        class_embeddings: torch.Tensor | None = None,
        image_context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``queries`` ``(B, Q, D)``; ``image_context`` ``(B, T, E)`` CLIP image embeddings of the clip's frames."""
        if not self.use_text_classifier:
            return self.classifier(queries)
        embeddings = self.class_embeddings if class_embeddings is None else class_embeddings
        projected = self.projection(queries)
        if self.uses_image_context:
            if image_context is None:
                raise ValueError("this classifier attends to the frames' CLIP image embeddings: pass `image_context`")
            context = image_context.to(projected.dtype).transpose(0, 1)  # (T, B, E)
            attended = self.image_context_attention(projected.transpose(0, 1), context, context)[0]
            projected = self.image_context_norm(projected + attended.transpose(0, 1))
        projected = nn.functional.normalize(projected, dim=-1)
        embeddings = nn.functional.normalize(embeddings.to(projected.dtype), dim=-1)
        logits = projected @ embeddings.t() / self.temperature
        return logits if self.bias is None else logits + self.bias


def clip_pixel_values(images: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP's preprocessing of RGB images in ``[0, 1]`` ``(N, 3, H, W)``: bicubic resize of the short side to
    ``size`` (antialiased, long side ``int(size * long / short)`` as torchvision's ``Resize``), centre crop
    ``size x size``, OpenAI CLIP normalisation."""
    height, width = images.shape[-2:]
    if height <= width:
        new = (size, int(size * width / height))
    else:
        new = (int(size * height / width), size)
    resized = nn.functional.interpolate(images.float(), size=new, mode="bicubic", align_corners=False, antialias=True)
    top, left = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    cropped = resized[..., top : top + size, left : left + size].clamp(0, 1)
    mean = torch.tensor(OPENAI_CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD, device=images.device).view(1, 3, 1, 1)
    return (cropped - mean) / std


class CaptionFormerClipSegmenterMixin:
    """Clip segmenter: ``pixel_values_videos (B, T, 3, H, W)`` -> queries, per-frame masks and boxes, logits.

    A mixin so that the module can be a ``Mask2FormerPreTrainedModel`` (see ``CaptionFormerSegmenter`` in
    modeling_captionformer.py) and get Mask2Former's weight initialisation."""

    def build(self, config) -> None:
        seg_config = config.segmenter_config
        self.clip_length = config.clip_length
        self.pixel_level_module = Mask2FormerPixelLevelModule(seg_config)
        self.transformer_module = CaptionFormerVideoTransformerModule(in_features=seg_config.feature_size, config=seg_config)
        hidden = seg_config.hidden_dim
        self.class_head = CaptionFormerClassHead(config)
        self.segmenter_image_mean = tuple(config.segmenter_image_mean)
        self.segmenter_image_std = tuple(config.segmenter_image_std)
        if config.clip_vision_config is not None:  # frozen, as the release's pre-extracted features
            from transformers import CLIPVisionModelWithProjection

            self.clip_image_encoder = CLIPVisionModelWithProjection(config.clip_vision_config)
            self.clip_image_encoder.requires_grad_(False)
        else:
            self.clip_image_encoder = None
        if config.objectness_head_layers == 1:
            self.objectness_head = nn.Linear(hidden, 1)
        else:  # the released code's MLP (its 2 logits folded into one by the converter)
            self.objectness_head = Mask2FormerMLPPredictionHead(hidden, hidden, 1, config.objectness_head_layers)
        self.box_format = config.box_format
        if config.box_head_layers > 0:
            self.box_head = Mask2FormerMLPPredictionHead(hidden, hidden, 4 * config.clip_length, config.box_head_layers)
        else:
            self.box_head = None
        if config.box_only:  # no mask branch: attention masks from the boxes
            self.transformer_module.decoder.mask_predictor.box_predictor = self.predict_boxes

    def predict_boxes(self, queries: torch.Tensor) -> torch.Tensor:
        """Box head on layer-normed decoder states ``(B, Q, D)`` -> ``(B, Q, T, 4)`` normalised (cx, cy, w, h)."""
        boxes = self.box_head(queries).view(*queries.shape[:2], -1, 4)
        if self.box_format == "xywh":  # the release: raw top-left corner and size (in float32: under fp16 autocast
            boxes = boxes.float()      # the raw fp16 values stay exactly recoverable from the centre)
            return torch.cat([boxes[..., :2] + boxes[..., 2:] / 2, boxes[..., 2:]], dim=-1)
        return boxes.sigmoid()

    @torch.no_grad()
    def clip_image_embeds(self, pixel_values_videos: torch.Tensor, pixel_mask=None) -> torch.Tensor:
        """CLIP image embeddings ``(B, T, E)`` of the frames of segmenter-normalised clips ``(B, T, 3, H, W)``,
        computed on each frame's content (``pixel_mask`` ``(B, H, W)``: 1 on the content, 0 on the padding, as
        transformers' image processors give it; ``None``: all content). The release
        pre-extracts them from the original frames (``clip.load("ViT-B/32")``'s preprocess + ``encode_image``);
        here they come from the resized frames, so they agree up to resampling."""
        if self.clip_image_encoder is None:
            raise ValueError("this model has no CLIP image encoder (`clip_vision_config` is None)")
        batch_size, num_frames = pixel_values_videos.shape[:2]
        frames = pixel_values_videos.flatten(0, 1).float()
        mean = torch.tensor(self.segmenter_image_mean, device=frames.device).view(1, 3, 1, 1)
        std = torch.tensor(self.segmenter_image_std, device=frames.device).view(1, 3, 1, 1)
        frames = frames * std + mean
        size = self.clip_image_encoder.config.image_size
        if pixel_mask is None:
            pixels = clip_pixel_values(frames, size)
        else:  # each clip's content: the top-left rows and columns its mask covers
            extents = [(int(m.any(1).sum()), int(m.any(0).sum())) for m in pixel_mask.bool()]
            clips = frames.view(batch_size, num_frames, *frames.shape[1:])
            pixels = torch.cat([clip_pixel_values(clip[..., :h, :w], size) for clip, (h, w) in zip(clips, extents)])
        dtype = self.clip_image_encoder.visual_projection.weight.dtype
        embeds = self.clip_image_encoder(pixel_values=pixels.to(dtype)).image_embeds
        return embeds.view(batch_size, num_frames, -1)

    def predict_heads(
        self,
        queries: torch.Tensor,
        class_embeddings: torch.Tensor | None = None,
        image_context: torch.Tensor | None = None,
    ):
        """Heads on layer-normed decoder states ``(B, Q, D)``: class ``(B, Q, C)``, objectness ``(B, Q)``,
        boxes ``(B, Q, T, 4)`` (normalised cx, cy, w, h; ``None`` without a box head)."""
        class_logits = self.class_head(queries, class_embeddings, image_context)
        objectness_logits = self.objectness_head(queries).squeeze(-1)
        boxes = self.predict_boxes(queries) if self.box_head is not None else None
        return class_logits, objectness_logits, boxes

    def forward(self, pixel_values_videos: torch.Tensor, class_embeddings: torch.Tensor | None = None,
                output_attentions: bool = False, output_hidden_states: bool = False,
                clip_image_embeds: torch.Tensor | None = None, pixel_mask=None):
        batch_size, num_frames = pixel_values_videos.shape[:2]
        if self.clip_image_encoder is not None and clip_image_embeds is None:
            clip_image_embeds = self.clip_image_embeds(pixel_values_videos, pixel_mask)
        frames = pixel_values_videos.flatten(0, 1)
        pixel_out = self.pixel_level_module(frames, output_hidden_states=output_hidden_states)
        decoder_out = self.transformer_module(
            list(pixel_out.decoder_hidden_states),
            pixel_out.decoder_last_hidden_state,
            num_frames=num_frames,
            output_attentions=output_attentions,
        )
        # intermediate_hidden_states: tuple of (Q, B, D), layer-normed; masks_queries_logits: (B, Q, T, H, W)
        layers = []
        for hidden, masks in zip(decoder_out.intermediate_hidden_states, decoder_out.masks_queries_logits):
            queries = hidden.transpose(0, 1)
            class_logits, objectness_logits, boxes = self.predict_heads(queries, class_embeddings, clip_image_embeds)
            if boxes is None:
                boxes = boxes_from_mask_logits(masks)
            layers.append(
                {
                    "object_queries": queries,
                    "class_logits": class_logits,
                    "objectness_logits": objectness_logits,
                    "pred_boxes": boxes,
                    "masks_logits": masks,
                }
            )
        return layers, pixel_out, decoder_out


def boxes_from_mask_logits(masks_logits: torch.Tensor) -> torch.Tensor:
    """Bounding boxes of ``masks_logits > 0``: ``(..., H, W)`` -> ``(..., 4)`` normalised (cx, cy, w, h) of the
    mask grid (pixel ``i`` spans ``[i, i + 1)``); an empty mask gives an all-zero box. Not differentiable."""
    with torch.no_grad():
        binary = masks_logits > 0
        height, width = binary.shape[-2:]
        rows, cols = binary.any(-1), binary.any(-2)  # (..., H), (..., W)

        def extent(occupied: torch.Tensor, size: int):
            index = torch.arange(size, device=occupied.device)
            low = torch.where(occupied, index, size).amin(-1)
            high = torch.where(occupied, index + 1, 0).amax(-1)
            return low.float() / size, high.float() / size

        y0, y1 = extent(rows, height)
        x0, x1 = extent(cols, width)
        empty = ~rows.any(-1)
        boxes = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)
        return boxes.masked_fill(empty[..., None], 0.0).to(masks_logits.dtype)


def clip_scores(class_logits: torch.Tensor, objectness_logits: torch.Tensor) -> torch.Tensor:
    """Per-clip confidence S = sqrt(max_c sigmoid(cls_c) * sigmoid(obj)) (paper, Sec. 3.2)."""
    return torch.sqrt(class_logits.sigmoid().amax(-1) * objectness_logits.sigmoid())
