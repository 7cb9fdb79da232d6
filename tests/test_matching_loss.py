import pytest
import torch
from conftest import make_labels
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

from captionformer_hf.modeling.loss_captionformer import CaptionFormerLoss, uncertain_point_coordinates
from captionformer_hf.modeling.matching_captionformer import CaptionFormerHungarianMatcher, pair_wise_box_costs


def predictions_from_targets(target, num_queries, permutation, num_labels=3, num_frames=1):
    """Predictions whose queries `permutation[i]` reproduce target i exactly; other queries predict nothing."""
    n, t, h, w = target["mask_labels"].shape
    masks = torch.full((num_queries, t, h, w), -20.0)
    classes = torch.full((num_queries, num_labels), -20.0)
    boxes = torch.full((num_queries, t, 4), 0.5)
    for i, q in enumerate(permutation):
        masks[q] = target["mask_labels"][i] * 40.0 - 20.0
        classes[q, target["class_labels"][i]] = 20.0
        boxes[q] = target["boxes"][i]
    return masks, classes, boxes


def stack_outputs(samples):
    masks, classes, boxes = zip(*samples)
    return {
        "masks_logits": torch.stack(masks),
        "class_logits": torch.stack(classes),
        "pred_boxes": torch.stack(boxes),
        "objectness_logits": torch.zeros(len(samples), masks[0].shape[0]),
    }


def test_matcher_recovers_a_known_permutation():
    labels = make_labels(1, 2, num_objects=3, size=32, seed=1)
    permutation = [4, 0, 2]
    outputs = stack_outputs([predictions_from_targets(labels[0], 6, permutation, num_frames=2)])
    (src, tgt), = CaptionFormerHungarianMatcher(num_points=512)(outputs, labels)
    assert dict(zip(src.tolist(), tgt.tolist())) == {4: 0, 0: 1, 2: 2}
    assert src.tolist() == sorted(src.tolist())


def test_matcher_batched_equals_per_sample_and_handles_empty_targets():
    labels = make_labels(3, 2, num_objects=2, size=32, seed=2)
    labels[1] = {
        "class_labels": torch.zeros(0, dtype=torch.long),
        "mask_labels": torch.zeros(0, 2, 32, 32),
        "boxes": torch.zeros(0, 2, 4),
    }
    torch.manual_seed(0)
    outputs = {
        "masks_logits": torch.randn(3, 5, 2, 8, 8),
        "class_logits": torch.randn(3, 5, 3),
        "pred_boxes": torch.rand(3, 5, 2, 4) * 0.5 + 0.25,
        "objectness_logits": torch.randn(3, 5),
    }
    matcher = CaptionFormerHungarianMatcher(num_points=64)
    torch.manual_seed(7)
    batched = matcher(outputs, labels)
    for i in range(3):
        torch.manual_seed(7)
        single = matcher({k: v[i : i + 1] for k, v in outputs.items()}, labels[i : i + 1])[0]
        assert torch.equal(batched[i][0], single[0]) and torch.equal(batched[i][1], single[1])
    assert batched[1][0].numel() == 0 and batched[1][1].numel() == 0
    assert len(batched[0][0]) == 2


def test_score_class_cost_lets_objectness_decide_between_equal_queries():
    """Two queries with the same mask, box and class probability: the class cost alone ties them (the first wins);
    with the release's score cost sqrt(class * objectness) the query with the higher objectness is matched."""
    labels = make_labels(1, 1, num_objects=1, size=32, seed=3)
    masks, classes, boxes = predictions_from_targets(labels[0], 2, [0])
    masks[1], classes[1], boxes[1] = masks[0], classes[0], boxes[0]
    outputs = stack_outputs([(masks, classes, boxes)])
    outputs["objectness_logits"] = torch.tensor([[-3.0, 3.0]])
    only_mask_and_class = dict(cost_class=2.0, cost_mask=0.0, cost_dice=0.0, cost_bbox=0.0, cost_giou=0.0)
    (src, _), = CaptionFormerHungarianMatcher(**only_mask_and_class)(outputs, labels)
    assert src.tolist() == [0]
    (src, _), = CaptionFormerHungarianMatcher(**only_mask_and_class, class_cost="score")(outputs, labels)
    assert src.tolist() == [1]
    with pytest.raises(ValueError, match="`class_cost` must be 'class' or 'score', got 'objectness'"):
        CaptionFormerHungarianMatcher(class_cost="objectness")


