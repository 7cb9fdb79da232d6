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
        if getattr(config, "vision_post_layernorm_eps", None) is not None:  # BLIP-2's ln_vision (LAVIS: 1e-5)
            self.vision_model.post_layernorm.eps = float(config.vision_post_layernorm_eps)
        self.object_query_projection = nn.Linear(config.segmenter_config.hidden_dim, qformer_hidden)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, qformer_hidden))
        self.qformer = Blip2QFormerModel(config.qformer_config)
        self.language_projection = nn.Linear(qformer_hidden, config.text_config.hidden_size)
        width = config.text_config.hidden_size if config.aggregation_projection_first else qformer_hidden
        self.aggregation = CaptionFormerTemporalAggregation(config, width)

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


ORDER_FREE_AGGREGATIONS = ("weighted", "mean", "best")
ORDER_AWARE_AGGREGATIONS = ("concat", "linear", "self-attention")


def uniform_clip_indices(count: int, num: int, exact: bool = False) -> list[int]:
    """Indices of ``num`` of ``count`` time-ordered clips sampled uniformly over their span.

    ``exact=False`` (order-free aggregations): all ``count`` clips when there are at most ``num``, else
    ``linspace(0, count - 1, num)`` rounded. ``exact=True`` (order-aware aggregations, which take exactly ``num``):
    ``linspace(0, count - 1, num)`` truncated, repeating clips when ``count < num``, as the release samples its
    ``AGGREGATION_NUM_T`` clips (``torch.linspace(...).long()``)."""
    if count < 1:
        return []
    if exact:
        return torch.linspace(0, count - 1, steps=num).long().tolist()
    if count <= num:
        return list(range(count))
    return [int(i) for i in torch.linspace(0, count - 1, steps=num).round().long().tolist()]


def aggregation_weights(scores: torch.Tensor, valid: torch.Tensor | None = None, method: str = "weighted",
                        epsilon: float = 0.0) -> torch.Tensor:
    """Weights ``(N, K)`` over the K sampled clips of N trajectories.

    ``weighted``: scores normalised to sum to one (the paper's detection-score weighting; ``epsilon`` is added to
    the sum, 1e-6 in the release); ``mean``: uniform; ``best``: one-hot on the best-scoring clip. ``valid`` (N, K)
    marks real clips (padding gets weight 0)."""
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
        raise ValueError(f"`method` must be one of {ORDER_FREE_AGGREGATIONS}, got {method!r}")
    total = weights.sum(dim=1, keepdim=True)
    # All-zero scores fall back to a uniform mean over the valid clips.
    uniform = valid.to(scores.dtype) / valid.sum(dim=1, keepdim=True).clamp(min=1)
    if epsilon:
        return torch.where(total > 0, weights / (total + epsilon), uniform)
    return torch.where(total > 0, weights / total.clamp(min=torch.finfo(scores.dtype).tiny), uniform)


def aggregate_caption_queries(
    caption_queries: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor | None = None, method: str = "weighted"
) -> torch.Tensor:
    """Order-free temporal aggregation: ``(N, K, L, D)`` Q-Former outputs of K clips -> ``(N, L, D)``."""
    weights = aggregation_weights(scores, valid, method)
    return torch.einsum("nk,nkld->nld", weights.to(caption_queries.dtype), caption_queries)


