"""Losses of CaptionFormer: the set criterion of the segmenter and the caption LM losses (clip and video level).

Per clip, after Hungarian matching: sigmoid focal class loss (or the release's: sigmoid BCE on the matched queries
over Detic's federated categories, ``class_loss="release_bce"``), objectness BCE (or the release's 2-class
cross-entropy with a no-object weight, ``objectness_loss="weighted_ce"``), mask BCE + dice on points chosen by
uncertainty (Mask2Former's importance sampling, over the T frames of the clip), box L1 + GIoU on the frames where
the object is visible. Weights (paper): dice 5, mask BCE 5, class 2, objectness 2, L1 5, GIoU 2. Auxiliary losses of
the intermediate decoder layers are matched and weighted the same way. The mask losses reuse transformers'
``dice_loss`` / ``sigmoid_cross_entropy_loss``; class and box losses reuse torchvision.ops.

Caption losses (weight 1): the LM's token cross-entropy of each matched object's caption, averaged per caption then
over captions, conditioned on the object's Q-Former output (``clip_caption_loss``) or, at video level, on a track's
temporally aggregated Q-Former outputs (``video_caption_loss``). They take the model, which owns the caption head and
the LM.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou_loss, sigmoid_focal_loss
from transformers.models.mask2former.modeling_mask2former import dice_loss, sample_point, sigmoid_cross_entropy_loss

from .matching_captionformer import CaptionFormerHungarianMatcher


def uncertain_point_coordinates(
    masks_logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_sample_ratio: float
) -> torch.Tensor:
    """Mask2Former's point selection for clips: ``(N, T, H, W)`` logits -> ``(N, num_points, 2)`` coordinates, the
    ``importance_sample_ratio`` most uncertain (|logit| smallest in any frame) of ``oversample_ratio * num_points``
    random points, plus uniform random points."""
    num_masks = masks_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(num_masks, num_sampled, 2, device=masks_logits.device)
    point_logits = sample_point(masks_logits, coords, align_corners=False)  # (N, T, S)
    uncertainty = -point_logits.abs().amin(dim=1)  # (N, S)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    top = torch.topk(uncertainty, k=num_uncertain, dim=1).indices
    coords_uncertain = torch.gather(coords, 1, top[..., None].expand(-1, -1, 2))
    if num_random > 0:
        coords_random = torch.rand(num_masks, num_random, 2, device=masks_logits.device)
        coords_uncertain = torch.cat([coords_uncertain, coords_random], dim=1)
    return coords_uncertain


class CaptionFormerLoss(nn.Module):
    def __init__(self, config):
        super().__init__()
        seg = config.segmenter_config
        self.num_labels = config.num_labels
        self.num_points = seg.train_num_points
        self.oversample_ratio = seg.oversample_ratio
        self.importance_sample_ratio = seg.importance_sample_ratio
        self.focal_alpha = config.focal_alpha
        self.focal_gamma = config.focal_gamma
        self.use_auxiliary_loss = seg.use_auxiliary_loss
        self.class_loss = config.class_loss
        self.objectness_loss = config.objectness_loss
        self.no_object_weight = config.no_object_weight
        self.federated_num_categories = config.federated_num_categories
        # the federated loss samples negative categories with probability frequency ** 0.5
        if config.class_frequencies is not None:
            self.register_buffer(
                "class_frequencies", torch.tensor(config.class_frequencies, dtype=torch.float32) ** 0.5, persistent=False
            )
        else:
            self.class_frequencies = None
        # without a box head the boxes are read off the masks: nothing to learn, no box loss or cost; box-only
        # models have no mask branch (their "masks" are the rasterised boxes): no mask loss or cost
        self.use_box_losses = config.box_head_layers > 0
        self.use_mask_losses = not config.box_only
        self.weight_dict = {
            "loss_class": config.class_weight,
            "loss_objectness": config.objectness_weight,
            "loss_mask": config.mask_weight,
            "loss_dice": config.dice_weight,
            "loss_bbox": config.bbox_l1_weight,
            "loss_giou": config.giou_weight,
        }
        self.matcher = CaptionFormerHungarianMatcher(
            cost_class=config.class_weight,
            cost_mask=config.mask_weight if self.use_mask_losses else 0.0,
            cost_dice=config.dice_weight if self.use_mask_losses else 0.0,
            cost_bbox=config.bbox_l1_weight if self.use_box_losses else 0.0,
            cost_giou=config.giou_weight if self.use_box_losses else 0.0,
            num_points=seg.train_num_points,
            class_cost=config.matcher_class_cost,
        )

    def federated_categories(self, labels: torch.Tensor) -> torch.Tensor:
        """Detic's federated loss categories ``(C,)`` 0/1: those of the batch's targets, then up to
        ``federated_num_categories`` in all with negatives drawn without replacement with probability
        ``frequency ** 0.5`` (as the release's ``get_fed_loss_inds``)."""
        num_classes = self.class_frequencies.shape[0]
        appeared = torch.unique(labels)
        # the release counts the no-object class of the unmatched queries among the categories that appeared
        if len(appeared) + 1 < self.federated_num_categories:
            prob = self.class_frequencies.clone()
            prob[appeared] = 0
            extra = min(self.federated_num_categories - len(appeared) - 1, int((prob > 0).sum()))
            if extra > 0:
                appeared = torch.cat([appeared, torch.multinomial(prob, extra, replacement=False)])
        mask = torch.zeros(num_classes, device=labels.device)
        mask[appeared] = 1.0
        return mask

    @staticmethod
    def _permutation(indices):
        batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src = torch.cat([src for src, _ in indices])
        return batch, src

    def layer_losses(self, outputs: dict, targets: list[dict], indices, num_masks: float) -> dict:
        class_logits = outputs["class_logits"]
        device = class_logits.device
        batch_idx, src_idx = self._permutation(indices)
        batch_idx, src_idx = batch_idx.to(device), src_idx.to(device)

        target_classes = torch.zeros_like(class_logits)
        labels = torch.cat([t["class_labels"][j] for t, (_, j) in zip(targets, indices)]).to(device)
        target_classes[batch_idx, src_idx, labels] = 1.0
        if self.class_loss == "focal":  # the paper: sigmoid focal loss, one-hot on matched queries
            loss_class = sigmoid_focal_loss(
                class_logits.float(), target_classes.float(), alpha=self.focal_alpha, gamma=self.focal_gamma,
                reduction="sum",
            ) / num_masks
        else:  # the release: sigmoid BCE on the matched queries over federated categories, 1.7 * sum / (B * Q)
            loss = nn.functional.binary_cross_entropy_with_logits(class_logits.float(), target_classes.float(),
                                                                  reduction="none")
            matched = torch.zeros(class_logits.shape[:2], device=device)
            matched[batch_idx, src_idx] = 1.0
            weight = matched[..., None]
            if self.class_frequencies is not None:
                weight = weight * self.federated_categories(labels)[None, None]
            loss_class = 1.7 * (loss * weight).sum() / (class_logits.shape[0] * class_logits.shape[1])

        objectness = outputs["objectness_logits"].float()
        target_objectness = torch.zeros_like(objectness)
        target_objectness[batch_idx, src_idx] = 1.0
        if self.objectness_loss == "bce":  # the paper: BCE, 1 on matched queries
            loss_objectness = nn.functional.binary_cross_entropy_with_logits(objectness, target_objectness)
        else:  # the release: 2-class cross-entropy (object, no object) weighted 1 / no_object_weight, weighted mean
            per_query = nn.functional.binary_cross_entropy_with_logits(objectness, target_objectness, reduction="none")
            weights = torch.where(target_objectness > 0, 1.0, self.no_object_weight)
            loss_objectness = (per_query * weights).sum() / weights.sum()

        pred_masks = outputs["masks_logits"][batch_idx, src_idx].float()  # (M, T, H, W)
        target_masks = torch.cat([t["mask_labels"][j] for t, (_, j) in zip(targets, indices)]).to(pred_masks)
        losses = {"loss_class": loss_class, "loss_objectness": loss_objectness}
        if pred_masks.shape[0] == 0:
            zero = outputs["masks_logits"].sum() * 0.0
            if self.use_box_losses:
                zero = zero + outputs["pred_boxes"].sum() * 0.0
            if self.use_mask_losses:
                losses.update(loss_mask=zero, loss_dice=zero)
            if self.use_box_losses:
                losses.update(loss_bbox=zero, loss_giou=zero)
            return losses
        if self.use_mask_losses:
            with torch.no_grad():
                coords = uncertain_point_coordinates(
                    pred_masks, self.num_points, self.oversample_ratio, self.importance_sample_ratio
                )
                point_labels = sample_point(target_masks, coords, align_corners=False).flatten(1)
            point_logits = sample_point(pred_masks, coords, align_corners=False).flatten(1)
            losses["loss_mask"] = sigmoid_cross_entropy_loss(point_logits, point_labels, num_masks)
            losses["loss_dice"] = dice_loss(point_logits, point_labels, num_masks)
        if not self.use_box_losses:
            return losses

        pred_boxes = outputs["pred_boxes"][batch_idx, src_idx].float()  # (M, T, 4)
        target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(pred_boxes)
        valid = torch.cat(
            [
                (t["valid"] if "valid" in t else t["mask_labels"].flatten(2).amax(-1) > 0)[j]
                for t, (_, j) in zip(targets, indices)
            ]
        ).to(device)
        num_boxes = valid.sum().clamp(min=1).float()
        pred_valid, target_valid = pred_boxes[valid], target_boxes[valid]
        loss_bbox = nn.functional.l1_loss(pred_valid, target_valid, reduction="sum") / num_boxes
        loss_giou = generalized_box_iou_loss(
            box_convert(pred_valid, "cxcywh", "xyxy"), box_convert(target_valid, "cxcywh", "xyxy"),
            reduction="sum",
        ) / num_boxes
        if not valid.any():  # keep the graph connected
            loss_bbox = loss_bbox + pred_boxes.sum() * 0.0
            loss_giou = loss_giou + pred_boxes.sum() * 0.0
        losses.update(loss_bbox=loss_bbox, loss_giou=loss_giou)
        return losses

    def forward(self, layers: list[dict], targets: list[dict], num_masks: float | None = None):
        """``layers``: per decoder layer (last = final) the head outputs; returns ``(weighted losses, indices of
        the final layer)``. Auxiliary losses are suffixed ``_{layer}``."""
        if num_masks is None:
            num_masks = float(sum(len(t["class_labels"]) for t in targets))
        num_masks = max(float(num_masks), 1.0)
        final = layers[-1]
        indices = self.matcher(final, targets)
        losses = {}
        for key, value in self.layer_losses(final, targets, indices, num_masks).items():
            losses[key] = value * self.weight_dict[key]
        if self.use_auxiliary_loss:
            for layer_index, aux in enumerate(layers[:-1]):
                aux_indices = self.matcher(aux, targets)
                for key, value in self.layer_losses(aux, targets, aux_indices, num_masks).items():
                    losses[f"{key}_{layer_index}"] = value * self.weight_dict[key]
        return losses, indices


# ----------------------------------------------------------------------------------------------- caption losses
# Tensors in, tensors out: the model runs its caption head and LM (``CaptionFormerForDenseVideoObjectCaptioning.
# caption_loss``); these functions pick the targets of the matched objects and compute the loss from the logits.
def caption_token_loss(logits: torch.Tensor, caption_ids: torch.Tensor, caption_attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over captions of the per-caption mean token cross-entropy (as the released code). ``logits``
    ``(N, P + L, V)``: the LM over ``P`` prefix positions then the ``L`` caption tokens ``caption_ids`` ``(N, L)``
    (``caption_attention_mask`` ``(N, L)``: which count); token ``i`` is predicted at position ``P + i - 1``."""
    num_prefix = logits.shape[1] - caption_ids.shape[1]
    if num_prefix < 1:
        raise ValueError(f"`logits` must cover a prefix and the {caption_ids.shape[1]} caption tokens, got "
                         f"{logits.shape[1]} positions")
    pred = logits[:, num_prefix - 1 : -1].float()
    token_loss = nn.functional.cross_entropy(pred.transpose(1, 2), caption_ids, reduction="none")
    weights = caption_attention_mask.to(token_loss.dtype)
    per_caption = (token_loss * weights).sum(1) / weights.sum(1).clamp(min=1)
    return per_caption.mean()


def _pad_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    length = max(x.shape[-1] for x in rows)
    return torch.cat([nn.functional.pad(x, (0, length - x.shape[-1])) for x in rows])


def clip_caption_targets(labels: list[dict], indices, device) -> tuple | None:
    """The clip-level caption targets: one per matched object with a caption, per clip. Returns ``(rows (N,),
    queries (N,), caption_ids (N, L), caption_attention_mask (N, L))`` (the clip and query of each), or ``None``."""
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
        return None
    return torch.cat(rows), torch.cat(queries), _pad_rows(caption_ids), _pad_rows(caption_masks)


def video_caption_targets(labels: list[dict], indices, sample_clips, device) -> tuple | None:
    """The video-level caption targets: the batch holds the clips of one or several videos
    (``labels[i]["video_index"]``, default 0), each video's clips in time order; per track (``track_ids`` within a
    video) with a caption, the clips where it is matched, sampled by ``sample_clips(count) -> indices`` (the model's
    ``caption_clip_indices``: as at inference). Returns ``(rows (P,), queries (P,), counts (N,), caption_ids (N, L),
    caption_attention_mask (N, L))``: the (clip, query) pairs of the N tracks in order, how many each has, and their
    captions; or ``None``."""
    per_track = {}
    for b, (src, tgt) in enumerate(indices):
        target = labels[b]
        if "track_ids" not in target or "caption_ids" not in target:
            raise ValueError("`caption_level='video'` needs `track_ids` and `caption_ids` in every clip's labels")
        video = int(target.get("video_index", 0))
        mask = target.get("caption_attention_mask", torch.ones_like(target["caption_ids"]))
        for q, j in zip(src.tolist(), tgt.tolist()):
            if mask[j].sum() == 0:
                continue
            entry = per_track.setdefault(
                (video, int(target["track_ids"][j])), {"items": [], "ids": target["caption_ids"][j], "mask": mask[j]}
            )
            entry["items"].append((b, q))
    if not per_track:
        return None
    for entry in per_track.values():
        entry["items"] = [entry["items"][i] for i in sample_clips(len(entry["items"]))]
    items = [(b, q) for entry in per_track.values() for b, q in entry["items"]]
    rows = torch.tensor([b for b, _ in items], device=device)
    queries = torch.tensor([q for _, q in items], device=device)
    counts = torch.tensor([len(entry["items"]) for entry in per_track.values()])
    caption_ids = _pad_rows([entry["ids"][None] for entry in per_track.values()]).to(device)
    caption_masks = _pad_rows([entry["mask"][None] for entry in per_track.values()]).to(device)
    return rows, queries, counts, caption_ids, caption_masks


def pad_track_clips(caption_queries: torch.Tensor, scores: torch.Tensor, counts: torch.Tensor):
    """Per-pair Q-Former outputs ``(P, L, D)`` and scores ``(P,)`` of N tracks (``counts`` ``(N,)`` pairs each, in
    order) -> ``(N, K, L, D)``, ``(N, K)`` and ``valid`` ``(N, K)``, ``K = max(counts)``."""
    width = int(counts.max())
    padded = caption_queries.new_zeros(len(counts), width, *caption_queries.shape[1:])
    clip_scores = scores.new_zeros(len(counts), width)
    valid = torch.zeros(len(counts), width, dtype=torch.bool, device=caption_queries.device)
    start = 0
    for i, count in enumerate(counts.tolist()):
        padded[i, :count] = caption_queries[start : start + count]
        clip_scores[i, :count] = scores[start : start + count]
        valid[i, :count] = True
        start += count
    return padded, clip_scores, valid