def test_matcher_rejects_mismatched_batch():
    with pytest.raises(ValueError, match="targets"):
        CaptionFormerHungarianMatcher()({"class_logits": torch.zeros(2, 5, 3)}, make_labels(1, 1))
    with pytest.raises(ValueError, match="All matcher costs"):
        CaptionFormerHungarianMatcher(0, 0, 0, 0, 0)


def test_box_costs_by_hand():
    pred = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]]])  # (Q=1, T=2, 4)
    target = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2]]])  # (N=1, T=2, 4)
    # only frame 1 valid: L1 = 0.1, boxes [0.4,0.4,0.6,0.6] vs [0.5,0.4,0.7,0.6]: IoU = 0.02/0.06, hull 0.06
    l1, giou = pair_wise_box_costs(pred, target, torch.tensor([[False, True]]))
    torch.testing.assert_close(l1, torch.tensor([[0.1]]))
    torch.testing.assert_close(giou, torch.tensor([[-1 / 3]]))
    # both valid: averaged over the 2 frames
    l1, giou = pair_wise_box_costs(pred, target, torch.tensor([[True, True]]))
    torch.testing.assert_close(l1, torch.tensor([[0.05]]))
    torch.testing.assert_close(giou, torch.tensor([[-(1 + 1 / 3) / 2]]))


def test_uncertain_points_match_mask2former_for_one_frame():
    """Parity with transformers' Mask2FormerLoss.sample_points_using_uncertainty (adapted for T frames)."""
    logits = torch.randn(4, 1, 16, 16)
    reference = Mask2FormerLoss(Mask2FormerConfig(), weight_dict={})
    torch.manual_seed(3)
    expected = reference.sample_points_using_uncertainty(logits, reference.calculate_uncertainty, 100, 3.0, 0.75)
    torch.manual_seed(3)
    ours = uncertain_point_coordinates(logits, 100, 3.0, 0.75)
    torch.testing.assert_close(ours, expected)


def test_perfect_predictions_have_near_zero_mask_and_box_loss(toy_config):
    config = toy_config(clip_length=2, segmenter_overrides={"use_auxiliary_loss": False})
    criterion = CaptionFormerLoss(config)
    labels = make_labels(2, 2, num_objects=2, size=32, seed=4, with_captions=False)
    outputs = stack_outputs([predictions_from_targets(t, 5, [3, 1], num_frames=2) for t in labels])
    outputs["objectness_logits"] = torch.full((2, 5), -20.0)
    outputs["objectness_logits"][:, [1, 3]] = 20.0
    losses, indices = criterion([outputs], labels)
    assert set(losses) == {"loss_class", "loss_objectness", "loss_mask", "loss_dice", "loss_bbox", "loss_giou"}
    for key in ("loss_bbox", "loss_giou", "loss_objectness", "loss_class"):
        assert losses[key].item() < 1e-4, (key, losses[key])
    # point-sampled masks: only the (importance-sampled) bilinear edge points keep an error
    inverted = dict(outputs)
    inverted["masks_logits"] = -outputs["masks_logits"]
    losses_inverted, _ = criterion([inverted], labels)
    assert losses["loss_mask"] < 0.2 * losses_inverted["loss_mask"]
    assert losses["loss_dice"] < 0.2 * losses_inverted["loss_dice"]
    # a wrong box costs exactly weight * |error| (L1), averaged over visible boxes
    shifted = dict(outputs)
    shifted["pred_boxes"] = outputs["pred_boxes"].clone()
    shifted["pred_boxes"][:, [1, 3], :, 0] += 0.01
    losses_shifted, _ = criterion([shifted], labels)
    torch.testing.assert_close(losses_shifted["loss_bbox"], torch.tensor(config.bbox_l1_weight * 0.01), atol=1e-5, rtol=1e-4)


def test_objects_invisible_in_a_frame_do_not_count_for_boxes(toy_config):
    config = toy_config(clip_length=2, segmenter_overrides={"use_auxiliary_loss": False})
    criterion = CaptionFormerLoss(config)
    labels = make_labels(1, 2, num_objects=1, size=32, seed=5, with_captions=False)
    labels[0]["valid"] = torch.tensor([[True, False]])
    outputs = stack_outputs([predictions_from_targets(labels[0], 3, [0], num_frames=2)])
    outputs["pred_boxes"][0, 0, 1] = torch.tensor([0.9, 0.9, 0.1, 0.1])  # garbage in the invisible frame
    losses, _ = criterion([outputs], labels)
    assert losses["loss_bbox"].item() < 1e-5


