"""Caption head of CaptionFormer: BLIP-2 vision encoder + mask-conditioned Q-Former + projection into a causal LM,
and the temporal aggregation of Q-Former outputs over the clips of a trajectory.

As in the released code, the Q-Former's queries are ``[proj(object query), 32 learned query tokens]`` and its
cross-attention over the vision tokens is restricted to the patches inside the object's predicted mask (the CLS
token stays visible). The restriction is an *additive float* mask (0 / dtype min): a boolean 4D mask is added as
0/1 by eager attention and silently restricts nothing. ``caption_mask_convention="release"`` reproduces instead
what the released code computes (see ``object_cross_attention_mask``), for converted official checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Blip2QFormerModel, Blip2VisionModel


def mask_logits_on_grid(masks_logits: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Mask logits ``(N, H, W)`` bilinearly resized to the vision encoder's patch grid, ``(N, g, g)`` float32 (the
    identity for logits already on the grid)."""
    return nn.functional.interpolate(
        masks_logits[:, None].float(), size=(grid_size, grid_size), mode="bilinear", align_corners=False
    )[:, 0]


def object_cross_attention_mask(
    masks_logits: torch.Tensor,
    grid_size: int,
    threshold: float,
    dtype: torch.dtype,
    num_queries: int,
    convention: str = "object",
    boxes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Additive cross-attention mask ``(N, 1, num_queries, 1 + grid_size**2)`` from mask logits ``(N, H, W)``.

    A patch is *inside* the object iff the mask logits bilinearly resized to the patch grid
    (:func:`mask_logits_on_grid`) have ``sigmoid >= threshold``
    or, when ``boxes`` ``(N, 4)`` (normalised cx, cy, w, h) are given (box-only models), iff it lies in the box
    rasterised as the release does (``rasterize_boxes``).

    ``convention="object"``: the patches inside and the CLS token (position 0, BLIP-2's layout) are visible; an
    object with no patch inside sees every patch (as Mask2Former does for empty masks).

    ``convention="release"``: the released code builds ``m = [patch p outside for p] + [True]`` and hands it to
    LAVIS's Q-Former, whose ``invert_attention_mask`` keeps the keys where ``m`` is True. The vision tokens are
    ``[CLS, patch_0, ..., patch_{P-1}]``, so key ``k`` is visible iff ``m[k]``: CLS iff patch 0 is outside the
    object, patch ``k - 1`` iff patch ``k`` is outside, the last patch always."""
    if boxes is not None:
        from .segmentation_captionformer import rasterize_boxes

        inside = rasterize_boxes(boxes.float(), (grid_size, grid_size)).flatten(1)  # (N, P)
    else:
        inside = mask_logits_on_grid(masks_logits, grid_size).sigmoid().flatten(1) >= threshold  # (N, P)
    if convention == "release":
        visible = torch.cat([~inside, torch.ones_like(inside[:, :1])], dim=1)
    elif convention == "object":
        visible = inside | ~inside.any(dim=1, keepdim=True)
        visible = torch.cat([torch.ones_like(visible[:, :1]), visible], dim=1)  # CLS first
    else:
        raise ValueError(f"`convention` must be 'object' or 'release', got {convention!r}")
    additive = torch.zeros(visible.shape, dtype=dtype, device=masks_logits.device)
    additive = additive.masked_fill(~visible, torch.finfo(dtype).min)
    return additive[:, None, None, :].expand(-1, 1, num_queries, -1)


class CaptionFormerCaptionHead(nn.Module):
    """Vision encoder, object-query projection, learned query tokens, Q-Former and LM projection (no LM)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        qformer_hidden = config.qformer_config.hidden_size
        self.vision_model = Blip2VisionModel(config.vision_config)
        self.object_query_projection = nn.Linear(config.segmenter_config.hidden_dim, qformer_hidden)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, qformer_hidden))
        self.qformer = Blip2QFormerModel(config.qformer_config)
        self.language_projection = nn.Linear(qformer_hidden, config.text_config.hidden_size)

    @property
    def grid_size(self) -> int:
        return self.config.vision_config.image_size // self.config.vision_config.patch_size

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Segmenter-normalised frames ``(F, 3, H, W)`` -> vision tokens ``(F, 1 + P, D_vision)``."""
        return self.vision_model(pixel_values=self.prepare_frames(frames)).last_hidden_state

    def prepare_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Segmenter-normalised frames ``(F, 3, H, W)`` -> the vision encoder's input ``(F, 3, S, S)`` (re-normalised,
        resized, in the encoder's dtype)."""
        size = self.config.vision_config.image_size
        # x_vision = (x_seg * seg_std + seg_mean - vis_mean) / vis_std (computed here, not stored as buffers:
        # non-persistent buffers are not restored when from_pretrained initialises on the meta device)
        def channels(values):
            return torch.tensor(values, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)

        seg_mean, seg_std = channels(self.config.segmenter_image_mean), channels(self.config.segmenter_image_std)
        vis_mean, vis_std = channels(self.config.vision_image_mean), channels(self.config.vision_image_std)
        frames = frames * (seg_std / vis_std) + (seg_mean - vis_mean) / vis_std
        frames = nn.functional.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
        return frames.to(self.vision_model.embeddings.patch_embedding.weight.dtype)

    def forward(
        self,
        vision_tokens: torch.Tensor,
        object_queries: torch.Tensor,
        masks_logits: torch.Tensor,
        boxes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Q-Former outputs ``(N, 1 + num_query_tokens, D_qformer)`` for N objects.

        Args:
            vision_tokens: ``(N, 1 + P, D_vision)`` tokens of the frame each object is captioned from.
            object_queries: ``(N, D_segmenter)`` object queries from the segmenter.
            masks_logits: ``(N, H, W)`` the objects' mask logits on that frame.
            boxes: ``(N, 4)`` their boxes on that frame (normalised cx, cy, w, h); box-only models restrict the
                cross-attention to them.
        """
        queries = torch.cat(
            [
                self.object_query_projection(object_queries.to(self.object_query_projection.weight.dtype))[:, None].float(),
                self.query_tokens.float().expand(object_queries.shape[0], -1, -1),
            ],
            dim=1,
        )
        qformer_dtype = self.qformer.layernorm.weight.dtype
        queries = queries.to(qformer_dtype)
        attention = object_cross_attention_mask(
            masks_logits,
            self.grid_size,
            self.config.caption_mask_threshold,
            qformer_dtype,
            queries.shape[1],
            convention=self.config.caption_mask_convention,
            boxes=boxes if self.config.box_only else None,
        )
        return self.qformer(
            query_embeds=queries, encoder_hidden_states=vision_tokens.to(qformer_dtype), encoder_attention_mask=attention
        ).last_hidden_state


def aggregation_weights(scores: torch.Tensor, valid: torch.Tensor | None = None, method: str = "weighted") -> torch.Tensor:
    """Weights ``(N, K)`` over the K sampled clips of N trajectories.

    ``weighted``: scores normalised to sum to one (the paper's detection-score weighting); ``mean``: uniform;
    ``best``: one-hot on the best-scoring clip. ``valid`` (N, K) marks real clips (padding gets weight 0)."""
    if valid is None:
        valid = torch.ones_like(scores, dtype=torch.bool)
    scores = scores.masked_fill(~valid, 0.0)
    if method == "weighted":
        weights = scores
    elif method == "mean":
        weights = valid.to(scores.dtype)
    elif method == "best":
        best = scores.masked_fill(~valid, float("-inf")).argmax(dim=1)
        weights = nn.functional.one_hot(best, scores.shape[1]).to(scores.dtype)
    else:
        raise ValueError(f"`method` must be one of 'weighted', 'mean', 'best', got {method!r}")
    total = weights.sum(dim=1, keepdim=True)
    # All-zero scores fall back to a uniform mean over the valid clips.
    uniform = valid.to(scores.dtype) / valid.sum(dim=1, keepdim=True).clamp(min=1)
    return torch.where(total > 0, weights / total.clamp(min=torch.finfo(scores.dtype).tiny), uniform)


def aggregate_caption_queries(
    caption_queries: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor | None = None, method: str = "weighted"
) -> torch.Tensor:
    """Temporal aggregation: ``(N, K, L, D)`` Q-Former outputs of K clips -> ``(N, L, D)`` video-level queries."""
    weights = aggregation_weights(scores, valid, method)
    return torch.einsum("nk,nkld->nld", weights.to(caption_queries.dtype), caption_queries)
