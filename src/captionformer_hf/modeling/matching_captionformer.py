"""Hungarian matcher of CaptionFormer: class, mask (BCE + dice on sampled points, over the T frames of a clip as in
Mask2Former-VIS) and box (L1 + GIoU over the frames where the object is visible) costs.

Adapted from transformers' ``Mask2FormerHungarianMatcher`` (whose pair-wise cost functions are reused); the points
are sampled once per call and shared by all samples, so matching a batch equals matching each sample alone under
the same random state.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou
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


def pair_wise_box_costs(pred_boxes: torch.Tensor, target_boxes: torch.Tensor, valid: torch.Tensor):
    """L1 and negative-GIoU costs ``(Q, N)`` averaged over each target's visible frames.

    ``pred_boxes`` ``(Q, T, 4)`` and ``target_boxes`` ``(N, T, 4)`` are normalised (cx, cy, w, h); ``valid`` ``(N, T)``.
    A target visible in no frame costs 0 on boxes."""
    num_frames = pred_boxes.shape[1]
    weights = valid.to(pred_boxes.dtype)
    denominator = weights.sum(1).clamp(min=1)  # (N,)
    cost_l1 = pred_boxes.new_zeros(pred_boxes.shape[0], target_boxes.shape[0])
    cost_giou = torch.zeros_like(cost_l1)
    for t in range(num_frames):
        cost_l1 += torch.cdist(pred_boxes[:, t], target_boxes[:, t], p=1) * weights[None, :, t]
        giou = generalized_box_iou(
            box_convert(pred_boxes[:, t], "cxcywh", "xyxy"), box_convert(target_boxes[:, t], "cxcywh", "xyxy")
        )
        cost_giou += -giou * weights[None, :, t]
    return cost_l1 / denominator, cost_giou / denominator


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
    ):
        super().__init__()
        if cost_class == cost_mask == cost_dice == cost_bbox == cost_giou == 0:
            raise ValueError("All matcher costs are 0: at least one of cost_class/mask/dice/bbox/giou must be > 0")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.num_points = num_points

    @torch.no_grad()
    def cost_matrix(self, outputs: dict, target: dict, batch_index: int, point_coordinates: torch.Tensor):
        """Cost ``(Q, N)`` of one sample."""
        class_prob = outputs["class_logits"][batch_index].float().sigmoid()
        labels = target["class_labels"]
        cost = -class_prob[:, labels] * self.cost_class
        pred_masks = outputs["masks_logits"][batch_index].float()
        target_masks = target["mask_labels"].to(pred_masks)
        if target_masks.shape[1] != pred_masks.shape[1]:
            raise ValueError(
                f"targets `mask_labels` have {target_masks.shape[1]} frames but the clip has {pred_masks.shape[1]}"
            )
        if self.cost_mask or self.cost_dice:
            pred_points = sample_clip_masks(pred_masks, point_coordinates)
            target_points = sample_clip_masks(target_masks, point_coordinates)
            cost = cost + self.cost_mask * pair_wise_sigmoid_cross_entropy_loss(pred_points, target_points)
            cost = cost + self.cost_dice * pair_wise_dice_loss(pred_points, target_points)
        if (self.cost_bbox or self.cost_giou) and "boxes" in target:
            valid = target.get("valid")
            if valid is None:
                valid = target_masks.flatten(2).amax(-1) > 0
            cost_l1, cost_giou = pair_wise_box_costs(
                outputs["pred_boxes"][batch_index].float(), target["boxes"].to(pred_masks), valid
            )
            cost = cost + self.cost_bbox * cost_l1 + self.cost_giou * cost_giou
        return cost

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
        indices = []
        for i, target in enumerate(targets):
            if len(target["class_labels"]) == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(outputs, target, i, point_coordinates)
            max_value = torch.finfo(cost.dtype).max
            cost = torch.nan_to_num(cost, nan=max_value, posinf=max_value, neginf=max_value)
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            order = np.argsort(rows)
            indices.append(
                (torch.as_tensor(rows[order], dtype=torch.int64), torch.as_tensor(cols[order], dtype=torch.int64))
            )
        return indices