# ------------------------------------------------------------------------- the batched matcher = the per-frame one
def per_frame_reference_costs(matcher, outputs, target, b, points):
    """The previous matcher: one cost matrix per clip, box costs frame by frame with torchvision's pair-wise GIoU."""
    from torchvision.ops import box_convert, generalized_box_iou
    from transformers.models.mask2former.modeling_mask2former import (
        pair_wise_dice_loss,
        pair_wise_sigmoid_cross_entropy_loss,
    )

    from captionformer_hf.modeling.matching_captionformer import sample_clip_masks

    cost = -outputs["class_logits"][b].sigmoid()[:, target["class_labels"]] * matcher.cost_class
    pred_points = sample_clip_masks(outputs["masks_logits"][b], points)
    target_points = sample_clip_masks(target["mask_labels"], points)
    cost = cost + matcher.cost_mask * pair_wise_sigmoid_cross_entropy_loss(pred_points, target_points)
    cost = cost + matcher.cost_dice * pair_wise_dice_loss(pred_points, target_points)
    pred, tgt = outputs["pred_boxes"][b], target["boxes"]
    valid = target["mask_labels"].flatten(2).amax(-1) > 0
    weights = valid.float()
    l1 = torch.zeros(pred.shape[0], tgt.shape[0])
    giou = torch.zeros_like(l1)
    for t in range(pred.shape[1]):
        l1 += torch.cdist(pred[:, t], tgt[:, t], p=1) * weights[None, :, t]
        giou += -generalized_box_iou(box_convert(pred[:, t], "cxcywh", "xyxy"),
                                     box_convert(tgt[:, t], "cxcywh", "xyxy")) * weights[None, :, t]
    denominator = weights.sum(1).clamp(min=1)
    return cost + matcher.cost_bbox * l1 / denominator + matcher.cost_giou * giou / denominator


@pytest.mark.parametrize("seed", range(5))
def test_batched_costs_and_assignments_equal_the_per_frame_matcher(seed):
    from scipy.optimize import linear_sum_assignment

    labels = make_labels(4, 3, num_objects=3, size=32, seed=seed)
    labels[2] = {"class_labels": torch.zeros(0, dtype=torch.long), "mask_labels": torch.zeros(0, 3, 32, 32),
                 "boxes": torch.zeros(0, 3, 4)}
    labels[3]["mask_labels"][1, 2] = 0  # object 1 of clip 3 is absent from frame 2
    g = torch.Generator().manual_seed(seed)
    outputs = {"masks_logits": torch.randn(4, 7, 3, 8, 8, generator=g), "class_logits": torch.randn(4, 7, 3, generator=g),
               "pred_boxes": torch.rand(4, 7, 3, 4, generator=g) * 0.5 + 0.25, "objectness_logits": torch.zeros(4, 7)}
    matcher = CaptionFormerHungarianMatcher(num_points=256)
    points = torch.rand(256, 2, generator=g)
    batched = matcher.cost_matrices(outputs, labels, points)
    for b, target in enumerate(labels):
        if len(target["class_labels"]) == 0:
            assert batched[b].shape == (7, 0)
            continue
        expected = per_frame_reference_costs(matcher, outputs, target, b, points)
        torch.testing.assert_close(batched[b], expected, rtol=1e-5, atol=1e-5)
        rows, cols = linear_sum_assignment(expected.numpy())
        torch.manual_seed(0)
        assert (rows.tolist(), cols.tolist()) == tuple(x.tolist() for x in linear_sum_assignment(batched[b].numpy()))


def test_broadcast_giou_equals_torchvision():
    from torchvision.ops import generalized_box_iou

    from captionformer_hf.modeling.matching_captionformer import broadcast_generalized_box_iou

    a = torch.rand(6, 4)
    a[:, 2:] += a[:, :2]
    b = torch.rand(5, 4)
    b[:, 2:] += b[:, :2]
    torch.testing.assert_close(broadcast_generalized_box_iou(a[:, None], b[None]), generalized_box_iou(a, b))


