"""Semi-online top-K tracking of CaptionFormer (state outside nn.Modules, like transformers' Sam2 video sessions).

Per trajectory a memory bank keeps its last ``t_match`` clip-level query embeddings. For a new clip, the queries
whose per-clip score S passes ``score_threshold`` are matched as in the released code's top-K voting matcher:
one Hungarian assignment on the cosine cost ``1 - cos(query, memory)`` against each memory slot (the m-th most
recent embedding of every track), the ``k_match`` slots with the lowest assignment cost are kept, their cost
matrices are averaged with recency weights (newer slots weigh more), and a final Hungarian assignment links
queries to tracks (fewer than ``k_match`` slots: the single best slot's assignment, as the release). A link is
accepted if its combined cost is at most ``match_cost_threshold``; other queries open new tracks. Tracks absent
from a clip keep their memory, so an object that disappears and comes back keeps its id. With ``t_match = k_match
= 1`` this is plain adjacent-clip matching; with clips of one frame it is fully online.

At the end, a hysteresis filter drops flickering tracks: a run of consecutive observations is kept if all its
scores are >= ``hysteresis_low``, one is >= ``hysteresis_high`` and it spans >= ``hysteresis_min_length`` frames.

For captions, each track keeps at most ``2 * t_agg`` evenly spaced observations (the stride doubles when full),
so memory stays bounded however long the video is; :meth:`CaptionFormerTrackingSession.caption_samples` then
picks ``t_agg`` of them uniformly over the track's life.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


@dataclass(eq=False)
class TrackObservation:
    """One clip of a track: its clip index, score S, class probabilities and an opaque payload (frames)."""

    clip_index: int
    score: float
    class_probs: torch.Tensor | None = None
    payload: dict = field(default_factory=dict)
    caption_query: torch.Tensor | None = None


@dataclass(eq=False)
class Track:
    track_id: int
    memory: deque
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


class CaptionFormerTrackingSession:
    """State of one video's tracking. Feed clips in order with :meth:`update`, then call :meth:`finalize`."""

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
        for name, value in (("k_match", k_match), ("t_match", t_match), ("t_agg", t_agg),
                            ("hysteresis_min_length", hysteresis_min_length), ("frames_per_clip", frames_per_clip)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")
        if k_match > t_match:
            raise ValueError(f"`k_match` ({k_match}) must not exceed `t_match` ({t_match})")
        if hysteresis_low > hysteresis_high:
            raise ValueError(f"`hysteresis_low` ({hysteresis_low}) must not exceed `hysteresis_high` ({hysteresis_high})")
        self.k_match = k_match
        self.t_match = t_match
        self.score_threshold = score_threshold
        self.match_cost_threshold = match_cost_threshold
        self.hysteresis_low = hysteresis_low
        self.hysteresis_high = hysteresis_high
        self.hysteresis_min_length = hysteresis_min_length
        self.t_agg = t_agg
        self.frames_per_clip = frames_per_clip
        self.keep_observations = keep_observations
        self.tracks: list[Track] = []
        self.num_clips = 0
        self._next_id = 0

    @classmethod
    def from_config(cls, config, **overrides) -> CaptionFormerTrackingSession:
        kwargs = {
            "k_match": config.k_match,
            "t_match": config.t_match,
            "score_threshold": config.score_threshold,
            "match_cost_threshold": getattr(config, "match_cost_threshold", 0.7),
            "hysteresis_low": config.hysteresis_low,
            "hysteresis_high": config.hysteresis_high,
            "hysteresis_min_length": config.hysteresis_min_length,
            "t_agg": config.t_agg,
            "frames_per_clip": config.clip_length,
        }
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kwargs)

    # ------------------------------------------------------------------ association
    def association_cost(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Combined top-K cost ``(N, num_tracks)`` of unit-norm candidate embeddings against every track."""
        num_slots = max(len(t.memory) for t in self.tracks)
        # slot m (0 = most recent) of every track; tracks with a shorter memory repeat their oldest embedding
        bank = torch.stack(
            [torch.stack([t.memory[max(len(t.memory) - 1 - m, 0)] for t in self.tracks]) for m in range(num_slots)]
        )  # (M, num_tracks, D)
        costs = 1.0 - torch.einsum("nd,mtd->mnt", embeddings, bank)  # (M, N, num_tracks)
        costs_np = costs.numpy()
        slot_costs = np.empty(num_slots)
        for m in range(num_slots):
            rows, cols = linear_sum_assignment(costs_np[m])
            slot_costs[m] = costs_np[m][rows, cols].mean()
        if num_slots < self.k_match:
            return costs[int(np.argmin(slot_costs))]
        chosen = np.argsort(slot_costs, kind="stable")[: self.k_match]
        weights = torch.tensor([num_slots - m for m in chosen], dtype=costs.dtype)  # recency: newer weighs more
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
            ``(query_index, track_id, wants_caption_query)`` for every query kept in a track; ``wants_caption_query``
            says the observation entered the track's caption pool (give it a Q-Former output with
            :meth:`set_caption_query`).
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
        results = []
        for position, query_index in enumerate(keep):
            if position in assignment:
                track = self.tracks[assignment[position]]
            else:
                track = Track(track_id=self._next_id, memory=deque(maxlen=self.t_match))
                self._next_id += 1
                self.tracks.append(track)
            track.memory.append(candidates[position])
            probs = None if class_probs is None else class_probs[query_index].detach().float().cpu()
            if probs is not None:
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
            track.caption_pool = track.caption_pool[::2]
            track.caption_stride *= 2
            return any(o is observation for o in track.caption_pool)
        return True

    def set_caption_query(self, track_id: int, caption_query: torch.Tensor) -> None:
        """Attach the Q-Former output of the track's latest observation (see :meth:`update`)."""
        track = self.track_by_id(track_id)
        if not track.caption_pool:
            raise ValueError(f"track {track_id} has no observation waiting for a caption query")
        track.caption_pool[-1].caption_query = caption_query.detach().cpu()

    def track_by_id(self, track_id: int) -> Track:
        for track in self.tracks:
            if track.track_id == track_id:
                return track
        raise ValueError(f"no track with id {track_id}")

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

    def caption_samples(self, track: Track, method: str = "weighted"):
        """``(caption_queries (K, L, D), scores (K,))`` of up to ``t_agg`` clips sampled uniformly over the track's
        life (its caption pool); ``method='best'`` needs only the best one but all are returned."""
        pool = [o for o in track.caption_pool if o.caption_query is not None]
        if not pool:
            return None, None
        if len(pool) > self.t_agg:
            index = np.linspace(0, len(pool) - 1, self.t_agg).round().astype(int)
            pool = [pool[i] for i in index]
        return torch.stack([o.caption_query for o in pool]), torch.tensor([o.score for o in pool])

    def memory_nbytes(self) -> int:
        """Bytes held by memory banks and caption pools (bounded: ``t_match`` embeddings and ``2 * t_agg`` caption
        queries per track), not counting the output payloads."""
        total = 0
        for track in self.tracks:
            total += sum(e.numel() * e.element_size() for e in track.memory)
            total += sum(o.caption_query.numel() * o.caption_query.element_size() for o in track.caption_pool if o.caption_query is not None)
        return total
