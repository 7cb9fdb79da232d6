"""`predict_video`: one video through CaptionFormer, the one orchestration the pipeline, the trainer's evaluation,
the CLI and the Spaces share.

video processor (decode in a background thread, sample, cut clips, resize and normalise on the model's device) ->
``model(clips, video_session=session)`` (segment, track: tensors) -> ``processor.post_process_clip_masks`` (the
batch's masks resized to the original size on the device and RLE-encoded; on an accelerator in a worker thread while
the model runs the next batch, at most ``MAX_PENDING_MASK_BATCHES`` batches waiting) ->
``model.finalize_video_session`` (hysteresis, captions of the sampled clips) -> ``processor.post_process_dense_captions`` (boxes, masks, labels, caption text) ->
the trajectory format of ``docs/format.md``.

Remote-code safe: single-dot imports only.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

import torch

from .trajectory_captionformer import VideoTrajectories

# clip batches whose masks may wait for the mask worker (each holds its outputs: memory stays bounded)
MAX_PENDING_MASK_BATCHES = 2


@torch.no_grad()
def predict_video(
    model,
    processor,
    video,
    *,
    video_id=None,
    fps: float | None = None,
    num_frames: int | None = None,
    max_frames: int | None = None,
    video_fps: float | None = None,
    threshold: float | None = None,
    presence_threshold: float | None = None,
    clip_batch_size: int = 1,
    return_masks: bool = True,
    caption: bool = True,
    aggregation: str | None = None,
    tracker_overrides: dict | None = None,
    progress: bool = False,
    decoding: dict | None = None,
    overlap_masks: bool | None = None,
    **generate_kwargs,
) -> VideoTrajectories:
    """Segment, track and caption every object of one video.

    Args:
        model: a ``CaptionFormerForDenseVideoObjectCaptioning``. processor: its ``CaptionFormerProcessor``.
        video: a path, URL, bytes or file-like video, a ``(T, H, W, 3)`` array, a list of frames, or a
            ``VideoFrames`` already opened (``processor.video_processor.open_video(...)``).
        video_id: copied into the result when given.
        fps / num_frames / max_frames / video_fps: frame sampling (see :class:`VideoFrames`).
        threshold: the paper mode's per-clip score pruning threshold (default ``model.config.score_threshold``;
            release mode has none). presence_threshold: release mode, box models: the per-clip presence threshold
            (default ``model.config.presence_threshold``).
        clip_batch_size: clips per segmenter forward pass.
        return_masks: per-frame ``mask_rle`` at the original size.
        caption: one caption per trajectory. aggregation: ``"weighted"`` / ``"mean"`` / ``"best"``.
        tracker_overrides: tracker settings other than the model config's (``k_match``, ``t_match``, ...).
        decoding: more :class:`VideoFrames` options (``max_side``, ``allow_truncated``, ``max_download_bytes``).
        overlap_masks: encode each batch's masks in a worker thread while the next batch runs (default: on an
            accelerator, not on the CPU); the result is the same either way.
        generate_kwargs: the LM's generation arguments (``num_beams``, ``max_new_tokens``, ``do_sample``...).

    Returns:
        ``{"video_id"?, "num_frames", "height", "width", "fps", "trajectories": [...]}`` (``docs/format.md``), and
        ``"warnings"`` (a list of strings) when the video was only partly readable.
    """
    for name, value in (("return_masks", return_masks), ("caption", caption), ("progress", progress)):
        if not isinstance(value, bool):
            raise TypeError(f"`{name}` must be True or False, got {value!r}")
    video_processor = processor.video_processor
    # (remote code can load this module and the video processor's from different folders: no isinstance)
    if getattr(video, "is_video_frames", False) is True:
        frames = video
    else:
        frames = video_processor.open_video(video, num_frames=num_frames, fps=fps, max_frames=max_frames,
                                            video_fps=video_fps, **(decoding or {}))
    geometry = video_processor.geometry(frames)
    overrides = dict(tracker_overrides or {})
    if presence_threshold is not None:
        overrides["presence_threshold"] = presence_threshold
    session = model.init_video_session(threshold=threshold, caption=caption, **overrides)
    batches = video_processor.iter_clip_batches(
        frames, clip_length=model.config.clip_length, batch_size=clip_batch_size, device=model.device, dtype=model.dtype
    )
    return_masks = return_masks and not model.config.box_only  # box-only models have no masks
    mask_rles = {} if return_masks else None
    pending: deque = deque()
    # on an accelerator the masks of batch n are encoded (host work) while the device runs batch n + 1; on the CPU the
    # model already uses every core, and a worker thread measured no faster than encoding in the loop
    # (benchmarks/mask_overhead.py), so there it is the loop's own work
    if overlap_masks is not None and not isinstance(overlap_masks, bool):
        raise TypeError(f"`overlap_masks` must be True, False or None, got {overlap_masks!r}")
    overlap = return_masks and (model.device.type != "cpu" if overlap_masks is None else overlap_masks)
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="captionformer-masks") if overlap else None

    def encode_masks(clip_outputs) -> None:
        if worker is None:
            mask_rles.update(video_processor.post_process_clip_masks(clip_outputs, geometry))
            return
        pending.append(worker.submit(video_processor.post_process_clip_masks, clip_outputs, geometry))
        while len(pending) > MAX_PENDING_MASK_BATCHES:
            mask_rles.update(pending.popleft().result())

    try:
        outputs = model.track_video(batches, session=session, caption=caption, aggregation=aggregation,
                                    progress=progress, on_clip_batch=encode_masks if return_masks else None,
                                    **generate_kwargs)
        while pending:
            mask_rles.update(pending.popleft().result())
    finally:
        if worker is not None:
            worker.shutdown(wait=True, cancel_futures=True)
    rate = frames.video_fps  # the frame indices are the source video's
    id2label = model.config.id2label
    if getattr(session.tracker, "label_mapping", None) is not None:  # release mode's mapped classes (LV-VIS -> VidSTG)
        id2label = getattr(model.config, "release_id2label", None) or {}
    prediction = processor.post_process_dense_captions(
        outputs, geometry.original_size, content_size=geometry.content_size, id2label=id2label,
        mask_rles=mask_rles, num_frames=int(frames.num_source_frames),
        fps=float(rate) if rate is not None else None, video_id=video_id,
    )
    if getattr(frames, "warnings", None):
        prediction["warnings"] = list(frames.warnings)
    return prediction


__all__ = ["predict_video"]