# -------------------------------------------------------------------------------------- the release's loss options
def test_release_class_and_objectness_losses_follow_the_released_criterion(toy_config):
    import torch.nn.functional as F

    config = toy_config(clip_length=1, class_loss="release_bce", objectness_loss="weighted_ce", no_object_weight=0.4,
                        num_labels=6, class_frequencies=[10, 0, 40, 5, 1, 90], federated_num_categories=6,
                        segmenter_overrides={"use_auxiliary_loss": False})
    criterion = CaptionFormerLoss(config)
    labels = make_labels(2, 1, num_objects=2, size=32, seed=9, with_captions=False)
    labels[0]["class_labels"] = torch.tensor([2, 5])
    labels[1]["class_labels"] = torch.tensor([5, 0])
    g = torch.Generator().manual_seed(1)
    outputs = {"masks_logits": torch.randn(2, 5, 1, 8, 8, generator=g), "class_logits": torch.randn(2, 5, 6, generator=g),
               "pred_boxes": torch.rand(2, 5, 1, 4, generator=g) * 0.5 + 0.25,
               "objectness_logits": torch.randn(2, 5, generator=g)}
    torch.manual_seed(4)
    losses, indices = criterion([outputs], labels)
    # the release's loss_labels, from its formulas (C + 1 logits: no-object last; two objectness logits)
    batch = torch.cat([torch.full_like(s, b) for b, (s, _) in enumerate(indices)])
    query = torch.cat([s for s, _ in indices])
    target = torch.full((2, 5), 6)
    target[batch, query] = torch.cat([t["class_labels"][j] for t, (_, j) in zip(labels, indices)])
    no_object = (target == 6).long()
    binary = F.one_hot(target, 7)[:, :, :6].float()
    torch.manual_seed(4)
    criterion.matcher(outputs, labels)  # the same random state as the criterion's own matching
    appeared = torch.unique(target)
    prob = torch.ones(7)
    prob[-1] = 0
    prob[:6] = torch.tensor([10, 0, 40, 5, 1, 90], dtype=torch.float) ** 0.5
    prob[appeared] = 0
    if len(appeared) < 6:
        appeared = torch.cat([appeared, torch.multinomial(prob, 6 - len(appeared), replacement=False)])
    mask = torch.zeros(7)
    mask[appeared] = 1
    weight = mask[:6].view(1, 1, 6).expand(2, 5, 6)
    bce = F.binary_cross_entropy_with_logits(outputs["class_logits"], binary, reduction="none")
    expected_class = 1.7 * torch.sum(bce * weight * (1 - no_object[:, :, None])) / 10
    torch.testing.assert_close(losses["loss_class"], config.class_weight * expected_class)
    two_logits = torch.stack([outputs["objectness_logits"], torch.zeros(2, 5)], dim=-1)  # softmax[0] = sigmoid(a - b)
    expected_object = F.cross_entropy(two_logits.transpose(1, 2), no_object, torch.tensor([1.0, 0.4]))
    torch.testing.assert_close(losses["loss_objectness"], config.objectness_weight * expected_object)


def test_loss_options_are_validated(toy_config):
    with pytest.raises(ValueError, match="`class_loss`"):
        toy_config(class_loss="softmax")
    with pytest.raises(ValueError, match="`class_frequencies` must be 3"):
        toy_config(class_frequencies=[1, 2])
    with pytest.raises(ValueError, match="`objectness_loss`"):
        toy_config(objectness_loss="focal")


def test_caption_token_loss_by_hand():
    """Per caption, the mean cross-entropy of its counted tokens, token i predicted at prefix length + i - 1; then the
    mean over captions (the released code's normalisation)."""
    from captionformer_hf.modeling.loss_captionformer import caption_token_loss

    logits = torch.zeros(2, 4, 5)  # 2 prefix positions, then 2 caption tokens, vocabulary 5
    logits[0, 1, 1], logits[0, 2, 3], logits[1, 1, 2], logits[1, 2, 4] = 2.0, 1.0, 3.0, 9.0
    ids = torch.tensor([[1, 3], [2, 0]])
    mask = torch.tensor([[1, 1], [1, 0]])  # the second caption's second token does not count

    def nll(z, t):
        return float(torch.logsumexp(z, 0) - z[t])

    expected = ((nll(logits[0, 1], 1) + nll(logits[0, 2], 3)) / 2 + nll(logits[1, 1], 2)) / 2
    assert float(caption_token_loss(logits, ids, mask)) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="must cover a prefix"):
        caption_token_loss(torch.zeros(1, 2, 5), ids[:1], mask[:1])
