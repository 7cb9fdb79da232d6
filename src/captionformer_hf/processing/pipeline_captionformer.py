"""`pipeline("dense-video-object-captioning")`: segment, track and caption every object of a video.

Remote-code safe: imports only transformers and torch (the model and processor come from the checkpoint).
"""

from __future__ import annotations

import logging

import numpy as np
from transformers import Pipeline

logger = logging.getLogger(__name__)


def _is_frame(item) -> bool:
    """A single image (PIL or an (H, W, C) array), as opposed to a whole video."""
    if hasattr(item, "convert") and hasattr(item, "size"):
        return True
    return isinstance(item, np.ndarray) and item.ndim == 3


class DenseVideoObjectCaptioningPipeline(Pipeline):
    """Dense video object captioning with CaptionFormer.

    Input: a path, URL, bytes or file-like video (PyAV: mp4, avi, webm...), a ``(T, H, W, 3)`` array, a list of PIL
    images (one video), or a list of such videos (a batch). Output per video::

        {"num_frames", "height", "width", "fps", "trajectories": [
            {"track_id", "score", "category", "caption",
             "frames": [{"frame_index", "box": [x, y, w, h], "mask_rle", "score"}]}]}

    Parameters: ``threshold`` (per-clip score pruning), ``return_masks``, ``fps`` / ``num_frames`` (frame sampling),
    ``max_frames``, ``num_beams``, ``max_new_tokens``, ``clip_batch_size``, ``aggregation``, ``progress``.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError("the dense-video-object-captioning pipeline needs a CaptionFormerProcessor")

    def _sanitize_parameters(
        self,
        threshold=None,
        return_masks=None,
        fps=None,
        num_frames=None,
        max_frames=None,
        video_fps=None,
        num_beams=None,
        max_new_tokens=None,
        clip_batch_size=None,
        aggregation=None,
        progress=None,
        **kwargs,
    ):
        if kwargs:
            raise TypeError(f"unexpected pipeline arguments: {', '.join(sorted(kwargs))}")
        preprocess = {k: v for k, v in dict(fps=fps, num_frames=num_frames, max_frames=max_frames, video_fps=video_fps).items() if v is not None}
        forward = {}
        if threshold is not None:
            if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
                raise ValueError(f"`threshold` must be a number in [0, 1], got {threshold!r}")
            forward["threshold"] = float(threshold)
        for name, value in (("num_beams", num_beams), ("max_new_tokens", max_new_tokens), ("clip_batch_size", clip_batch_size)):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
                forward[name] = value
        if aggregation is not None:
            forward["aggregation"] = aggregation
        if progress is not None:
            forward["progress"] = bool(progress)
        postprocess = {}
        if return_masks is not None:
            forward["return_masks"] = bool(return_masks)
            postprocess["return_masks"] = bool(return_masks)
        return preprocess, forward, postprocess

    def __call__(self, inputs, **kwargs):
        # a list of frames is one video, not a batch of images
        if isinstance(inputs, (list, tuple)) and inputs and _is_frame(inputs[0]):
            return super().__call__([list(inputs)], **kwargs)[0]
        return super().__call__(inputs, **kwargs)

    def preprocess(self, video, fps=None, num_frames=None, max_frames=None, video_fps=None):
        frames = self.processor.video_processor.open_video(
            video, num_frames=num_frames, fps=fps, max_frames=max_frames, video_fps=video_fps
        )
        return {"frames": frames}

    def _forward(self, model_inputs, threshold=None, num_beams=None, max_new_tokens=None, clip_batch_size=1,
                 aggregation=None, return_masks=True, progress=False):
        frames = model_inputs["frames"]
        video_processor = self.processor.video_processor
        indices = []

        def clips():
            for pixel_values, clip_indices in video_processor.iter_clips(frames, clip_length=self.model.config.clip_length):
                indices.extend(clip_indices)
                yield pixel_values

        generate_kwargs = {}
        if num_beams is not None:
            generate_kwargs["num_beams"] = num_beams
        if max_new_tokens is not None:
            generate_kwargs["max_new_tokens"] = max_new_tokens
        content_size = video_processor.content_size(frames.height, frames.width)
        raw = self.model.track_video(
            clips(),
            mask_size=(frames.height, frames.width),
            content_size=content_size,
            threshold=threshold,
            clip_batch_size=clip_batch_size,
            return_masks=return_masks,
            aggregation=aggregation,
            progress=progress,
            **generate_kwargs,
        )
        return {"raw": raw, "frames": frames, "indices": indices}

    def postprocess(self, model_outputs, return_masks=True):
        frames = model_outputs["frames"]
        result = self.processor.post_process_dense_captions(
            model_outputs["raw"],
            original_size=(frames.height, frames.width),
            frame_indices=model_outputs["indices"],
            return_masks=return_masks,
        )
        return {
            "num_frames": int(frames.decoded_frames),
            "height": int(frames.height),
            "width": int(frames.width),
            "fps": frames.fps or frames.video_fps,
            "trajectories": result["trajectories"],
        }

    def save_pretrained(self, save_directory, **kwargs):
        """Save the model, the pipeline code (``custom_pipelines``) and the processor, so that
        ``pipeline(model=path_or_repo, trust_remote_code=True)`` works without this package."""
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)


__all__ = ["DenseVideoObjectCaptioningPipeline"]
