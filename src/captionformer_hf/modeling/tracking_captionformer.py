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

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .video_level_captionformer import (
    CaptionFormerVideoLevel,
    CaptionFormerVideoOutput,
    caption_head_outputs,
    check_positive_ints,
    generate_track_captions,
    register_video_inference_mode,
    top_k_vote_cost,
)


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
        check_positive_ints(k_match=k_match, t_match=t_match, t_agg=t_agg,
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
        costs = 1.0 - torch.einsum("nd,mtd->mnt", embeddings, bank)  # (M, N, tracks), the newest slot first
        return top_k_vote_cost(costs, self.k_match, ranking="bounded", normalise=True)

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




def duplicate_queries(masks_logits: torch.Tensor, scores: torch.Tensor, keep: torch.Tensor,
                      iou_threshold: float) -> torch.Tensor:
    """Per clip, the kept queries that duplicate a higher-scoring kept query: greedy by score S, a query is a
    duplicate when the IoU of its clip mask (``logit > 0`` over the clip's frames) with that of a query kept before
    it exceeds ``iou_threshold`` (Mask2Former's own inference resolves such overlaps when it pastes segments;
    ``config.duplicate_iou_threshold``). ``masks_logits (B, Q, T, h, w)``, ``scores`` / ``keep`` ``(B, Q)`` ->
    ``(B, Q)`` bool."""
    duplicate = torch.zeros_like(keep)
    binary = (masks_logits > 0).flatten(2).float()  # (B, Q, T*h*w)
    for b in range(keep.shape[0]):
        candidates = torch.nonzero(keep[b], as_tuple=True)[0]
        if len(candidates) < 2:
            continue
        order = candidates[torch.argsort(scores[b, candidates].float(), descending=True, stable=True)]
        m = binary[b, order]
        inter = m @ m.T
        area = m.sum(-1)
        iou = (inter / (area[:, None] + area[None, :] - inter).clamp(min=1)).cpu()  # one host copy per clip
        chosen: list[int] = []
        for i in range(len(order)):
            if chosen and bool((iou[i, chosen] > iou_threshold).any()):
                duplicate[b, order[i]] = True
            else:
                chosen.append(i)
    return duplicate


class PaperVideoLevel(CaptionFormerVideoLevel):
    """The paper's video level (``video_inference_mode="paper"``, models trained here): queries with S below the
    threshold are pruned (and, with ``config.duplicate_iou_threshold``, those whose clip mask duplicates a better
    query's), kept queries are linked by :class:`CaptionFormerTrackingSession`; per-frame boxes are collected for the
    kept queries as clips arrive (their masks: :meth:`mask_entries`, encoded by the processor); at the end the
    hysteresis filter runs and each trajectory gets one caption from ``t_agg`` clips of its caption pool. Streaming, bounded memory. Trajectories come in order of
    first appearance; a trajectory's score is the mean S of its kept clips, its category the argmax of its mean class
    probabilities."""

    name = "paper"
    pads_short_clips = True

    @classmethod
    def from_config(cls, config, threshold: float | None = None, **overrides) -> PaperVideoLevel:
        if overrides.get("presence_threshold") is not None:
            raise ValueError("`presence_threshold` is the release mode's (box models); the paper mode prunes by the "
                             "per-clip score threshold `threshold`")
        overrides.pop("presence_threshold", None)
        return cls(CaptionFormerTrackingSession.from_config(config, score_threshold=threshold, **overrides), config)

    def step(self, model, session, clips, outputs, frame_indices) -> torch.LongTensor:
        """Link the clips' kept queries to tracks. Device work is batched over the clip batch: one nonzero, one gather
        per output and one host copy of each."""
        tracker = self.tracker
        batch_size, num_queries = outputs.scores.shape
        keep = outputs.scores >= tracker.score_threshold
        if self.config.duplicate_iou_threshold is not None:
            keep = keep & ~duplicate_queries(outputs.masks_logits, outputs.scores, keep,
                                             self.config.duplicate_iou_threshold)
        batch_idx, query_idx = torch.nonzero(keep, as_tuple=True)
        num_kept = len(batch_idx)
        track_ids = torch.full((batch_size, num_queries), -1, dtype=torch.long)
        if num_kept:
            max_real = max(len(f) for f in frame_indices)
            visible = self._visible(outputs.masks_logits[batch_idx, query_idx, :max_real],
                                    [len(frame_indices[b]) for b in batch_idx.tolist()])
            host = {
                "scores": outputs.scores[batch_idx, query_idx].float().cpu(),
                "queries": outputs.object_queries[batch_idx, query_idx].float().cpu(),
                "probs": outputs.class_logits[batch_idx, query_idx].float().sigmoid().cpu(),
            }
            boxes = outputs.pred_boxes[batch_idx, query_idx, :max_real].float().cpu().numpy()
            visible_host = visible.cpu().numpy()
            batch_host, query_host = batch_idx.cpu().numpy(), query_idx.cpu().numpy()
        wanting = []  # (kept position, track id): observations that entered a caption pool
        for b in range(batch_size):
            if num_kept == 0:
                tracker.update(torch.zeros(0, 1), torch.zeros(0))
                continue
            rows = np.nonzero(batch_host == b)[0]
            payloads = []
            for k in rows:
                shown = np.nonzero(visible_host[k])[0]
                payloads.append({"frames": [int(frame_indices[b][t]) for t in shown], "boxes": boxes[k, shown]})
            rows_t = torch.as_tensor(rows)
            results = tracker.update(host["queries"][rows_t], host["scores"][rows_t], host["probs"][rows_t], payloads)
            for position, track_id, wants in results:
                k = int(rows[position])
                track_ids[b, int(query_host[k])] = track_id
                if wants and session.caption:
                    wanting.append((k, track_id))
        if wanting:
            self._store_caption_inputs(model, clips, outputs, batch_idx, query_idx, batch_host, wanting)
        return track_ids

    @staticmethod
    def _visible(masks_logits: torch.Tensor, real: list[int]) -> torch.BoolTensor:
        """``(K, T, h, w)`` mask logits of K kept queries, ``real`` frames of each one's clip -> ``(K, T)``: the real
        frames where the mask is not empty (the frames a trajectory lists)."""
        num_frames = masks_logits.shape[1]
        real_t = torch.tensor(real, device=masks_logits.device)
        return (masks_logits > 0).flatten(2).any(-1) & (torch.arange(num_frames, device=masks_logits.device) < real_t[:, None])

    def mask_entries(self, outputs, track_ids, frame_indices) -> torch.BoolTensor:
        """The frames each tracked query lists: of its real frames (the default's), those where its mask is not
        empty."""
        entries = super().mask_entries(outputs, track_ids, frame_indices)
        batch_idx, query_idx = torch.nonzero(entries.any(-1), as_tuple=True)
        if len(batch_idx):
            entries[batch_idx, query_idx] &= (outputs.masks_logits[batch_idx, query_idx] > 0).flatten(2).any(-1)
        return entries

    def _store_caption_inputs(self, model, clips, outputs, batch_idx, query_idx, batch_host, wanting) -> None:
        """What the caption head needs for observations that entered a caption pool: the caption frame at the vision
        encoder's input size (one copy per clip, shared), the object query and its mask on the patch grid (or its box
        for box-only models)."""
        from .captioning_captionformer import mask_logits_on_grid

        head = model.model.caption_head
        frame = model.caption_frame_index(self.config.clip_length)
        positions = torch.tensor([k for k, _ in wanting], device=batch_idx.device)
        rows, queries = batch_idx[positions], query_idx[positions]
        clips_needed = sorted({int(batch_host[k]) for k, _ in wanting})
        prepared = head.prepare_frames(clips[clips_needed, frame])
        frame_of_clip = {b: prepared[i].clone() for i, b in enumerate(clips_needed)}
        object_queries = outputs.object_queries[rows, queries]
        grid = mask_logits_on_grid(outputs.masks_logits[rows, queries, frame], head.grid_size)
        boxes = outputs.pred_boxes[rows, queries, frame] if self.config.box_only else None
        for w, (k, track_id) in enumerate(wanting):
            inputs = {"frame": frame_of_clip[int(batch_host[k])], "query": object_queries[w].clone(), "mask": grid[w].clone()}
            if boxes is not None:
                inputs["box"] = boxes[w].clone()
            self.tracker.set_caption_inputs(track_id, inputs)

    def finalize(self, model, session, caption, aggregation, batch_size, generate_kwargs) -> CaptionFormerVideoOutput:
        tracks = self.tracker.finalize()
        aggregation = aggregation or self.config.aggregation
        id_list, scores, categories = [], [], []
        frame_track, frame_index, frame_boxes, frame_scores = [], [], [], []
        for position, track in enumerate(tracks):
            id_list.append(track.track_id)
            scores.append(float(np.mean([o.score for o in track.observations])))
            categories.append(int(track.class_prob_sum.argmax()) if track.class_prob_sum is not None else -1)
            for observation in track.observations:
                payload = observation.payload
                count = len(payload.get("frames", ()))
                frame_track.extend([position] * count)
                frame_index.extend(payload.get("frames", ()))
                frame_scores.extend([observation.score] * count)
                if count:
                    frame_boxes.append(np.asarray(payload["boxes"], dtype=np.float32).reshape(count, 4))
        caption_ids = captioned = None
        if caption and session.caption and tracks:
            queries, weights, valid, captioned = self._caption_queries(model, tracks, aggregation, batch_size)
            rows = captioned.to(queries.device)
            caption_ids = generate_track_captions(model, queries[rows], captioned, aggregation, weights[rows],
                                                  valid[rows], **generate_kwargs)
        boxes = torch.from_numpy(np.concatenate(frame_boxes)) if frame_boxes else torch.zeros(0, 4)
        return self.video_output(session, id_list, scores, categories, caption_ids, captioned, frame_track, frame_index,
                                 boxes, frame_scores)

    def _caption_queries(self, model, tracks, aggregation: str, batch_size: int):
        """Per-clip Q-Former outputs ``(N, K, L, D)`` of the tracks' sampled clips in time order, their scores
        ``(N, K)``, which are real ``(N, K)`` and which tracks have any ``(N,)``."""
        from .captioning_captionformer import ORDER_AWARE_AGGREGATIONS

        exact = aggregation in ORDER_AWARE_AGGREGATIONS
        samples = [self.tracker.caption_samples(track, exact=exact) for track in tracks]
        flat = [o for observations in samples for o in observations]
        hidden = self.config.qformer_config.hidden_size
        length = 1 + self.config.num_query_tokens
        captioned = torch.tensor([len(s) > 0 for s in samples])
        width = max([len(s) for s in samples] + [1])
        padded = torch.zeros(len(tracks), width, length, hidden, device=model.device)
        valid = torch.zeros(len(tracks), width, dtype=torch.bool, device=model.device)
        weights = torch.zeros(len(tracks), width, device=model.device)
        if not flat:
            return padded, weights, valid, captioned
        frames, frame_of = [], {}
        for observation in flat:
            tensor = observation.caption_inputs["frame"]
            if id(tensor) not in frame_of:
                frame_of[id(tensor)] = len(frames)
                frames.append(tensor)
        outputs = caption_head_outputs(
            model.model.caption_head,
            frames,
            torch.tensor([frame_of[id(o.caption_inputs["frame"])] for o in flat]),
            torch.stack([o.caption_inputs["query"] for o in flat]),
            torch.stack([o.caption_inputs["mask"] for o in flat]),
            torch.stack([o.caption_inputs["box"] for o in flat]) if self.config.box_only else None,
            batch_size,
        )
        padded = padded.to(outputs.dtype)
        start = 0
        for i, observations in enumerate(samples):
            count = len(observations)
            padded[i, :count] = outputs[start : start + count]
            valid[i, :count] = True
            weights[i, :count] = torch.tensor([o.score for o in observations])
            start += count
        return padded, weights, valid, captioned


register_video_inference_mode("paper", PaperVideoLevel)


__all__ = [
    "CaptionFormerTrackingSession",
    "PaperVideoLevel",
    "Track",
    "TrackObservation",
    "duplicate_queries",
]
