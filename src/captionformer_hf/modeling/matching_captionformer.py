"""Hungarian matcher of CaptionFormer: class (or, as the release, the detection score), mask (BCE + dice on sampled points, over the T frames of a clip as in
Mask2Former-VIS) and box (L1 + GIoU over the frames where the object is visible) costs.

Adapted from transformers' ``Mask2FormerHungarianMatcher`` (whose pair-wise cost functions are reused). The costs of
a whole batch are computed at once: the points are sampled once per call and shared by all clips, every prediction of
the batch is costed against every target of the batch in one pass over all frames (``(B*Q, N_all)``; the blocks
across clips are discarded), and only the per-clip Hungarian assignments run one by one (scipy). Matching a batch
therefore equals matching each clip alone under the same random state.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert
from transformers.models.mask2former.modeling_mask2former import (
    pair_wise_dice_loss,
    pair_wise_sigmoid_cross_entropy_loss,
    sample_point,
)


def sample_clip_masks(masks: torch.Tensor, point_coordinates: torch.Tensor) -> torch.Tensor:
    """Masks ``(N, T, H, W)`` at normalised points ``(P, 2)`` (x, y in [0, 1]) -> ``(N, T * P)``."""
    if masks.shape[0] == 0:
        return masks.new_zeros(0, masks.shape[1] * point_coordinates.shape[0])
    coords = point_coordinates[None].expand(masks.shape[0], -1, -1)
    return sample_point(masks, coords, align_corners=False).flatten(1)


def broadcast_generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """GIoU of ``(x0, y0, x1, y1)`` boxes broadcast against each other (``(..., 4)`` with ``(..., 4)``), the formula of
    ``torchvision.ops.generalized_box_iou`` without its pair-wise layout (a test checks the two agree). ``eps`` > 0
    clamps the union and the hull from below, as the released code's ``generalized_box_iou`` (``1e-7``)."""
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    lt = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    intersection = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - intersection
    iou = intersection / (union.clamp(min=eps) if eps else union)
    lt_hull = torch.minimum(boxes1[..., :2], boxes2[..., :2])
    rb_hull = torch.maximum(boxes1[..., 2:], boxes2[..., 2:])
    wh_hull = (rb_hull - lt_hull).clamp(min=0)
    hull = wh_hull[..., 0] * wh_hull[..., 1]
    return iou - (hull - union) / (hull.clamp(min=eps) if eps else hull)


def pair_wise_box_costs(pred_boxes: torch.Tensor, target_boxes: torch.Tensor, valid: torch.Tensor):
    """L1 and negative-GIoU costs ``(Q, N)`` averaged over each target's visible frames, all frames at once.

    ``pred_boxes`` ``(Q, T, 4)`` and ``target_boxes`` ``(N, T, 4)`` are normalised (cx, cy, w, h); ``valid`` ``(N, T)``.
    A target visible in no frame costs 0 on boxes."""
    weights = valid.to(pred_boxes.dtype)  # (N, T)
    denominator = weights.sum(1).clamp(min=1)  # (N,)
    l1 = (pred_boxes[:, None] - target_boxes[None]).abs().sum(-1)  # (Q, N, T)
    giou = broadcast_generalized_box_iou(
        box_convert(pred_boxes, "cxcywh", "xyxy")[:, None], box_convert(target_boxes, "cxcywh", "xyxy")[None]
    )  # (Q, N, T)
    cost_l1 = (l1 * weights[None]).sum(-1) / denominator
    cost_giou = (-giou * weights[None]).sum(-1) / denominator
    return cost_l1, cost_giou


