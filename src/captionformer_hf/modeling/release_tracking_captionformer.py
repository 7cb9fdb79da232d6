"""The released code's video level (``video_inference_mode="release"``), for converted official checkpoints: the
tracker (:class:`CaptionFormerReleaseTracker`), its hysteresis, and the algorithm behind the model's video API
(:class:`ReleaseVideoLevel`). Offline as the release: every clip's outputs are kept until the end of the video."""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .captioning_captionformer import (
    ORDER_AWARE_AGGREGATIONS,
    ORDER_FREE_AGGREGATIONS,
    aggregation_weights,
    mask_logits_on_grid,
    uniform_clip_indices,
)
from .configuration_captionformer import _RELEASE_PRECISIONS
from .video_level_captionformer import (
    CaptionFormerVideoLevel,
    CaptionFormerVideoOutput,
    caption_head_outputs,
    caption_pad_id,
    check_positive_ints,
    generate_track_captions,
    register_video_inference_mode,
    top_k_vote_cost,
)


# ------------------------------------------------------------------------------------ the release's precision
# The released evaluation runs under torch.cuda.amp.autocast() (fp16). Its video level then sees fp16 class and
# objectness logits, boxes and mask logits (outputs of linear layers / einsum), float32 embeddings (layer norm runs in
# float32 under autocast), fp16 tracking costs (`torch.mm` of the normalised embeddings), float32 softmax, products
# with float32 tensors and powers. "fp16_autocast" computes the same: on CUDA under autocast, on the CPU by explicit
# rounding of the same tensors.
RELEASE_ASSOCIATIONS = ("top_k", "hungarian_temporal", "greedy")
# the release's TRACKING_*_WEIGHT defaults (the object, mask and dice weights do not enter its box-mode matcher)
HUNGARIAN_TEMPORAL_WEIGHTS = {"embed": 1.0, "class": 0.0, "bbox": 0.0, "giou": 0.0}


