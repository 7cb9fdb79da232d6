"""The video level of CaptionFormer inference: one interface for the algorithms that turn clip outputs into
trajectories, their registry, the session that holds one video's state, and the pieces the algorithms share.

An algorithm (:class:`CaptionFormerVideoLevel`) is created per video from the model config
(:meth:`~CaptionFormerVideoLevel.from_config`), gets every clip batch's outputs in order
(:meth:`~CaptionFormerVideoLevel.step` -> the track id of every query) and returns the trajectories as tensors at the
end (:meth:`~CaptionFormerVideoLevel.finalize` -> :class:`CaptionFormerVideoOutput`). The model's
``init_video_session`` / ``forward(..., video_session=)`` / ``finalize_video_session`` only delegate, the way
``generate`` puts its decoding strategies behind one call. Two algorithms are registered:

* ``"paper"`` (``tracking_captionformer.py``): the paper's semi-online tracker, streaming with bounded memory.
* ``"release"`` (``release_tracking_captionformer.py``): the released code's video level, exactly (offline).

A new mode is one module with a subclass and one :func:`register_video_inference_mode` call; its name is then a
valid ``config.video_inference_mode``.

Shared pieces, each written once, the differences between the modes as explicit parameters: the top-K vote
matching (:func:`top_k_vote_cost`), the caption head over the sampled (frame, object) pairs
(:func:`caption_head_outputs`), and caption generation with padding (:func:`generate_track_captions`). The
aggregation weights are ``captioning_captionformer.aggregation_weights`` (``epsilon``: 0 for the paper, 1e-6 as
the release).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from transformers.utils import ModelOutput

from .configuration_captionformer import _VIDEO_INFERENCE_MODES


@dataclass
class CaptionFormerVideoOutput(ModelOutput):
    r"""
    Trajectories of a whole video (`finalize_video_session`, `track_video`), on the CPU, in the model's input space
    (no masks: the processor encodes them from each clip batch's `CaptionFormerTrackingOutput`, keyed by (track id,
    frame index), and joins them in `post_process_dense_captions`). N = trajectories, M = their per-frame entries
    (sorted by trajectory, then frame), L = caption tokens.

    track_ids (`torch.LongTensor` of shape `(N,)`): track id of each trajectory.
    scores (`torch.FloatTensor` of shape `(N,)`): trajectory score (the mode's: paper, the mean per-clip score S of
        its kept clips; release, the video score of its query slot).
    category_ids (`torch.LongTensor` of shape `(N,)`): the trajectory's class (`config.id2label`).
    caption_ids (`torch.LongTensor` of shape `(N, L)`, *optional*): generated caption tokens (new tokens only,
        padded with the generation config's `pad_token_id`); `None` without captioning.
    captioned (`torch.BoolTensor` of shape `(N,)`, *optional*): which trajectories have a caption.
    frame_track_indices (`torch.LongTensor` of shape `(M,)`): the trajectory (0..N-1) of each per-frame entry.
    frame_indices (`torch.LongTensor` of shape `(M,)`): the frame (source frame index when the clips carried it).
    frame_boxes (`torch.FloatTensor` of shape `(M, 4)`): boxes, normalised (cx, cy, w, h) of the padded model input.
    frame_scores (`torch.FloatTensor` of shape `(M,)`): the per-clip score S of the clip holding the frame.
    num_frames (`int`): frames processed. input_size (`tuple[int, int]`): the padded model input `(H, W)`.
    video_inference_mode (`str`): the algorithm that made it (see the config); `"release"` outputs are
        post-processed as the released code does (boxes clamped per coordinate and rounded to whole pixels).
    frame_mask_track_ids (`torch.LongTensor` of shape `(M,)`, *optional*): the track id under which each entry's mask
        was keyed when its clip batch was post-processed (`None`: its trajectory's track id; they differ only when the
        algorithm assigns the final ids after the clips, as release mode's greedy association).
    precision (`str`, *optional*): release mode: `config.release_precision` (`"fp16_autocast"`: the processor
        converts the boxes to pixels in fp16, as the release).
    part_caption_ids (`torch.LongTensor` of shape `(K, L)`, *optional*): captions of parts of trajectories (release
        mode with `release_captions_per_video > 1`: one per captioned part of the video); `caption_ids` then holds
        each trajectory's first one.
    frame_caption_indices (`torch.LongTensor` of shape `(M,)`, *optional*): the row of `part_caption_ids` that
        captions each per-frame entry (-1: none); set with `part_caption_ids`.
    """

    track_ids: torch.LongTensor | None = None
    scores: torch.FloatTensor | None = None
    category_ids: torch.LongTensor | None = None
    caption_ids: torch.LongTensor | None = None
    captioned: torch.BoolTensor | None = None
    frame_track_indices: torch.LongTensor | None = None
    frame_indices: torch.LongTensor | None = None
    frame_boxes: torch.FloatTensor | None = None
    frame_scores: torch.FloatTensor | None = None
    num_frames: int | None = None
    input_size: tuple | None = None
    video_inference_mode: str | None = None
    frame_mask_track_ids: torch.LongTensor | None = None
    precision: str | None = None
    part_caption_ids: torch.LongTensor | None = None
    frame_caption_indices: torch.LongTensor | None = None


class CaptionFormerVideoLevel:
    """Interface of a video-level algorithm (one instance per video; all its state lives in it).

    Subclasses set ``name`` and ``pads_short_clips`` (``True``: a last clip shorter than ``config.clip_length`` is
    padded with its last frame before the segmenter, the padding not reported; ``False``: it runs as it is) and
    implement :meth:`from_config`, :meth:`step` and :meth:`finalize`; :meth:`mask_entries` says which (query, frame)
    masks of a clip batch the video output can refer to (the processor encodes those)."""

    name: str = ""
    pads_short_clips: bool = True

    def __init__(self, tracker, config):
        self.tracker = tracker  # the algorithm's state (tracks, settings)
        self.config = config

    @classmethod
    def from_config(cls, config, threshold: float | None = None, **overrides) -> CaptionFormerVideoLevel:
        """The algorithm for one video with ``config``'s settings; ``threshold``: the user's per-clip threshold
        (``None``: the config's), ``overrides``: other settings (``k_match``, ``t_agg``, ...)."""
        raise NotImplementedError

    def step(self, model, session: CaptionFormerVideoSession, clips: torch.Tensor, outputs,
             frame_indices: list[list[int]]) -> torch.LongTensor:
        """Take one clip batch: ``clips`` ``(B, T, 3, H, W)`` (as segmented), ``outputs`` (the model's
        ``CaptionFormerModelOutput``), the source frame index of each real frame of each clip. Returns the track id of
        every query ``(B, Q)`` (-1: in no track)."""
        raise NotImplementedError

    def autocast(self, device: torch.device):
        """The context the segmenter and the caption head run in (default: none; the release mode's fp16 autocast
        on CUDA)."""
        return contextlib.nullcontext()

    def prepare_outputs(self, outputs):
        """The clip outputs as the algorithm computes with them, before :meth:`step` (default: as they are); the
        tracking output of the forward pass carries these."""
        return outputs

    def mask_entries(self, outputs, track_ids: torch.LongTensor, frame_indices: list[list[int]]) -> torch.BoolTensor:
        """``(B, Q, T)`` on the outputs' device: the (query, frame) pairs of this clip batch whose masks a per-frame
        entry of the video output may use, keyed by (``track_ids[b, q]``, ``frame_indices[b][t]``). Default: every
        real frame of every tracked query; none for box-only models (they have no masks), whatever the mode."""
        batch_size, num_queries, num_frames = outputs.pred_boxes.shape[:3]
        device = outputs.pred_boxes.device
        if self.config.box_only:
            return torch.zeros(batch_size, num_queries, num_frames, dtype=torch.bool, device=device)
        real = torch.tensor([len(f) for f in frame_indices], device=device)
        in_clip = torch.arange(num_frames, device=device)[None, :] < real[:, None]  # (B, T)
        return (track_ids.to(device) >= 0)[:, :, None] & in_clip[:, None, :]

    def finalize(self, model, session: CaptionFormerVideoSession, caption: bool, aggregation: str | None,
                 batch_size: int, generate_kwargs: dict) -> CaptionFormerVideoOutput:
        """The video's trajectories (captions generated with ``model`` when ``caption``)."""
        raise NotImplementedError

    def video_output(self, session, track_ids, scores, category_ids, caption_ids, captioned, frame_track,
                     frame_index, frame_boxes: torch.Tensor, frame_scores,
                     precision: str | None = None, frame_mask_track_ids=None, part_caption_ids=None,
                     frame_caption_indices=None) -> CaptionFormerVideoOutput:
        """The :class:`CaptionFormerVideoOutput` of per-trajectory lists (``track_ids``, ``scores``,
        ``category_ids``) and per-frame lists (``frame_track``, ``frame_index``, ``frame_scores``; ``frame_boxes``
        ``(M, 4)``; ``frame_mask_track_ids``, ``part_caption_ids``, ``frame_caption_indices``: see the output),
        tagged with this mode's name and the session's frame count and input size."""
        return CaptionFormerVideoOutput(
            video_inference_mode=self.name,
            track_ids=torch.tensor(track_ids, dtype=torch.long),
            scores=torch.tensor(scores, dtype=torch.float32),
            category_ids=torch.tensor(category_ids, dtype=torch.long),
            caption_ids=caption_ids,
            captioned=captioned,
            frame_track_indices=torch.tensor(frame_track, dtype=torch.long),
            frame_indices=torch.tensor(frame_index, dtype=torch.long),
            frame_boxes=frame_boxes.float().reshape(-1, 4),
            frame_scores=torch.tensor(frame_scores, dtype=torch.float32),
            num_frames=session.num_frames,
            input_size=session.input_size,
            precision=precision,
            frame_mask_track_ids=(None if frame_mask_track_ids is None
                                  else torch.tensor(frame_mask_track_ids, dtype=torch.long)),
            part_caption_ids=part_caption_ids,
            frame_caption_indices=frame_caption_indices,
        )

    def memory_nbytes(self) -> int:
        """Bytes of tensors the algorithm holds (its tracker's ``memory_nbytes()`` when it has one)."""
        return self.tracker.memory_nbytes() if hasattr(self.tracker, "memory_nbytes") else 0


VIDEO_LEVEL_ALGORITHMS: dict[str, type[CaptionFormerVideoLevel]] = {}


def register_video_inference_mode(name: str, algorithm: type[CaptionFormerVideoLevel], overwrite: bool = False) -> None:
    """Make ``algorithm`` (a :class:`CaptionFormerVideoLevel` subclass) the video level of
    ``config.video_inference_mode == name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string, got {name!r}")
    if not (isinstance(algorithm, type) and issubclass(algorithm, CaptionFormerVideoLevel)):
        raise TypeError(f"`algorithm` must be a CaptionFormerVideoLevel subclass, got {algorithm!r}")
    if name in VIDEO_LEVEL_ALGORITHMS and not overwrite and VIDEO_LEVEL_ALGORITHMS[name] is not algorithm:
        raise ValueError(f"video inference mode {name!r} is already registered (pass overwrite=True to replace it)")
    VIDEO_LEVEL_ALGORITHMS[name] = algorithm
    if name not in _VIDEO_INFERENCE_MODES:
        _VIDEO_INFERENCE_MODES.append(name)


def video_level_from_config(config, threshold: float | None = None, **overrides) -> CaptionFormerVideoLevel:
    """The registered algorithm of ``config.video_inference_mode``, created for one video."""
    mode = config.video_inference_mode
    if mode not in VIDEO_LEVEL_ALGORITHMS:
        raise ValueError(f"`video_inference_mode` {mode!r} has no registered algorithm (registered: "
                         f"{sorted(VIDEO_LEVEL_ALGORITHMS)}; see register_video_inference_mode)")
    return VIDEO_LEVEL_ALGORITHMS[mode].from_config(config, threshold=threshold, **overrides)


class CaptionFormerVideoSession:
    """All the state of one video's inference: its video-level algorithm (which holds the tracks), the frames
    processed so far and the input size. Tensors only: masks are the processor's (``post_process_clip_masks`` on
    each forward's output).

    Create it with ``model.init_video_session(...)``; feed clip batches with ``model(pixel_values_videos,
    video_session=session, frame_indices=...)``; get the trajectories with ``model.finalize_video_session(session)``.

    Args:
        video_level: the algorithm (:class:`CaptionFormerVideoLevel`) for this video.
        caption: keep what the caption head needs for the sampled clips (``False``: no captions).
    """

    def __init__(self, video_level: CaptionFormerVideoLevel, caption: bool = True):
        if not isinstance(video_level, CaptionFormerVideoLevel):
            raise TypeError(f"`video_level` must be a CaptionFormerVideoLevel, got {type(video_level).__name__}")
        self.video_level = video_level
        self.caption = caption
        self.num_frames = 0  # frames processed (padding excluded)
        self.input_size: tuple[int, int] | None = None
        self.finalized = False

    @property
    def mode(self) -> str:
        return self.video_level.name

    @property
    def tracker(self):
        """The algorithm's tracker (its tracks and settings)."""
        return self.video_level.tracker

    def check_input_size(self, size: tuple[int, int]) -> None:
        if self.finalized:
            raise ValueError("this video session is finalized: create a new one with `model.init_video_session()`")
        if self.input_size is None:
            self.input_size = tuple(size)
        elif tuple(size) != self.input_size:
            raise ValueError(f"all clips of a video must have the same size {self.input_size}, got {tuple(size)}")

    def memory_nbytes(self) -> int:
        return self.video_level.memory_nbytes()


# ---------------------------------------------------------------------------------------------- shared pieces
def check_positive_ints(**values) -> None:
    """ValueError naming the first setting that is not an integer >= 1 (the same check as the processing folder's
    ``trajectory_captionformer.check_positive_ints``: each remote-code folder stands alone)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}")


def top_k_vote_cost(costs: torch.Tensor, k: int, ranking: str = "bounded", normalise: bool = True) -> torch.Tensor:
    """The top-K vote of the released matcher: ``costs`` ``(M, N, T)`` (``1 - cos`` of N queries against T tracks for
    each of M memory slots, the newest slot first) -> the combined cost ``(N, T)``.

    Every slot's Hungarian assignment is costed; the ``k`` cheapest slots' matrices are weighted by recency (the
    newest of M slots ``M``, the oldest 1) and combined; with fewer than ``k`` slots, the cheapest slot's matrix.
    The two modes differ only as these parameters say:

    * ``ranking="bounded"`` (paper): slots solved in the order of a lower bound until no further slot can enter the
      k best (:func:`best_memory_slots`), ranked by mean assigned cost, ties to the newer slot.
      ``ranking="release"``: every slot solved on the (track, query) matrix, ranked by the summed cost with
      ``torch.topk``, as the release (in the costs' dtype: fp16 costs are weighted, summed and averaged in fp16).
    * ``normalise=True`` (paper): the weights sum to one (the combined cost stays a cosine distance, which the
      paper's ``match_cost_threshold`` gates). ``False`` (release): weighted matrices averaged over the k slots."""
    num_slots = costs.shape[0]
    if ranking == "bounded":
        if num_slots < k:
            return costs[int(best_memory_slots(costs.numpy(), 1)[0])]
        chosen = torch.as_tensor(best_memory_slots(costs.numpy(), k))
    elif ranking == "release":
        totals = []  # oldest slot first, as the release's memory (torch.topk breaks ties by position)
        for age in range(num_slots):
            cost = costs[num_slots - 1 - age].cpu()  # summed in its own dtype (fp16 costs: an fp16 sum, as the release)
            slot_rows, query_cols = linear_sum_assignment(cost.float().transpose(0, 1))
            totals.append(cost[query_cols, slot_rows].sum())
        totals = torch.stack(totals).float()
        if num_slots < k:
            return costs[num_slots - 1 - int(torch.topk(totals, k=1, largest=False)[1])]
        chosen = num_slots - 1 - torch.topk(totals, k=k, largest=False)[1]
    else:
        raise ValueError(f"`ranking` must be 'bounded' or 'release', got {ranking!r}")
    recency = (num_slots - chosen).to(costs.dtype)  # newest slot (0) weighs num_slots, the oldest 1
    if normalise:
        return torch.einsum("k,knt->nt", recency / recency.sum(), costs[chosen])
    return (costs[chosen] * recency[:, None, None]).mean(0)


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


def caption_head_outputs(head, frames: list[torch.Tensor], which: torch.Tensor, object_queries: torch.Tensor,
                         grids: torch.Tensor, boxes: torch.Tensor | None, batch_size: int) -> torch.Tensor:
    """Q-Former outputs ``(P, L, D)`` of P (frame, object) pairs: the vision encoder runs once per distinct frame
    (``frames``, each ``(3, S, S)`` at its input size), the mask-restricted Q-Former once per pair (``which`` ``(P,)``:
    the pair's frame; ``object_queries`` ``(P, D)``; ``grids`` ``(P, g, g)`` mask logits on the patch grid;
    ``boxes`` ``(P, 4)`` for box-only models), ``batch_size`` at a time."""
    tokens = torch.cat([
        head.vision_model(pixel_values=torch.stack(frames[i : i + batch_size])).last_hidden_state
        for i in range(0, len(frames), batch_size)
    ])
    which = which.to(tokens.device)
    return torch.cat([
        head(tokens[which[i : i + batch_size]], object_queries[i : i + batch_size], grids[i : i + batch_size],
             None if boxes is None else boxes[i : i + batch_size])
        for i in range(0, len(which), batch_size)
    ])


def caption_pad_id(model) -> int:
    """The id that pads caption rows: the generation config's ``pad_token_id``, 0 without one."""
    pad_id = model.generation_config.pad_token_id
    return 0 if pad_id is None else int(pad_id)


def generate_track_captions(model, queries: torch.Tensor, captioned: torch.Tensor, aggregation: str | None = None,
                            weights: torch.Tensor | None = None, valid: torch.Tensor | None = None,
                            **generate_kwargs) -> torch.LongTensor:
    """Caption ids ``(N, L)`` of N trajectories, padded with the generation config's ``pad_token_id`` (0 without one);
    the rows of trajectories without a caption (``captioned`` ``(N,)`` False) stay padding. ``queries`` are the
    captioned trajectories' caption queries: ``(N_c, L_q, D)``, or ``(N_c, K, L_q, D)`` aggregated by
    ``aggregation`` with ``weights`` ``(N_c, K)`` (the clips' scores) and ``valid`` ``(N_c, K)``."""
    pad_id = caption_pad_id(model)
    caption_ids = torch.full((len(captioned), 1), pad_id, dtype=torch.long)
    if not bool(captioned.any()):
        return caption_ids
    sequences = model.generate_captions(queries, weights, valid, aggregation, **generate_kwargs).cpu()
    caption_ids = torch.full((len(captioned), max(sequences.shape[1], 1)), pad_id, dtype=torch.long)
    caption_ids[captioned, : sequences.shape[1]] = sequences
    return caption_ids


__all__ = [
    "VIDEO_LEVEL_ALGORITHMS",
    "CaptionFormerVideoLevel",
    "CaptionFormerVideoOutput",
    "CaptionFormerVideoSession",
    "best_memory_slots",
    "caption_head_outputs",
    "caption_pad_id",
    "check_positive_ints",
    "generate_track_captions",
    "register_video_inference_mode",
    "top_k_vote_cost",
    "video_level_from_config",
]