class CaptionFormerHungarianMatcher(nn.Module):
    """One-to-one assignment between the Q predictions of each clip and its N target objects."""

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        num_points: int = 12544,
        class_cost: str = "class",
    ):
        super().__init__()
        if class_cost not in ("class", "score"):
            raise ValueError(f"`class_cost` must be 'class' or 'score', got {class_cost!r}")
        self.class_cost = class_cost
        if cost_class == cost_mask == cost_dice == cost_bbox == cost_giou == 0:
            raise ValueError("All matcher costs are 0: at least one of cost_class/mask/dice/bbox/giou must be > 0")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.num_points = num_points

    @torch.no_grad()
    def cost_matrices(self, outputs: dict, targets: list[dict], point_coordinates: torch.Tensor) -> list[torch.Tensor]:
        """Cost ``(Q, N_b)`` of every clip ``b``, computed for the whole batch in one pass."""
        batch_size, num_queries = outputs["class_logits"].shape[:2]
        pred_masks = outputs["masks_logits"].float()
        counts = [len(t["class_labels"]) for t in targets]
        labels = torch.cat([t["class_labels"] for t in targets]).to(pred_masks.device)
        class_prob = outputs["class_logits"].float().sigmoid().flatten(0, 1)  # (B*Q, C)
        if self.class_cost == "score":  # the release: sqrt(class probability * objectness probability)
            objectness = outputs["objectness_logits"].float().sigmoid().flatten(0, 1)  # (B*Q,)
            class_prob = (class_prob * objectness[:, None]).sqrt()
        cost = -class_prob[:, labels] * self.cost_class  # (B*Q, N_all)
        target_masks = torch.cat([t["mask_labels"] for t in targets]).to(pred_masks)
        if target_masks.shape[1] != pred_masks.shape[2]:
            raise ValueError(
                f"targets `mask_labels` have {target_masks.shape[1]} frames but the clip has {pred_masks.shape[2]}"
            )
        if self.cost_mask or self.cost_dice:
            pred_points = sample_clip_masks(pred_masks.flatten(0, 1), point_coordinates)
            target_points = sample_clip_masks(target_masks, point_coordinates)
            cost = cost + self.cost_mask * pair_wise_sigmoid_cross_entropy_loss(pred_points, target_points)
            cost = cost + self.cost_dice * pair_wise_dice_loss(pred_points, target_points)
        if (self.cost_bbox or self.cost_giou) and all("boxes" in t for t in targets):
            valid = torch.cat([
                t["valid"] if t.get("valid") is not None else t["mask_labels"].flatten(2).amax(-1) > 0 for t in targets
            ]).to(pred_masks.device)
            target_boxes = torch.cat([t["boxes"] for t in targets]).to(pred_masks)
            cost_l1, cost_giou = pair_wise_box_costs(outputs["pred_boxes"].float().flatten(0, 1), target_boxes, valid)
            cost = cost + self.cost_bbox * cost_l1 + self.cost_giou * cost_giou
        blocks = []
        start = 0
        for b, count in enumerate(counts):
            blocks.append(cost[b * num_queries : (b + 1) * num_queries, start : start + count])
            start += count
        return blocks

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Returns, per sample, ``(prediction_indices, target_indices)`` int64 tensors of equal length
        ``min(Q, N)``, sorted by prediction index."""
        if len(targets) != outputs["class_logits"].shape[0]:
            raise ValueError(
                f"got {len(targets)} targets for a batch of {outputs['class_logits'].shape[0]} clips"
            )
        device = outputs["class_logits"].device
        point_coordinates = torch.rand(self.num_points, 2, device=device)
        empty = torch.zeros(0, dtype=torch.int64)
        if sum(len(t["class_labels"]) for t in targets) == 0:
            return [(empty, empty.clone()) for _ in targets]
        costs = self.cost_matrices(outputs, targets, point_coordinates)
        host = [c.cpu().numpy() for c in costs] if device.type == "cpu" else torch.cat(
            [c.flatten() for c in costs]).cpu().numpy()  # one device-to-host copy for the batch
        indices, start = [], 0
        for cost in costs:
            if isinstance(host, list):
                matrix = host[len(indices)]
            else:
                matrix = host[start : start + cost.numel()].reshape(cost.shape)
                start += cost.numel()
            if matrix.shape[1] == 0:
                indices.append((empty, empty.clone()))
                continue
            maximum = np.finfo(matrix.dtype).max
            matrix = np.nan_to_num(matrix, nan=maximum, posinf=maximum, neginf=maximum)
            rows, cols = linear_sum_assignment(matrix)
            order = np.argsort(rows)
            indices.append(
                (torch.as_tensor(rows[order], dtype=torch.int64), torch.as_tensor(cols[order], dtype=torch.int64))
            )
        return indices
