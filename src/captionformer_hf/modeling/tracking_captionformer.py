"""Video-level state of CaptionFormer inference: semi-online top-K tracking, hysteresis and caption pools.

State lives here, outside the ``nn.Module``s (as transformers' Sam2 video sessions): a model creates a
:class:`CaptionFormerVideoSession` with ``model.init_video_session()``, each clip batch goes through
``model(pixel_values_videos, video_session=session)``, and ``model.finalize_video_session(session)`` returns the
trajectories with their captions.

**Association** (:class:`CaptionFormerTrackingSession`). Per trajectory a memory bank keeps its last ``t_match`` clip
query embeddings. For a new clip, the queries whose per-clip score S passes ``score_threshold`` are matched as in
the released code's top-K voting matcher: one Hungarian assignment on the cosine cost ``1 - cos(query, memory)``
against each memory slot (the m-th most recent embedding of every track), the ``k_match`` slots with the lowest
assignment cost are kept, their cost matrices are averaged with recency weights (newer slots weigh more), and a
final Hungarian assignment links queries to tracks (fewer than ``k_match`` slots: the single best slot's assignment,
as the release). A link is accepted if its combined cost is at most ``match_cost_threshold``; other queries open new
tracks. Tracks absent from a clip keep their memory, so an object that disappears and comes back keeps its id. With
``t_match = k_match = 1`` this is plain adjacent-clip matching; with clips of one frame it is fully online.

**Hysteresis.** At the end, a run of consecutive observations of a track is kept if all its scores are
``>= hysteresis_low``, one is ``>= hysteresis_high`` and it spans ``>= hysteresis_min_length`` frames.

**Caption pools.** Captions are computed after tracking, for the clips that aggregation samples only. Each track keeps
at most ``2 * t_agg`` evenly spaced observations (the stride doubles when full) with what the caption head needs for
them (its query, its mask on the caption frame at the vision encoder's patch grid, a reference to the caption frame
at the vision encoder's input size, shared by the observations of one clip); :meth:`caption_samples` picks ``t_agg``
of them uniformly over the track's life. Memory stays bounded however long the video is.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def _check_positive_ints(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")


def best_memory_slots(costs: np.ndarray, k: int, slack: float = 1e-5) -> np.ndarray:
    """The ``k`` memory slots whose Hungarian assignment of ``costs`` ``(M, N, tracks)`` has the lowest mean cost,
    ordered by that cost (ties: the lower slot first), as ranking all M assignments would give.

    The mean cost of a slot's assignment is at least the mean of its row minima (every row is assigned once when
    N <= tracks) or of its column minima (every column, when N > tracks). Slots are solved in the order of that bound,
    and solving stops once the next bound exceeds the k-th best cost found (``slack`` covers float rounding between
    the two means): usually about k assignments instead of M (up to T_match = 100)."""
    num_slots, rows, cols = costs.shape
    bounds = (costs.min(axis=2).mean(axis=1) if rows <= cols else costs.min(axis=1).mean(axis=1)).astype(np.float64)
    solved: dict[int, float] = {}
    for slot in np.argsort(bounds, kind="stable"):
        if len(solved) >= k and bounds[slot] > sorted(solved.values())[k - 1] + slack:
            break
        assigned_rows, assigned_cols = linear_sum_assignment(costs[slot])
        solved[int(slot)] = float(costs[slot][assigned_rows, assigned_cols].mean())
    ranked = sorted(solved, key=lambda slot: (solved[slot], slot))
    return np.array(ranked[:k], dtype=np.int64)


@dataclass(eq=False)
class TrackObservation:
    """One clip of a track: its clip index, score S, an opaque ``payload`` (e.g. the per-frame boxes and masks) and
    the caption head's inputs for that clip (set while the observation is in the track's caption pool)."""

    clip_index: int
    score: float
    payload: dict = field(default_factory=dict)
    caption_inputs: dict | None = None


@dataclass(eq=False)
class Track:
    track_id: int
    slot: int  # row of the session's memory bank
    session: CaptionFormerTrackingSession = field(repr=False)
    observations: list = field(default_factory=list)
    caption_pool: list = field(default_factory=list)  # evenly spaced observations kept for captioning
    caption_stride: int = 1
    num_observations: int = 0
    class_prob_sum: torch.Tensor | None = None

    @property
    def first_clip(self) -> int:
        return self.observations[0].clip_index

    @property
    def last_clip(self) -> int:
        return self.observations[-1].clip_index

    @property
    def memory(self) -> list[torch.Tensor]:
        """The memory bank's embeddings of this track, oldest first (at most ``t_match``)."""
        return self.session.memory_of(self)