def autocast_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` as autocast computes it: both operands in fp16, an fp16 product (accumulated in float32)."""
    return torch.mm(a.half(), b.half())


def autocast_scores(class_logits: torch.Tensor, objectness_logits: torch.Tensor) -> torch.Tensor:
    """The release's per-clip score under autocast from fp16 logits: ``sigmoid`` of the fp16 class logits stays fp16,
    the objectness softmax (here the sigmoid of the converter's single logit ``a - b``) and the product and square
    root are float32: ``(max_c sigmoid(cls_c) * p_obj) ** 0.5`` (float32)."""
    class_prob = class_logits.float().sigmoid().half().amax(-1).float()
    return (class_prob * objectness_logits.float().sigmoid()) ** 0.5


def autocast_outputs(outputs):
    """The clip outputs as the release's autocast has them: class and objectness logits, boxes and mask logits
    rounded to fp16 (boxes: the release's raw ``(x, y, w, h)``; returned as float32 ``(cx, cy, w, h)`` of those fp16
    values, exactly), embeddings in float32, and the scores recomputed from them (:func:`autocast_scores`)."""
    boxes = outputs.pred_boxes.float()
    xywh = torch.cat([boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., 2:]], dim=-1).half().float()
    class_logits = outputs.class_logits.half()
    objectness_logits = outputs.objectness_logits.half()
    return type(outputs)(**{
        **dict(outputs.items()),
        "object_queries": outputs.object_queries.float(),
        "class_logits": class_logits,
        "objectness_logits": objectness_logits,
        "scores": autocast_scores(class_logits, objectness_logits),
        "pred_boxes": torch.cat([xywh[..., :2] + xywh[..., 2:] / 2, xywh[..., 2:]], dim=-1),
        "masks_logits": None if outputs.masks_logits is None else outputs.masks_logits.half(),
    })


def greedy_trajectory_ids(association: torch.Tensor, num_clips: int) -> torch.LongTensor:
    """The release's offline greedy association (``GREEDY_MATCHING``: ``greedy_extract_trajectories``) of C clips
    of Q queries from their ``(C*Q, C*Q)`` association matrix (clip-major rows; the release's: a softmax of the
    cosine similarities, every entry > 0). Pairs inside one clip are excluded, a query's own entry kept. Each round
    takes the query whose best match in every clip sums highest; it and its best match in every other clip get the
    next trajectory id, and their rows and columns leave the matrix. Q rounds; returns ``(C, Q)``: the trajectory id
    (0..Q-1) of each query of each clip."""
    total = association.shape[0]
    if association.shape != (total, total) or num_clips < 1 or total % num_clips:
        raise ValueError(f"`association` must be (C*Q, C*Q) for num_clips={num_clips}, got {tuple(association.shape)}")
    per_clip = total // num_clips
    clip_of = torch.arange(total, device=association.device) // per_clip
    scores = association * ((clip_of[:, None] != clip_of[None, :])
                            | torch.eye(total, dtype=torch.bool, device=association.device))
    ids = torch.full((total,), -1, dtype=torch.long, device=association.device)
    offsets = torch.arange(num_clips, device=association.device) * per_clip
    for trajectory in range(per_clip):
        best, best_query = scores.view(total, num_clips, per_clip).max(dim=2)  # (C*Q, C)
        anchor = torch.argmax(best.sum(dim=1))
        members = best_query[anchor] + offsets
        ids[members] = trajectory
        scores[members, :] = 0
        scores[:, members] = 0
    return ids.view(num_clips, per_clip)


def load_release_label_mapping(source) -> dict[int, int]:
    """The release's ``lvvis_to_vidstg`` class mapping (a JSON file's path, or its dict: 1-based LV-VIS id -> 1-based
    VidSTG id, as the release reads it) as the 0-based ``{lv_vis_id: vidstg_id}`` of ``release_label_mapping``."""
    if isinstance(source, dict):
        raw = source
    else:
        import json

        with open(source, encoding="utf-8") as handle:
            raw = json.load(handle)
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: expected a JSON object of 1-based class ids, got {type(raw).__name__}")
    mapping = {}
    for key, value in raw.items():
        try:
            key_id, value_id = int(key), int(value)
        except (TypeError, ValueError):
            raise ValueError(f"the label mapping must map class ids to class ids, got {key!r}: {value!r}") from None
        if key_id < 1 or value_id < 1:
            raise ValueError(f"the release's label mapping is 1-based, got {key!r}: {value!r}")
        mapping[key_id - 1] = value_id - 1
    return mapping


def release_hysteresis(scores, low: float, high: float, min_duration: int) -> list[bool]:
    """The released code's hysteresis on one track's per-frame scores: a forward and a backward pass switch on at a
    score ``>= high`` and off below ``low`` (scores in between keep the state); a frame is active if either pass is
    on; runs of active frames shorter than ``min_duration`` are switched off, except a run that reaches the end of
    the video (the release checks a run only when an inactive frame follows it).

    Compared in float32 as the release does (``torch.tensor`` of the scores against Python-float thresholds, which
    torch casts to the tensor's float32): a score of exactly ``float32(0.9)`` reaches a 0.9 threshold here too."""
    scores = np.asarray(scores, dtype=np.float32).tolist()
    low, high = float(np.float32(low)), float(np.float32(high))
    count = len(scores)
    forward, backward = [False] * count, [False] * count
    on = False
    for t in range(count):
        if scores[t] >= high:
            on = True
        elif scores[t] < low:
            on = False
        forward[t] = on
    on = False
    for t in range(count - 1, -1, -1):
        if scores[t] >= high:
            on = True
        elif scores[t] < low:
            on = False
        backward[t] = on
    active = [f or b for f, b in zip(forward, backward)]
    run = 0
    for t in range(count):
        if active[t]:
            run += 1
            continue
        if run < min_duration:
            for u in range(t - run, t):
                active[u] = False
        run = 0
    return active


@dataclass(eq=False)
class ReleaseTrack:
    """One query slot kept by the release's video level: ``slot`` (its track id), ``score`` (video score),
    ``label``, per-frame ``(clip index, frame in clip, frame index, score)`` entries, and the caption plan:
    ``caption_clips`` (clip, frame in clip) with ``caption_weights`` (empty: no caption), or, with several captions
    per video, ``part_captions``: ``(first frame, end frame, clip, frame in clip)`` per captioned part of the video
    (frame positions in the processed sequence, end excluded)."""

    slot: int
    score: float
    label: int
    frames: list = field(default_factory=list)
    caption_clips: list = field(default_factory=list)
    caption_weights: list = field(default_factory=list)
    part_captions: list = field(default_factory=list)


class CaptionFormerReleaseTracker:
    """The released code's video level (``video_inference_mode="release"``), for converted official checkpoints.

    Every query slot of every clip is tracked: the first clip's queries define the slots; each new clip's queries
    are permuted onto the slots (``association="top_k"``, the default) by the release's top-K vote matching (one Hungarian assignment per memory clip on
    ``1 - cos``, the ``k_match`` cheapest memory clips' cost matrices weighted by recency ``i + 1`` and averaged, a
    final Hungarian assignment; fewer memory clips than ``k_match``: the cheapest one's assignment), with no cost
    gate; the memory keeps the last ``t_match`` permuted clips (``"hungarian_temporal"``: :meth:`match_temporal`;
    ``"greedy"``: the queries stay in place until :meth:`finalize` associates all clips, :meth:`associate_greedy`).
    :meth:`finalize` applies the release's video-level
    selection (``box_mode``: clips with S > ``presence_threshold``, class-only video score; else the
    ``max_trajectories`` best slots by ``sqrt(class * objectness)`` video score, every frame), its hysteresis, its
    per-frame score threshold, and plans the captions (``aggregation``: ``"weighted"`` / ``"mean"`` over the
    ``linspace`` clips of the video, ``"best"``: the highest-S clip; ``captions_per_video > 1``: one caption per part
    of the video, :meth:`_part_caption_plans`). All per-clip outputs are kept (offline, as the release)."""

    def __init__(
        self,
        k_match: int = 7,
        t_match: int = 100,
        box_mode: bool = True,
        presence_threshold: float = 0.2,
        max_trajectories: int = 50,
        hysteresis_low: float = 0.4,
        hysteresis_high: float = 0.85,
        hysteresis_min_length: int = 3,
        track_score_threshold: float = 0.0,
        caption_score_threshold: float = 0.3,
        t_agg: int = 32,
        aggregation: str = "weighted",
        clip_length: int = 1,
        precision: str = "fp16_autocast",
        class_agnostic: bool = False,
        score_class: int | None = None,
        middle_clip_caption: bool = False,
        label_mapping: dict | None = None,
        association: str = "top_k",
        association_weights: dict | None = None,
        captions_per_video: int = 1,
    ):
        check_positive_ints(k_match=k_match, t_match=t_match, t_agg=t_agg, max_trajectories=max_trajectories,
                             clip_length=clip_length, captions_per_video=captions_per_video)
        self.captions_per_video = captions_per_video
        if aggregation not in ORDER_FREE_AGGREGATIONS + ORDER_AWARE_AGGREGATIONS:
            raise ValueError(f"`aggregation` must be one of {ORDER_FREE_AGGREGATIONS + ORDER_AWARE_AGGREGATIONS}, "
                             f"got {aggregation!r}")
        self.k_match, self.t_match = k_match, t_match
        self.box_mode = box_mode
        self.presence_threshold = presence_threshold
        self.max_trajectories = max_trajectories
        self.hysteresis_low, self.hysteresis_high = hysteresis_low, hysteresis_high
        self.hysteresis_min_length = hysteresis_min_length
        self.track_score_threshold = track_score_threshold
        self.caption_score_threshold = caption_score_threshold
        self.t_agg = t_agg
        self.aggregation = aggregation
        self.clip_length = clip_length
        if precision not in _RELEASE_PRECISIONS:
            raise ValueError(f"`precision` must be one of {_RELEASE_PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.class_agnostic = bool(class_agnostic)
        if score_class is not None and (isinstance(score_class, bool) or not isinstance(score_class, int)
                                        or score_class < 0):
            raise ValueError(f"`score_class` must be None or a class id >= 0, got {score_class!r}")
        self.score_class = score_class
        if middle_clip_caption and aggregation in ORDER_AWARE_AGGREGATIONS:
            raise ValueError(f"`middle_clip_caption` captions from one clip: it needs an order-free aggregation "
                             f"{ORDER_FREE_AGGREGATIONS}, got {aggregation!r}")
        self.middle_clip_caption = bool(middle_clip_caption)
        self.label_mapping = None if label_mapping is None else {int(k): int(v) for k, v in label_mapping.items()}
        if association not in RELEASE_ASSOCIATIONS:
            raise ValueError(f"`association` must be one of {RELEASE_ASSOCIATIONS}, got {association!r}")
        if association == "hungarian_temporal" and not box_mode:
            raise ValueError("`association='hungarian_temporal'` is the release's box-mode matcher: it needs a box model")
        self.association = association
        weights = dict(HUNGARIAN_TEMPORAL_WEIGHTS, **(association_weights or {}))
        unknown = sorted(set(weights) - set(HUNGARIAN_TEMPORAL_WEIGHTS))
        if unknown or not any(weights.values()):
            raise ValueError(f"`association_weights` takes {sorted(HUNGARIAN_TEMPORAL_WEIGHTS)} (not all 0), got "
                             f"{association_weights!r}")
        self.association_weights = weights
        self.memory: deque = deque(maxlen=t_match)
        self.clips: list[dict] = []

    @classmethod
    def from_config(cls, config, **overrides) -> CaptionFormerReleaseTracker:
        kwargs = {
            "k_match": config.k_match, "t_match": config.t_match, "box_mode": config.box_only,
            "presence_threshold": config.presence_threshold, "max_trajectories": config.max_trajectories,
            "hysteresis_low": config.hysteresis_low, "hysteresis_high": config.hysteresis_high,
            "hysteresis_min_length": config.hysteresis_min_length,
            "track_score_threshold": config.track_score_threshold,
            "caption_score_threshold": config.caption_score_threshold, "t_agg": config.t_agg,
            "aggregation": config.aggregation, "clip_length": config.clip_length,
            "precision": config.release_precision, "class_agnostic": config.release_class_agnostic,
            "score_class": config.release_score_class, "middle_clip_caption": config.release_middle_clip_caption,
            "label_mapping": config.release_label_mapping, "association": config.release_association,
            "association_weights": config.release_association_weights,
            "captions_per_video": config.release_captions_per_video,
        }
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kwargs)

    @property
    def num_clips(self) -> int:
        return len(self.clips)

    @property
    def fp16(self) -> bool:
        """Whether the video level computes as the release under fp16 autocast (``precision="fp16_autocast"``)."""
        return self.precision == "fp16_autocast"

    def match(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Permutation ``(Q,)`` of the clip's queries onto the slots (slot ``j`` takes query ``perm[j]``).

        ``fp16_autocast``: float32 normalisation (``norm`` runs in float32 under autocast), an fp16 ``torch.mm``,
        fp16 costs on the CPU (weighted, summed and averaged in fp16 as the release's CPU code does), the assignment
        on their float32 values. ``native``: the session's dtype, costs cast to float32 (scipy has no bfloat16)."""
        current = embeddings.float() if self.fp16 else embeddings
        current = current / current.norm(dim=1)[:, None]
        costs = []
        for remembered in reversed(self.memory):  # the newest first
            target = remembered.float() if self.fp16 else remembered
            target = (target / target.norm(dim=1)[:, None]).transpose(0, 1)
            if self.fp16:
                costs.append((1 - autocast_mm(current, target)).cpu())
            else:
                costs.append((1 - torch.mm(current, target)).float().cpu())
        combined = top_k_vote_cost(torch.stack(costs), self.k_match, ranking="release", normalise=False)
        return torch.as_tensor(linear_sum_assignment(combined.float().transpose(0, 1))[1])

    def update(
        self,
        embeddings: torch.Tensor,
        scores: torch.Tensor,
        class_logits: torch.Tensor,
        objectness: torch.Tensor,
        boxes: torch.Tensor,
        masks: torch.Tensor | None = None,
        frame_indices: list[int] | None = None,
        caption_frames: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Add one clip: ``embeddings (Q, D)``, its per-clip ``scores (Q,)`` S, ``class_logits (Q, C)``,
        ``objectness (Q,)`` probabilities, ``boxes (Q, T', 4)`` (normalised cx, cy, w, h of its T' real frames),
        ``masks (Q, T', g, g)`` mask logits on the caption head's patch grid (mask models with captions; the
        release keeps the full masks, of which its caption head reads only this), the source ``frame_indices`` of
        its frames, and ``caption_frames (T', 3, S, S)`` (the vision encoder's input). Returns the permutation onto the slots."""
        if embeddings.ndim != 2 or scores.shape != embeddings.shape[:1]:
            raise ValueError(
                f"`embeddings` must be (Q, D) and `scores` (Q,), got {tuple(embeddings.shape)} and {tuple(scores.shape)}"
            )
        if self.memory and embeddings.shape[0] != self.memory[0].shape[0]:
            raise ValueError(f"every clip must have the same {self.memory[0].shape[0]} queries")
        if self.score_class is not None:  # get_pred_score's [:, k : k + 1] slice of S
            scores = self.class_scores(class_logits[:, self.score_class : self.score_class + 1], objectness)
        if not self.memory or self.association == "greedy":  # greedy: associated at the end (offline)
            perm = torch.arange(embeddings.shape[0])
        elif self.association == "hungarian_temporal":
            perm = self.match_temporal(embeddings, class_logits, objectness, boxes)
        else:
            perm = self.match(embeddings)
        index = perm.to(embeddings.device)
        self.memory.append(embeddings[index])
        real = boxes.shape[1]
        self.clips.append({
            "embeddings": embeddings[index],
            "scores": scores[perm.to(scores.device)].float().cpu(),
            "class_logits": class_logits[perm.to(class_logits.device)].float().cpu(),
            "objectness": objectness[perm.to(objectness.device)].float().cpu(),
            "boxes": boxes[perm.to(boxes.device)].float().cpu(),
            "masks": None if masks is None else masks[perm.to(masks.device)],
            "frame_indices": list(frame_indices) if frame_indices is not None else None,
            "num_frames": real,
            "caption_frames": caption_frames,
        })
        return perm

    def match_temporal(self, embeddings, class_logits, objectness, boxes) -> torch.Tensor:
        """The release's ``VideoHungarianTemporalMatcher`` (box mode, ``HUNGARIAN_TRACK_MATCHING``): one Hungarian
        assignment of the clip's queries to the previous clip's (permuted) ones on ``class * L1 of the
        [sqrt(p_c * p_obj)..., 1 - p_obj] vectors + embed * (1 - cos) + bbox * L1 + giou * (1 - GIoU)`` of the
        previous clip's last box and this clip's first (``x, y, w, h``; GIoU with the release's 1e-7 clamps), in
        float32."""
        from .matching_captionformer import broadcast_generalized_box_iou

        previous = self.clips[-1]
        weights = self.association_weights

        def probabilities(logits, p_obj):
            p_obj = p_obj.float().cpu()[:, None]
            return torch.cat([(logits.float().cpu().sigmoid() * p_obj) ** 0.5, 1 - p_obj], dim=1)

        def xywh(b):  # (Q, 4) (cx, cy, w, h) -> the release's (x, y, w, h)
            b = b.float().cpu()
            return torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, 2:]], dim=1)

        def xyxy(b):  # box_xywh_to_xyxy, then the release's box_clamp_xyxy (x1 >= x0, y1 >= y0)
            corner = b[:, :2] + b[:, 2:]
            return torch.cat([b[:, :2], torch.maximum(b[:, :2], corner)], dim=1)

        cost = torch.zeros(embeddings.shape[0], embeddings.shape[0])
        if weights["class"]:
            cost += weights["class"] * torch.cdist(probabilities(previous["class_logits"], previous["objectness"]),
                                                   probabilities(class_logits, objectness), p=1)
        if weights["embed"]:
            before = torch.nn.functional.normalize(previous["embeddings"].float().cpu(), dim=1)
            now = torch.nn.functional.normalize(embeddings.float().cpu(), dim=1)
            cost += weights["embed"] * (1 - before @ now.T)
        last, first = xywh(previous["boxes"][:, -1]), xywh(boxes[:, 0])
        if weights["bbox"]:
            cost += weights["bbox"] * torch.cdist(last, first, p=1)
        if weights["giou"]:
            cost += weights["giou"] * (1 - broadcast_generalized_box_iou(xyxy(last)[:, None], xyxy(first)[None], 1e-7))
        return torch.as_tensor(linear_sum_assignment(cost.numpy())[1])

    def associate_greedy(self) -> torch.LongTensor:
        """``association="greedy"`` (``GREEDY_MATCHING``): all clips at once, at the end of the video. The association
        matrix is the softmax of the cosine similarities of every clip's queries (an fp16 ``torch.mm`` under
        ``fp16_autocast``, a float32 softmax), :func:`greedy_trajectory_ids` gives each query a trajectory id, and,
        as the release, a clip's ids are then used as its gather permutation: slot j of clip c takes query
        ``ids[c, j]`` (the query whose trajectory id is j only when the id permutations agree, e.g. queries in the
        same order in every clip). Each clip's stored outputs are permuted so; ``mask_keys`` records the query (its
        provisional track id from :meth:`update`) whose mask each slot uses. Returns the ids ``(C, Q)``."""
        embeddings = torch.cat([c["embeddings"] for c in self.clips])
        embeddings = embeddings.float() if self.fp16 else embeddings
        unit = embeddings / embeddings.norm(dim=1, keepdim=True)
        similarity = autocast_mm(unit, unit.T).float() if self.fp16 else unit @ unit.T
        ids = greedy_trajectory_ids(similarity.softmax(dim=-1).float().cpu(), len(self.clips))
        for clip, perm in zip(self.clips, ids):
            for key in ("embeddings", "scores", "class_logits", "objectness", "boxes", "masks"):
                if clip[key] is not None:
                    clip[key] = clip[key][perm.to(clip[key].device)]
            clip["mask_keys"] = perm
        return ids

    def class_scores(self, class_logits: torch.Tensor, objectness: torch.Tensor) -> torch.Tensor:
        """S = ``(max_c sigmoid(class_logits) * objectness) ** 0.5`` over the given classes (fp16 sigmoid under
        ``fp16_autocast``, as :func:`autocast_scores`)."""
        class_prob = class_logits.float().sigmoid()
        if self.fp16:
            class_prob = class_prob.half().float()
        return (class_prob.amax(-1) * objectness.float()) ** 0.5

    def finalize(self) -> list[ReleaseTrack]:
        """The release's video-level selection, hysteresis, per-frame threshold and caption plan."""
        if not self.clips:
            return []
        if self.association == "greedy" and "mask_keys" not in self.clips[0]:
            self.associate_greedy()
        scores = torch.stack([c["scores"] for c in self.clips], dim=0)  # (clips, Q)
        class_logits = torch.stack([c["class_logits"] for c in self.clips], dim=0)  # (clips, Q, C)
        # the release averages its (clips, Q, C + 1) stack without the last (no-object) column: the same strided
        # layout here, so that the mean rounds, and exact ties break, as there
        with_column = torch.cat([class_logits, class_logits.new_zeros(*class_logits.shape[:2], 1)], dim=-1)
        # the classes that score (the release's slice of its stack: all but the no-object column, or one class)
        first, end = (0, -1) if self.score_class is None else (self.score_class, self.score_class + 1)
        if self.fp16:  # the mean and sigmoid of fp16 logits stay fp16 under autocast
            mean = with_column.half()[:, :, first:end].mean(dim=0)
            video_class, labels = mean.float().sigmoid().half().float().max(dim=-1)
        else:
            video_class, labels = with_column[:, :, first:end].mean(dim=0).sigmoid().max(dim=-1)
        labels = labels + first
        objectness = torch.stack([c["objectness"] for c in self.clips], dim=0)  # (clips, Q)
        # the per-frame scores of the video output: S, or the objectness alone (class-agnostic)
        frame_scores = objectness if self.class_agnostic else scores
        frames_of_clip = []
        start = 0
        for clip in self.clips:
            indices = clip["frame_indices"] or list(range(start, start + clip["num_frames"]))
            frames_of_clip.append(indices)
            start += clip["num_frames"]
        if self.box_mode:
            present = frame_scores > self.presence_threshold  # (clips, Q)
            slots = torch.nonzero(present.any(dim=0)).flatten().tolist()
            video_scores = video_class
        else:
            video_scores = video_class if self.class_agnostic else (video_class * objectness.mean(dim=0)) ** 0.5
            count = min(self.max_trajectories, video_scores.shape[0])
            slots = torch.topk(video_scores, count, sorted=False)[1].tolist()
            present = torch.ones_like(scores, dtype=torch.bool)
        several = self.captions_per_video > 1
        plans = self._part_caption_plans(scores) if several else self._caption_plans(scores)
        tracks = []
        for slot in slots:
            label = int(labels[slot])
            if self.label_mapping is not None:  # LV-VIS -> VidSTG: tracks of unmapped classes are dropped
                if label not in self.label_mapping:
                    continue
                label = self.label_mapping[label]
            entries = [
                (c, t, frames_of_clip[c][t], float(frame_scores[c, slot]), bool(present[c, slot]))
                for c in range(len(self.clips)) for t in range(self.clips[c]["num_frames"])
            ]
            active = release_hysteresis([e[3] for e in entries], self.hysteresis_low, self.hysteresis_high,
                                        self.hysteresis_min_length)
            if not any(active):
                continue
            score = float(video_scores[slot])
            if self.box_mode:
                kept = [e[:4] for e, on in zip(entries, active) if on and e[4]
                        and not (self.track_score_threshold > 0 and e[3] <= self.track_score_threshold)]
            else:
                if self.track_score_threshold > 0 and not score > self.track_score_threshold:
                    continue
                kept = [e[:4] for e in entries]
            if several:
                tracks.append(ReleaseTrack(slot=slot, score=score, label=label, frames=kept,
                                           part_captions=plans.get(slot, [])))
                continue
            clips, weights = plans.get(slot, ([], []))
            tracks.append(ReleaseTrack(slot=slot, score=score, label=label, frames=kept,
                                       caption_clips=clips, caption_weights=weights))
        return tracks

    def _part_caption_plans(self, scores: torch.Tensor) -> dict[int, list[tuple[int, int, int, int]]]:
        """``captions_per_video`` = P > 1 (the release's ``NUM_CAPTIONS_PER_VIDEO``): the video's F frames are cut
        into P parts, part p covering frames ``[F p // P, F (p + 1) // P)``; in each part, every slot whose best S
        over the part's clips ``[start // T, end // T)`` (T = ``clip_length``; the other clips count as S = 0) is at
        least ``caption_score_threshold`` gets one caption from that best clip alone (no aggregation, as the
        release's single-clip ``generate``; the frame of a clip of T > 1 frames drawn by ``torch.randint``, part by
        part, slot by slot), written on every frame of the part. As the release, the last part captions only the
        first slot that qualifies there (its loop breaks once the part reaches the last frame), and a part without
        a whole clip of its own scores 0 everywhere. Returns ``{slot: [(start, end, clip, frame in clip), ...]}``."""
        num_frames = sum(clip["num_frames"] for clip in self.clips)
        parts = self.captions_per_video
        plans: dict[int, list] = {}
        for part in range(parts):
            start, end = num_frames * part // parts, num_frames * (part + 1) // parts
            first_clip, end_clip = start // self.clip_length, end // self.clip_length
            part_scores = torch.zeros_like(scores, dtype=torch.float32)
            part_scores[first_clip:end_clip] = scores[first_clip:end_clip]
            best_score, best_clip = part_scores.max(dim=0)
            for slot in range(scores.shape[1]):
                if best_score[slot] < self.caption_score_threshold:
                    continue
                clip = int(best_clip[slot])
                real = self.clips[clip]["num_frames"]
                frame = int(torch.randint(0, real, (1,))) if real > 1 else 0
                plans.setdefault(slot, []).append((start, end, clip, frame))
                if end >= num_frames:  # the release's loop ends here: one caption in the last part
                    break
        return plans

    def _caption_plans(self, scores: torch.Tensor) -> dict[int, tuple[list, list]]:
        """Per slot with a best S of at least ``caption_score_threshold``: the (clip, frame in clip) pairs and
        weights of its caption, drawn in slot order as the release does (the frame of a clip of T > 1 frames is
        random: ``torch.randint`` on the global generator). The weights are those of an order-free aggregation
        (uniform for the order-aware ones, which read the clips in time order instead)."""
        best_score, best_clip = scores.max(dim=0)
        if self.middle_clip_caption:  # the middle one of the video's full clips
            sampled = [sum(c["num_frames"] for c in self.clips) // self.clip_length // 2]
        elif self.aggregation == "best":
            sampled = None
        else:
            sampled = uniform_clip_indices(len(self.clips), self.t_agg, exact=True)
        plans = {}
        for slot in range(scores.shape[1]):
            if best_score[slot] < self.caption_score_threshold:
                continue
            clips = [int(best_clip[slot])] if sampled is None else sampled
            pairs = []
            for c in clips:
                real = self.clips[c]["num_frames"]
                frame = int(torch.randint(0, real, (1,))) if real > 1 else 0
                pairs.append((c, frame))
            if self.aggregation == "weighted":  # the release's clip_scores / (sum + 1e-6)
                clip_scores = torch.stack([scores[c, slot] for c in clips])[None]
                weights = aggregation_weights(clip_scores, method="weighted", epsilon=1e-6)[0].tolist()
            else:
                weights = [1.0 / len(clips)] * len(clips)
            plans[slot] = (pairs, weights)
        return plans

    def memory_nbytes(self) -> int:
        """Bytes of the kept per-clip outputs (they grow with the video, as in the release)."""
        total = 0
        for clip in self.clips:
            for value in clip.values():
                if isinstance(value, torch.Tensor):
                    total += value.numel() * value.element_size()
        return total


class ReleaseVideoLevel(CaptionFormerVideoLevel):
    """The released code's video level behind the model's video API: every query slot of every clip goes to the
    :class:`CaptionFormerReleaseTracker` (a short last clip runs as it is, unpadded); at the end, the tracker's
    selection and captions from each track's caption plan. The processor encodes every slot's mask on every frame as
    the clips arrive (the default :meth:`mask_entries`: which slots survive is known only at the end), so the
    session keeps no full-size masks, only what the caption head reads (patch-grid masks, caption frames): its memory
    still grows with the video, as the release's. Trajectories come in slot order; a trajectory's score is its slot's video score."""

    name = "release"
    pads_short_clips = False

    @classmethod
    def from_config(cls, config, threshold: float | None = None, **overrides) -> ReleaseVideoLevel:
        if threshold is not None:
            raise ValueError(
                "`threshold` is the paper mode's per-clip pruning threshold; release mode has none (a mask model keeps "
                "the `max_trajectories` best tracks by video score; a box model's per-clip presence threshold is "
                "`presence_threshold`)"
            )
        if overrides.get("presence_threshold") is not None and not config.box_only:
            raise ValueError("`presence_threshold`: a release-mode mask model has no presence threshold (it keeps the "
                             "`max_trajectories` best tracks by video score)")
        return cls(CaptionFormerReleaseTracker.from_config(config, **overrides), config)

    def autocast(self, device: torch.device):
        """fp16 autocast on CUDA with ``precision="fp16_autocast"`` (the released evaluation's
        ``torch.cuda.amp.autocast()``); on the CPU, :meth:`prepare_outputs` rounds the outputs instead."""
        if self.tracker.fp16 and torch.device(device).type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def prepare_outputs(self, outputs):
        """``fp16_autocast``: the outputs as the release's autocast has them (:func:`autocast_outputs`)."""
        return autocast_outputs(outputs) if self.tracker.fp16 else outputs

    def step(self, model, session, clips, outputs, frame_indices) -> torch.LongTensor:
        head = model.model.caption_head
        batch_size, num_queries = outputs.scores.shape
        track_ids = torch.full((batch_size, num_queries), -1, dtype=torch.long)
        objectness = outputs.objectness_logits.float().sigmoid()  # softmax([obj, no-obj])[0] of the release
        for b in range(batch_size):
            real = len(frame_indices[b])
            caption_frames = head.prepare_frames(clips[b, :real]).clone() if session.caption else None
            # the caption head reads a mask on its patch grid only: that is all the session keeps of a mask
            grids = None
            if session.caption and not self.config.box_only:
                masks = outputs.masks_logits[b, :, :real]
                grids = mask_logits_on_grid(masks.flatten(0, 1), head.grid_size).view(*masks.shape[:2], head.grid_size,
                                                                                      head.grid_size)
            perm = self.tracker.update(
                outputs.object_queries[b], outputs.scores[b], outputs.class_logits[b], objectness[b],
                outputs.pred_boxes[b, :, :real], masks=grids,
                frame_indices=[int(f) for f in frame_indices[b]], caption_frames=caption_frames,
            )
            track_ids[b, perm] = torch.arange(num_queries)
        return track_ids

    def finalize(self, model, session, caption, aggregation, batch_size, generate_kwargs) -> CaptionFormerVideoOutput:
        if aggregation is not None and aggregation != self.tracker.aggregation:
            raise ValueError("release mode: set the aggregation when the session is created (tracker_overrides)")
        tracks = self.tracker.finalize()
        clips = self.tracker.clips
        frame_track, frame_index, frame_boxes, frame_scores, mask_keys = [], [], [], [], []
        for position, track in enumerate(tracks):
            for c, t, index, score in track.frames:
                frame_track.append(position)
                frame_index.append(index)
                frame_scores.append(score)
                frame_boxes.append(clips[c]["boxes"][track.slot, t])
                keys = clips[c].get("mask_keys")  # greedy: the slot's query of that clip (its id at `step`)
                mask_keys.append(track.slot if keys is None else int(keys[track.slot]))
        caption_ids = captioned = part_caption_ids = frame_caption_indices = None
        if caption and session.caption and tracks:
            if self.tracker.captions_per_video > 1:
                caption_ids, captioned, part_caption_ids, frame_caption_indices = self._part_captions(
                    model, tracks, clips, batch_size, generate_kwargs)
            else:
                captioned = torch.tensor([bool(t.caption_clips) for t in tracks])
                with self.autocast(model.device):
                    queries = self._caption_queries(model, tracks, clips, batch_size) if captioned.any() else None
                    caption_ids = generate_track_captions(model, queries, captioned, **generate_kwargs)
        return self.video_output(session, [t.slot for t in tracks], [t.score for t in tracks],
                                 [t.label for t in tracks], caption_ids, captioned, frame_track, frame_index,
                                 torch.stack(frame_boxes) if frame_boxes else torch.zeros(0, 4), frame_scores,
                                 precision=self.tracker.precision,
                                 frame_mask_track_ids=mask_keys if self.tracker.association == "greedy" else None,
                                 part_caption_ids=part_caption_ids, frame_caption_indices=frame_caption_indices)

    def _part_captions(self, model, tracks, clips, batch_size: int, generate_kwargs):
        """Several captions per video (:meth:`CaptionFormerReleaseTracker._part_caption_plans`): every planned part
        captioned from its one clip (K captions, in track then part order), each per-frame entry pointed at the
        caption of the part holding its frame (-1: none), and each track's first caption as its trajectory caption.
        Returns ``(caption_ids (N, L), captioned (N,), part_caption_ids (K, L), frame_caption_indices (M,))``."""
        parts = [(position, plan) for position, track in enumerate(tracks) for plan in track.part_captions]
        if parts:
            with self.autocast(model.device):
                queries = self._query_outputs(model, [(tracks[p].slot, c, t) for p, (_, _, c, t) in parts], clips,
                                              batch_size)
                part_caption_ids = generate_track_captions(model, queries, torch.ones(len(parts), dtype=torch.bool),
                                                           **generate_kwargs)
        else:
            part_caption_ids = generate_track_captions(model, None, torch.zeros(0, dtype=torch.bool))
        first_frame = [0]  # position of each clip's first frame in the processed sequence
        for clip in clips:
            first_frame.append(first_frame[-1] + clip["num_frames"])
        rows_of_track: dict[int, list] = {}
        for row, (position, (start, end, _, _)) in enumerate(parts):
            rows_of_track.setdefault(position, []).append((start, end, row))
        frame_caption_indices = []
        for position, track in enumerate(tracks):
            for c, t, _, _ in track.frames:
                at = first_frame[c] + t
                rows = [row for start, end, row in rows_of_track.get(position, []) if start <= at < end]
                frame_caption_indices.append(rows[0] if rows else -1)
        captioned = torch.tensor([position in rows_of_track for position in range(len(tracks))])
        caption_ids = part_caption_ids.new_full((len(tracks), part_caption_ids.shape[1]), caption_pad_id(model))
        for position, rows in rows_of_track.items():
            caption_ids[position] = part_caption_ids[rows[0][2]]
        return caption_ids, captioned, part_caption_ids, torch.tensor(frame_caption_indices, dtype=torch.long)

    def _caption_queries(self, model, tracks, clips, batch_size: int) -> torch.Tensor:
        """Caption queries of the captioned tracks: ``(N_captioned, L, D)``, the Q-Former outputs of each track's
        planned (clip, frame) pairs summed with the plan's weights, or, for an order-aware aggregation,
        ``(N_captioned, t_agg, L, D)``, the planned clips' outputs in time order."""
        pairs = [(track.slot, c, t) for track in tracks if track.caption_clips for c, t in track.caption_clips]
        outputs = self._query_outputs(model, pairs, clips, batch_size)
        count = len(next(t for t in tracks if t.caption_clips).caption_clips)
        per_track = outputs.view(-1, count, *outputs.shape[1:])  # every plan has as many clips
        if self.config.aggregation in ORDER_AWARE_AGGREGATIONS:  # the plan's t_agg clips in time order
            return per_track
        weights = torch.tensor([t.caption_weights for t in tracks if t.caption_clips], dtype=outputs.dtype,
                               device=outputs.device)
        return torch.einsum("nk,nkld->nld", weights, per_track)

    def _query_outputs(self, model, pairs, clips, batch_size: int) -> torch.Tensor:
        """Q-Former outputs ``(len(pairs), L, D)`` of ``(slot, clip, frame in clip)`` pairs: the slot's query of that
        clip, attending to that frame through the slot's box or patch-grid mask there (each frame encoded once)."""
        head = model.model.caption_head
        unique = list(dict.fromkeys((c, t) for _, c, t in pairs))
        position = {key: i for i, key in enumerate(unique)}
        if self.config.box_only:
            boxes = torch.stack([clips[c]["boxes"][slot, t] for slot, c, t in pairs]).to(model.device)
            grids = boxes.new_zeros(len(pairs), head.grid_size, head.grid_size)
        else:
            boxes = None
            grids = torch.stack([clips[c]["masks"][slot, t] for slot, c, t in pairs])  # on the patch grid
        return caption_head_outputs(
            head,
            [clips[c]["caption_frames"][t] for c, t in unique],
            torch.tensor([position[(c, t)] for _, c, t in pairs]),
            torch.stack([clips[c]["embeddings"][slot] for slot, c, t in pairs]),
            grids,
            boxes,
            batch_size,
        )


register_video_inference_mode("release", ReleaseVideoLevel)


__all__ = [
    "CaptionFormerReleaseTracker",
    "ReleaseTrack",
    "ReleaseVideoLevel",
    "autocast_mm",
    "autocast_outputs",
    "autocast_scores",
    "greedy_trajectory_ids",
    "load_release_label_mapping",
    "release_hysteresis",
]
