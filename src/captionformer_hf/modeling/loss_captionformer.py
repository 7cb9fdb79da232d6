"""Set criterion of CaptionFormer (segmentation part; the caption LM loss lives in the model, which owns the LM).

Per clip, after Hungarian matching: sigmoid focal class loss, objectness BCE, mask BCE + dice on points chosen by
uncertainty (Mask2Former's importance sampling, over the T frames of the clip), box L1 + GIoU on the frames where
the object is visible. Weights (paper): dice 5, mask BCE 5, class 2, objectness 2, L1 5, GIoU 2. Auxiliary losses of
the intermediate decoder layers are matched and weighted the same way. The mask losses reuse transformers'
``dice_loss`` / ``sigmoid_cross_entropy_loss``; class and box losses reuse torchvision.ops.
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
        )

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

        # class: sigmoid focal loss, one-hot on matched queries
        target_classes = torch.zeros_like(class_logits)
        labels = torch.cat([t["class_labels"][j] for t, (_, j) in zip(targets, indices)]).to(device)
        target_classes[batch_idx, src_idx, labels] = 1.0
        loss_class = sigmoid_focal_loss(
            class_logits.float(), target_classes.float(), alpha=self.focal_alpha, gamma=self.focal_gamma,
            reduction="sum",
        ) / num_masks

        # objectness: BCE, 1 on matched queries
        objectness = outputs["objectness_logits"].float()
        target_objectness = torch.zeros_like(objectness)
        target_objectness[batch_idx, src_idx] = 1.0
        loss_objectness = nn.functional.binary_cross_entropy_with_logits(objectness, target_objectness)

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