class CaptionFormerTrackingSession:
    """Association, hysteresis and caption pools of one video. Feed clips in order with :meth:`update`, then call
    :meth:`finalize`. The memory banks of all tracks are one tensor ``(tracks, t_match, D)`` (ring buffers), so
    association costs every slot of every track with one gather and one matrix product."""

    def __init__(
        self,
        k_match: int = 7,
        t_match: int = 100,
        score_threshold: float = 0.5,
        match_cost_threshold: float = 0.7,
        hysteresis_low: float = 0.4,
        hysteresis_high: float = 0.85,
        hysteresis_min_length: int = 3,
        t_agg: int = 32,
        frames_per_clip: int = 1,
        keep_observations: bool = True,
    ):
        _check_positive_ints(k_match=k_match, t_match=t_match, t_agg=t_agg,
                             hysteresis_min_length=hysteresis_min_length, frames_per_clip=frames_per_clip)
        if k_match > t_match:
            raise ValueError(f"`k_match` ({k_match}) must not exceed `t_match` ({t_match})")
        for name, value in (("score_threshold", score_threshold), ("hysteresis_low", hysteresis_low),
                            ("hysteresis_high", hysteresis_high)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}")
        if hysteresis_low > hysteresis_high:
            raise ValueError(f"`hysteresis_low` ({hysteresis_low}) must not exceed `hysteresis_high` ({hysteresis_high})")
        self.k_match = k_match
        self.t_match = t_match
        self.score_threshold = float(score_threshold)
        self.match_cost_threshold = match_cost_threshold
        self.hysteresis_low = hysteresis_low
        self.hysteresis_high = hysteresis_high
        self.hysteresis_min_length = hysteresis_min_length
        self.t_agg = t_agg
        self.frames_per_clip = frames_per_clip
        self.keep_observations = keep_observations
        self.tracks: list[Track] = []
        self._by_id: dict[int, Track] = {}
        self.num_clips = 0
        self._next_id = 0
        self._bank: torch.Tensor | None = None  # (capacity, t_match, D)
        self._lengths = np.zeros(0, dtype=np.int64)  # embeddings held per slot
        self._write = np.zeros(0, dtype=np.int64)  # next ring position per slot

    @classmethod
    def from_config(cls, config, **overrides) -> CaptionFormerTrackingSession:
        kwargs = {
            "k_match": config.k_match,
            "t_match": config.t_match,
            "score_threshold": config.score_threshold,
            "match_cost_threshold": config.match_cost_threshold,
            "hysteresis_low": config.hysteresis_low,
            "hysteresis_high": config.hysteresis_high,
            "hysteresis_min_length": config.hysteresis_min_length,
            "t_agg": config.t_agg,
            "frames_per_clip": config.clip_length,
        }
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kwargs)

    # ------------------------------------------------------------------ memory bank
    def _new_slot(self, dim: int) -> int:
        slot = len(self.tracks)
        if self._bank is None or slot == self._bank.shape[0]:
            capacity = max(8, 2 * slot)
            bank = torch.zeros(capacity, self.t_match, dim)
            if self._bank is not None:
                bank[:slot] = self._bank
            self._bank = bank
            self._lengths = np.concatenate([self._lengths, np.zeros(capacity - len(self._lengths), dtype=np.int64)])
            self._write = np.concatenate([self._write, np.zeros(capacity - len(self._write), dtype=np.int64)])
        return slot

    def _remember(self, slot: int, embedding: torch.Tensor) -> None:
        self._bank[slot, self._write[slot]] = embedding
        self._write[slot] = (self._write[slot] + 1) % self.t_match
        self._lengths[slot] = min(self._lengths[slot] + 1, self.t_match)

    def memory_of(self, track: Track) -> list[torch.Tensor]:
        length, write = int(self._lengths[track.slot]), int(self._write[track.slot])
        return [self._bank[track.slot, (write - length + j) % self.t_match] for j in range(length)]

    # ------------------------------------------------------------------ association
    def association_cost(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Combined top-K cost ``(N, num_tracks)`` of unit-norm candidate embeddings against every track."""
        slots = np.array([t.slot for t in self.tracks])
        lengths, write = self._lengths[slots], self._write[slots]
        num_slots = int(lengths.max())
        # slot m (0 = most recent) of every track; tracks with a shorter memory repeat their oldest embedding
        m = np.arange(num_slots)[:, None]
        ring = (write[None, :] - 1 - np.minimum(m, lengths[None, :] - 1)) % self.t_match  # (M, tracks)
        bank = self._bank[torch.as_tensor(slots)[None, :], torch.as_tensor(ring)]  # (M, tracks, D)
        costs = 1.0 - torch.einsum("nd,mtd->mnt", embeddings, bank)  # (M, N, tracks)
        if num_slots < self.k_match:
            return costs[int(best_memory_slots(costs.numpy(), 1)[0])]
        chosen = best_memory_slots(costs.numpy(), self.k_match)
        weights = torch.tensor([num_slots - s for s in chosen], dtype=costs.dtype)  # recency: newer weighs more
        return torch.einsum("k,knt->nt", weights / weights.sum(), costs[torch.as_tensor(chosen)])

    def update(
        self,
        embeddings: torch.Tensor,
        scores: torch.Tensor,
        class_probs: torch.Tensor | None = None,
        payloads: list[dict] | None = None,
    ) -> list[tuple[int, int, bool]]:
        """Add one clip.

        Args:
            embeddings: ``(Q, D)`` the clip's object queries. scores: ``(Q,)`` their per-clip scores S.
            class_probs: ``(Q, C)`` optional class probabilities (the track's category is their mean's argmax).
            payloads: optional per-query dicts stored with the observation (e.g. per-frame boxes and masks).
        Returns:
            ``(query_index, track_id, wants_caption_inputs)`` for every query kept in a track;
            ``wants_caption_inputs`` says the observation entered the track's caption pool (give it the caption
            head's inputs with :meth:`set_caption_inputs`).
        """
        if embeddings.ndim != 2 or scores.ndim != 1 or embeddings.shape[0] != scores.shape[0]:
            raise ValueError(
                f"`embeddings` must be (Q, D) and `scores` (Q,), got {tuple(embeddings.shape)} and {tuple(scores.shape)}"
            )
        clip_index = self.num_clips
        self.num_clips += 1
        embeddings = embeddings.detach().float().cpu()
        scores = scores.detach().float().cpu()
        keep = torch.nonzero(scores >= self.score_threshold).flatten().tolist()
        if not keep:
            return []
        candidates = torch.nn.functional.normalize(embeddings[keep], dim=-1)
        assignment: dict[int, int] = {}  # candidate position -> track position
        if self.tracks:
            cost = self.association_cost(candidates).numpy()
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols):
                if cost[r, c] <= self.match_cost_threshold:
                    assignment[int(r)] = int(c)
        if class_probs is not None:
            class_probs = class_probs.detach().float().cpu()
        results = []
        for position, query_index in enumerate(keep):
            if position in assignment:
                track = self.tracks[assignment[position]]
            else:
                track = Track(track_id=self._next_id, slot=self._new_slot(candidates.shape[1]), session=self)
                self._next_id += 1
                self.tracks.append(track)
                self._by_id[track.track_id] = track
            self._remember(track.slot, candidates[position])
            if class_probs is not None:
                probs = class_probs[query_index]
                track.class_prob_sum = probs.clone() if track.class_prob_sum is None else track.class_prob_sum + probs
            observation = TrackObservation(
                clip_index=clip_index,
                score=float(scores[query_index]),
                payload=(payloads[query_index] if payloads is not None else {}),
            )
            if self.keep_observations:
                track.observations.append(observation)
            wants = self._offer_caption_pool(track, observation)
            results.append((query_index, track.track_id, wants))
        return results

    def _offer_caption_pool(self, track: Track, observation: TrackObservation) -> bool:
        index = track.num_observations
        track.num_observations += 1
        if index % track.caption_stride != 0:
            return False
        track.caption_pool.append(observation)
        if len(track.caption_pool) > 2 * self.t_agg:  # thin to every other one, double the stride
            for dropped in track.caption_pool[1::2]:
                dropped.caption_inputs = None  # release what the caption head would have needed
            track.caption_pool = track.caption_pool[::2]
            track.caption_stride *= 2
            return any(o is observation for o in track.caption_pool)
        return True

    def set_caption_inputs(self, track_id: int, caption_inputs: dict) -> None:
        """Attach the caption head's inputs to the track's latest observation (see :meth:`update`)."""
        track = self.track_by_id(track_id)
        if not track.caption_pool:
            raise ValueError(f"track {track_id} has no observation waiting for caption inputs")
        track.caption_pool[-1].caption_inputs = caption_inputs

    def track_by_id(self, track_id: int) -> Track:
        if track_id not in self._by_id:
            raise ValueError(f"no track with id {track_id}")
        return self._by_id[track_id]

    # ------------------------------------------------------------------ end of video
    def hysteresis_keep(self, scores: list[float], lengths: list[int]) -> list[bool]:
        """Which observations survive the hysteresis filter (see the module docstring)."""
        keep = [False] * len(scores)
        start = 0
        while start < len(scores):
            if scores[start] < self.hysteresis_low:
                start += 1
                continue
            end = start
            while end < len(scores) and scores[end] >= self.hysteresis_low:
                end += 1
            run = range(start, end)
            if max(scores[i] for i in run) >= self.hysteresis_high and sum(lengths[i] for i in run) >= self.hysteresis_min_length:
                for i in run:
                    keep[i] = True
            start = end
        return keep

    def finalize(self) -> list[Track]:
        """Tracks after the hysteresis filter (observations filtered in place), ordered by first appearance."""
        final = []
        for track in self.tracks:
            scores = [o.score for o in track.observations]
            lengths = [max(1, len(o.payload.get("frames", ())) or self.frames_per_clip) for o in track.observations]
            keep = self.hysteresis_keep(scores, lengths)
            kept = [o for o, k in zip(track.observations, keep) if k]
            if not kept:
                continue
            kept_ids = {id(o) for o in kept}
            track.observations = kept
            track.caption_pool = [o for o in track.caption_pool if id(o) in kept_ids]
            final.append(track)
        final.sort(key=lambda t: (t.first_clip, t.track_id))
        return final

    def caption_samples(self, track: Track, exact: bool = False) -> list[TrackObservation]:
        """Observations of the track's caption pool that have caption inputs, in time order, sampled uniformly over
        the track's life: up to ``t_agg`` (``exact``: exactly ``t_agg``, repeating observations of a short track, for
        the order-aware aggregations; see ``uniform_clip_indices``)."""
        from .captioning_captionformer import uniform_clip_indices

        pool = [o for o in track.caption_pool if o.caption_inputs is not None]
        return [pool[i] for i in uniform_clip_indices(len(pool), self.t_agg, exact=exact)]

    def memory_nbytes(self) -> int:
        """Bytes held for association and captions: the memory bank's filled slots (``t_match`` embeddings per
        track) and the tensors of the caption pools (at most ``2 * t_agg`` observations per track; a caption frame
        shared by several observations counts once). Output payloads are not counted."""
        total = 0
        if self._bank is not None:
            total += int(self._lengths[: len(self.tracks)].sum()) * self._bank.shape[-1] * self._bank.element_size()
        seen = set()
        for track in self.tracks:
            for observation in track.caption_pool:
                for value in (observation.caption_inputs or {}).values():
                    if isinstance(value, torch.Tensor) and value.data_ptr() not in seen:
                        seen.add(value.data_ptr())
                        total += value.numel() * value.element_size()
        return total


# ------------------------------------------------------------------------------------------------- release mode
def release_hysteresis(scores, low: float, high: float, min_duration: int) -> list[bool]:
    """The released code's hysteresis on one track's per-frame scores: a forward and a backward pass switch on at a
    score ``>= high`` and off below ``low`` (scores in between keep the state); a frame is active if either pass is
    on; runs of active frames shorter than ``min_duration`` are switched off, except a run that reaches the end of
    the video (the release checks a run only when an inactive frame follows it).

    Compared in float32 as the release does (``torch.tensor`` of the scores against Python-float thresholds, which
    torch casts to the tensor's float32): a score of exactly ``float32(0.9)`` reaches a 0.9 threshold here too."""
    import numpy as np

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
    ``caption_clips`` (clip, frame in clip) with ``caption_weights`` (empty: no caption)."""

    slot: int
    score: float
    label: int
    frames: list = field(default_factory=list)
    caption_clips: list = field(default_factory=list)
    caption_weights: list = field(default_factory=list)


class CaptionFormerReleaseTracker:
    """The released code's video level (``video_inference_mode="release"``), for converted official checkpoints.

    Every query slot of every clip is tracked: the first clip's queries define the slots; each new clip's queries
    are permuted onto the slots by the release's top-K vote matching (one Hungarian assignment per memory clip on
    ``1 - cos``, the ``k_match`` cheapest memory clips' cost matrices weighted by recency ``i + 1`` and averaged, a
    final Hungarian assignment; fewer memory clips than ``k_match``: the cheapest one's assignment), with no cost
    gate; the memory keeps the last ``t_match`` permuted clips. :meth:`finalize` applies the release's video-level
    selection (``box_mode``: clips with S > ``presence_threshold``, class-only video score; else the
    ``max_trajectories`` best slots by ``sqrt(class * objectness)`` video score, every frame), its hysteresis, its
    per-frame score threshold, and plans the captions (``aggregation``: ``"weighted"`` / ``"mean"`` over the
    ``linspace`` clips of the video, ``"best"``: the highest-S clip). All per-clip outputs are kept (offline, as the
    release)."""

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
    ):
        _check_positive_ints(k_match=k_match, t_match=t_match, t_agg=t_agg, max_trajectories=max_trajectories,
                             clip_length=clip_length)
        from .captioning_captionformer import ORDER_AWARE_AGGREGATIONS, ORDER_FREE_AGGREGATIONS

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
        }
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kwargs)

    @property
    def num_clips(self) -> int:
        return len(self.clips)

    def match(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Permutation ``(Q,)`` of the clip's queries onto the slots (slot ``j`` takes query ``perm[j]``)."""
        current = embeddings / embeddings.norm(dim=1)[:, None]
        cost_matrices, assignments, assignment_costs = [], [], []
        for age, remembered in enumerate(self.memory):  # oldest first
            target = remembered / remembered.norm(dim=1)[:, None]
            # float32 for scipy (bf16 / fp16 sessions), as the release's autocast casts the cost for its assignment
            cost = (1 - torch.mm(current, target.transpose(0, 1))).float().cpu()  # (current, slot)
            slot_rows, query_cols = linear_sum_assignment(cost.transpose(0, 1))
            assignments.append(query_cols)
            assignment_costs.append(cost[query_cols, slot_rows].sum())
            cost_matrices.append(cost * (age + 1))
        totals = torch.stack(assignment_costs, dim=0).float()
        if totals.shape[0] < self.k_match:
            best = torch.topk(totals, k=1, largest=False)
            return torch.as_tensor(assignments[int(best[1])])
        chosen = torch.topk(totals, k=self.k_match, largest=False)
        combined = torch.stack(cost_matrices, dim=0)[chosen[1]].mean(0)
        return torch.as_tensor(linear_sum_assignment(combined.transpose(0, 1))[1])

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
        ``masks (Q, T', h, w)`` logits (mask models), the source ``frame_indices`` of its frames, and
        ``caption_frames (T', 3, S, S)`` (the vision encoder's input). Returns the permutation onto the slots."""
        if embeddings.ndim != 2 or scores.shape != embeddings.shape[:1]:
            raise ValueError(
                f"`embeddings` must be (Q, D) and `scores` (Q,), got {tuple(embeddings.shape)} and {tuple(scores.shape)}"
            )
        if self.memory and embeddings.shape[0] != self.memory[0].shape[0]:
            raise ValueError(f"every clip must have the same {self.memory[0].shape[0]} queries")
        perm = torch.arange(embeddings.shape[0]) if not self.memory else self.match(embeddings)
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

    def finalize(self) -> list[ReleaseTrack]:
        """The release's video-level selection, hysteresis, per-frame threshold and caption plan."""
        if not self.clips:
            return []
        scores = torch.stack([c["scores"] for c in self.clips], dim=0)  # (clips, Q)
        class_logits = torch.stack([c["class_logits"] for c in self.clips], dim=0)  # (clips, Q, C)
        video_class, labels = class_logits.mean(dim=0).sigmoid().max(dim=-1)
        frames_of_clip = []
        start = 0
        for clip in self.clips:
            indices = clip["frame_indices"] or list(range(start, start + clip["num_frames"]))
            frames_of_clip.append(indices)
            start += clip["num_frames"]
        if self.box_mode:
            present = scores > self.presence_threshold  # (clips, Q)
            slots = torch.nonzero(present.any(dim=0)).flatten().tolist()
            video_scores = video_class
        else:
            objectness = torch.stack([c["objectness"] for c in self.clips], dim=0)
            video_scores = (video_class * objectness.mean(dim=0)) ** 0.5
            count = min(self.max_trajectories, video_scores.shape[0])
            slots = torch.topk(video_scores, count, sorted=False)[1].tolist()
            present = torch.ones_like(scores, dtype=torch.bool)
        plans = self._caption_plans(scores)
        tracks = []
        for slot in slots:
            entries = [
                (c, t, frames_of_clip[c][t], float(scores[c, slot]), bool(present[c, slot]))
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
            clips, weights = plans.get(slot, ([], []))
            tracks.append(ReleaseTrack(slot=slot, score=score, label=int(labels[slot]), frames=kept,
                                       caption_clips=clips, caption_weights=weights))
        return tracks

    def _caption_plans(self, scores: torch.Tensor) -> dict[int, tuple[list, list]]:
        """Per slot with a best S of at least ``caption_score_threshold``: the (clip, frame in clip) pairs and
        weights of its caption, drawn in slot order as the release does (the frame of a clip of T > 1 frames is
        random: ``torch.randint`` on the global generator). The weights are those of an order-free aggregation
        (uniform for the order-aware ones, which read the clips in time order instead)."""
        best_score, best_clip = scores.max(dim=0)
        if self.aggregation == "best":
            sampled = None
        else:
            from .captioning_captionformer import uniform_clip_indices

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
            if self.aggregation == "weighted":
                clip_scores = torch.stack([scores[c, slot] for c in clips]).unsqueeze(-1)
                weights = (clip_scores / (torch.sum(clip_scores, dim=0, keepdim=True) + 1e-6)).flatten().tolist()
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


class CaptionFormerVideoSession:
    """All the state of one video's inference: the tracker (:class:`CaptionFormerTrackingSession`), the frames
    processed so far, the per-frame outputs of every observation (boxes, RLE masks) and the caption pools.

    Create it with ``model.init_video_session(...)``; feed clip batches with ``model(pixel_values_videos,
    video_session=session, frame_indices=...)``; get the trajectories with ``model.finalize_video_session(session)``.

    Args:
        tracker: the association / hysteresis / caption-pool state: a :class:`CaptionFormerTrackingSession` (the
            paper's video level) or a :class:`CaptionFormerReleaseTracker` (the released code's).
        mask_encoder: callable ``(masks_logits (K, T, h, w), num_frames (K,)) -> K lists of RLE strings`` that turns
            the masks of the kept queries into per-frame RLE strings at the output size (the video processor's
            ``clip_mask_encoder(...)``); ``None``: no masks in the output.
        caption: keep what the caption head needs for the sampled clips (``False``: no captions).
    """

    def __init__(self, tracker, mask_encoder=None, caption: bool = True):
        self.tracker = tracker
        self.mask_encoder = mask_encoder
        self.caption = caption
        self.num_frames = 0  # frames processed (padding excluded)
        self.input_size: tuple[int, int] | None = None
        self.finalized = False

    @property
    def release(self) -> bool:
        return isinstance(self.tracker, CaptionFormerReleaseTracker)

    @property
    def score_threshold(self) -> float:
        return self.tracker.score_threshold

    def check_input_size(self, size: tuple[int, int]) -> None:
        if self.finalized:
            raise ValueError("this video session is finalized: create a new one with `model.init_video_session()`")
        if self.input_size is None:
            self.input_size = tuple(size)
        elif tuple(size) != self.input_size:
            raise ValueError(f"all clips of a video must have the same size {self.input_size}, got {tuple(size)}")

    def memory_nbytes(self) -> int:
        return self.tracker.memory_nbytes()


__all__ = [
    "CaptionFormerReleaseTracker",
    "CaptionFormerTrackingSession",
    "CaptionFormerVideoSession",
    "ReleaseTrack",
    "Track",
    "TrackObservation",
    "release_hysteresis",
]