class CaptionFormerTemporalAggregation(nn.Module):
    """Temporal aggregation of a trajectory's sampled clips into one video-level LM prefix (``config.aggregation``).

    Input: ``(N, K, L, D)`` per-clip outputs of N trajectories (K clips in time order, L tokens of width D: the
    Q-Former's, or the LM's with ``aggregation_projection_first``), their detection scores ``(N, K)`` and which are
    real ``(N, K)``. Output: ``(N, L', D)``.

    * ``weighted`` / ``mean`` / ``best``: order-free (see :func:`aggregation_weights`), ``L' = L``.
    * ``concat``: the K clips' tokens one after the other in time order, ``L' = K * L`` (the release's ``concat``).
    * ``linear``: per token, its K outputs concatenated along features in time order (clip-major, as the release's
      ``permute(1, 2, 0, 3).flatten(-2, -1)``) then ``linear`` (``agg_linear``: ``K * D -> D``), ``L' = L``.
    * ``self-attention``: per token, post-norm residual self-attention over its K clips (``self_attention`` +
      ``norm``, the release's ``SelfAttentionLayer``; queries and keys get a learned temporal
      ``position_embedding`` unless ``aggregation_position_embedding=False``), then the same ``linear``. The released
      training code means this (its comment: "Permute to (seq_len, batch, hidden)") but reshapes a (token, batch,
      time) tensor to (time, batch * token) without transposing, which mixes the token and time axes when a
      trajectory has more than one token; this module attends over time as intended.

    The learned layers need exactly ``t_agg`` clips. ``linear`` starts as the arithmetic mean over time (its
    weight is ``[I / K, ..., I / K]``), so a caption head trained on single clips starts from a prefix it reads."""

    def __init__(self, config, width: int):
        super().__init__()
        self.method = config.aggregation
        self.num_clips = config.t_agg
        self.width = width
        if self.method in ("linear", "self-attention"):
            self.linear = nn.Linear(config.t_agg * width, width)
        if self.method == "self-attention":
            self.self_attention = nn.MultiheadAttention(width, config.aggregation_num_heads)
            self.norm = nn.LayerNorm(width)
            if config.aggregation_position_embedding:
                self.position_embedding = nn.Parameter(torch.zeros(1, config.t_agg, width))
            else:
                self.position_embedding = None

    def initialize(self, init, std: float) -> None:
        """Initial weights (transformers' guarded init functions: loaded weights are left alone)."""
        if hasattr(self, "linear"):
            eye = torch.eye(self.width) / self.num_clips
            init.copy_(self.linear.weight, eye.repeat(1, self.num_clips).to(self.linear.weight.dtype))
            init.zeros_(self.linear.bias)
        if hasattr(self, "self_attention"):
            init.xavier_uniform_(self.self_attention.in_proj_weight)
            init.zeros_(self.self_attention.in_proj_bias)
            init.xavier_uniform_(self.self_attention.out_proj.weight)
            init.zeros_(self.self_attention.out_proj.bias)
            init.ones_(self.norm.weight)
            init.zeros_(self.norm.bias)
            if self.position_embedding is not None:
                init.trunc_normal_(self.position_embedding, std=std)

    def forward(
        self,
        caption_queries: torch.Tensor,
        scores: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        method: str | None = None,
        epsilon: float = 0.0,
    ) -> torch.Tensor:
        method = method or self.method
        if caption_queries.ndim != 4:
            raise ValueError(f"`caption_queries` must have shape (N, K, L, D), got {tuple(caption_queries.shape)}")
        num, clips, tokens, width = caption_queries.shape
        if method in ORDER_FREE_AGGREGATIONS:
            if scores is None:
                if method != "mean":
                    raise ValueError(f"aggregation {method!r} needs the clips' `scores` (N, K)")
                scores = caption_queries.new_ones(num, clips)
            weights = aggregation_weights(scores.float(), valid, method, epsilon)
            return torch.einsum("nk,nkld->nld", weights.to(caption_queries.dtype), caption_queries)
        if method not in ORDER_AWARE_AGGREGATIONS:
            raise ValueError(
                f"`aggregation` must be one of {ORDER_FREE_AGGREGATIONS + ORDER_AWARE_AGGREGATIONS}, got {method!r}"
            )
        if valid is not None and not bool(valid.all()):
            raise ValueError(f"aggregation {method!r} takes the same number of real clips for every trajectory")
        if method == "concat":
            return caption_queries.flatten(1, 2)
        if method != self.method:
            raise ValueError(f"aggregation {method!r} needs weights this model does not have (it was built with "
                             f"{self.method!r})")
        if clips != self.num_clips:
            raise ValueError(f"aggregation {method!r} takes exactly t_agg={self.num_clips} clips, got {clips}")
        dtype = self.linear.weight.dtype
        x = caption_queries.to(dtype)
        if method == "self-attention":
            sequence = x.permute(1, 0, 2, 3).reshape(clips, num * tokens, width)  # (time, trajectory * token, D)
            keys = sequence
            if self.position_embedding is not None:
                keys = sequence + self.position_embedding.to(dtype).transpose(0, 1)  # (time, 1, D)
            attended = self.self_attention(keys, keys, value=sequence, need_weights=False)[0]
            sequence = self.norm(sequence + attended)
            x = sequence.reshape(clips, num, tokens, width).permute(1, 0, 2, 3)
        return self.linear(x.permute(0, 2, 1, 3).flatten(2))  # (N, L, K * D) clip-major -> (N, L, D)
