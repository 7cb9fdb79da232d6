"""CaptionFormer video processor: PyAV decoding, frame sampling, resize / normalise / pad, clips of T frames, and the
post-processing of tracked outputs back to the original video (absolute boxes, COCO RLE masks).

Remote-code safe: imports only transformers, torch, numpy, PyAV and pycocotools (no sibling from another folder).
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Iterator

import numpy as np
import torch
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import get_size_with_aspect_ratio
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling, SizeDict
from transformers.processing_utils import VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata

logger = logging.getLogger(__name__)

MAX_SIDE = 8192  # larger frames are rejected as absurd input
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".gif", ".mpg", ".mpeg", ".ogv")


class CaptionFormerVideoProcessorKwargs(VideosKwargs, total=False):
    clip_length: int
    size_divisor: int
    max_frames: int


# ----------------------------------------------------------------------------------------------------- decoding
def _open_source(source):
    """Something PyAV can open: a path, or a file-like object. URLs are downloaded into memory."""
    if isinstance(source, (bytes, bytearray)):
        return io.BytesIO(source)
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str):
        if source.startswith(("http://", "https://")):
            from urllib.request import urlopen

            with urlopen(source, timeout=60) as response:  # noqa: S310 - user-given URL
                return io.BytesIO(response.read())
        if not os.path.exists(source):
            raise ValueError(f"`video`: file not found: {source}")
        if os.path.isdir(source):
            raise ValueError(f"`video`: {source} is a directory, not a video file")
        return source
    if hasattr(source, "read"):
        return source
    raise TypeError(f"`video` must be a path, URL, bytes or a file-like object, got {type(source).__name__}")


def _check_frame(frame: np.ndarray, where: str) -> np.ndarray:
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    if frame.ndim != 3 or frame.shape[2] not in (1, 3, 4):
        raise ValueError(f"{where}: frames must be (H, W, 3) RGB, got shape {frame.shape}")
    if frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    elif frame.shape[2] == 4:
        frame = frame[:, :, :3]
    height, width = frame.shape[:2]
    if min(height, width) < 8 or max(height, width) > MAX_SIDE:
        raise ValueError(f"{where}: frame size {width}x{height} is out of range (8 to {MAX_SIDE} pixels a side)")
    return frame


class VideoFrames:
    """Frames of one video, decoded lazily with PyAV (paths, URLs, bytes, file-like objects: mp4, avi, webm...) or
    taken from an array ``(T, H, W, 3)`` / a list of PIL images or arrays.

    Sampling: ``num_frames`` uniformly over the video, or ``fps`` frames per second (``video_fps`` is needed for
    arrays); ``max_frames`` stops after that many sampled frames. Iterating yields ``(source_index, frame)`` with
    frames as ``uint8 (H, W, 3)``. The first frame is decoded on construction, so a missing, corrupt or empty video
    fails here with a clear ``ValueError``."""

    def __init__(self, video, num_frames=None, fps=None, max_frames=None, video_fps=None):
        if num_frames is not None and fps is not None:
            raise ValueError("`num_frames` and `fps` are mutually exclusive")
        for name, value in (("num_frames", num_frames), ("max_frames", max_frames)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        if fps is not None and not (isinstance(fps, (int, float)) and fps > 0):
            raise ValueError(f"`fps` must be a positive number, got {fps!r}")
        self.num_frames, self.fps, self.max_frames = num_frames, fps, max_frames
        self._array = None
        self._source = None
        if isinstance(video, torch.Tensor):
            video = video.detach().cpu().numpy()
        if isinstance(video, np.ndarray):
            self._array = self._from_array(video)
        elif isinstance(video, (list, tuple)):
            if not video:
                raise ValueError("`video`: the list of frames is empty")
            self._array = [self._frame_from_image(frame, f"`video`[{i}]") for i, frame in enumerate(video)]
        else:
            self._source = video
        if self._array is not None:
            self.video_fps = video_fps
            self.total_frames = len(self._array)
            if fps is not None and video_fps is None:
                raise ValueError("`fps` sampling of frames given as an array needs `video_fps`")
            first = self._array[0]
        else:
            self.video_fps, self.total_frames, first = self._probe()
        self.height, self.width = first.shape[:2]
        self.decoded_frames = 0  # source frames read so far (equals the video length once iterated)

    @staticmethod
    def _from_array(video: np.ndarray) -> list:
        if video.ndim != 4:
            raise ValueError(f"`video` array must have 4 dimensions (frames, height, width, 3), got shape {video.shape}")
        if video.shape[-1] not in (1, 3, 4) and video.shape[1] in (1, 3):
            video = video.transpose(0, 2, 3, 1)  # (T, 3, H, W) -> (T, H, W, 3)
        if video.shape[0] == 0:
            raise ValueError("`video` has zero frames")
        if video.dtype == np.uint8:
            frames = video
        elif np.issubdtype(video.dtype, np.floating):
            if not np.isfinite(video).all():
                raise ValueError("`video` array has NaN or infinite values")
            scale = 255.0 if video.max() <= 1.0 else 1.0
            frames = np.clip(video * scale, 0, 255).round().astype(np.uint8)
        else:
            raise TypeError(f"`video` array must be uint8 (0-255) or float (0-1), got dtype {video.dtype}")
        return [_check_frame(frame, "`video`") for frame in frames]

    @staticmethod
    def _frame_from_image(frame, where):
        if hasattr(frame, "convert"):  # PIL image
            frame = np.asarray(frame.convert("RGB"))
        elif isinstance(frame, torch.Tensor):
            frame = frame.detach().cpu().numpy()
        if not isinstance(frame, np.ndarray):
            raise TypeError(f"{where} must be a PIL image or an array, got {type(frame).__name__}")
        if frame.dtype != np.uint8:
            return VideoFrames._from_array(frame[None])[0]
        return _check_frame(frame, where)

    def _container(self):
        import av

        source = _open_source(self._source)
        if hasattr(source, "seek"):
            source.seek(0)
        try:
            return av.open(source, mode="r")
        except av.error.FFmpegError as error:
            raise ValueError(f"`video`: could not open {self._describe()} as a video ({error})") from error

    def _describe(self):
        return self._source if isinstance(self._source, (str, os.PathLike)) else "the given data"

    def _probe(self):
        import av

        container = self._container()
        try:
            if not container.streams.video:
                raise ValueError(f"`video`: {self._describe()} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            video_fps = float(rate) if rate else None
            total = int(stream.frames) or None
            try:
                first = next(iter(container.decode(stream)), None)
            except av.error.FFmpegError as error:
                raise ValueError(f"`video`: could not decode {self._describe()} ({error})") from error
            if first is None:
                raise ValueError(f"`video`: {self._describe()} has zero frames")
            frame = _check_frame(first.to_ndarray(format="rgb24"), "`video`")
        finally:
            container.close()
        if self.num_frames is not None and total is None:
            total = sum(1 for _ in self._decode_all())
        return video_fps, total, frame

    def _decode_all(self) -> Iterator[np.ndarray]:
        import av

        if self._array is not None:
            yield from self._array
            return
        container = self._container()
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            try:
                for frame in container.decode(stream):
                    yield frame.to_ndarray(format="rgb24")
            except av.error.FFmpegError as error:
                raise ValueError(f"`video`: {self._describe()} is corrupt ({error})") from error
        finally:
            container.close()

    def sampled_indices(self, total: int) -> list[int]:
        if self.num_frames is not None:
            count = min(self.num_frames, total)
            return sorted(set(np.linspace(0, total - 1, count).round().astype(int).tolist()))
        return list(range(total))

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        wanted = set(self.sampled_indices(self.total_frames)) if self.num_frames is not None else None
        step = None
        if self.fps is not None and self.video_fps and self.fps < self.video_fps:
            step = self.video_fps / self.fps
        yielded = 0
        next_time = 0.0
        self.decoded_frames = 0
        for index, frame in enumerate(self._decode_all()):
            self.decoded_frames = index + 1
            if wanted is not None and index not in wanted:
                continue
            if step is not None:
                if index + 1e-6 < next_time:
                    continue
                next_time += step
            if self.max_frames is not None and yielded >= self.max_frames:
                break
            yield index, _check_frame(frame, "`video`")
            yielded += 1


# -------------------------------------------------------------------------------------------------- processor
class CaptionFormerVideoProcessor(BaseVideoProcessor):
    r"""
    Video processor of CaptionFormer: decodes (PyAV), samples frames (``fps`` or ``num_frames``, ``max_frames``),
    resizes keeping the aspect ratio (``size["shortest_edge"]`` / ``size["longest_edge"]``, 480 / 800 by default as
    the paper's test size), rescales and normalises (ImageNet statistics, the segmenter's), pads bottom/right to a
    multiple of ``size_divisor``, and cuts videos into clips of ``clip_length`` frames.

    ``__call__`` returns ``pixel_values_videos (B, N, 3, H, W)`` (videos padded to a common size and length) with
    ``original_sizes``, ``content_sizes`` and ``num_frames``; :meth:`iter_clips` streams one video clip by clip;
    :meth:`post_process_dense_captions` maps tracked outputs back to the original video.
    """

    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 480, "longest_edge": 800}
    default_to_square = False
    do_resize = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True
    do_center_crop = False
    do_sample_frames = False
    clip_length = 1
    size_divisor = 32
    max_frames = None
    valid_kwargs = CaptionFormerVideoProcessorKwargs
    model_input_names = ["pixel_values_videos"]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(self.clip_length, int) or self.clip_length < 1:
            raise ValueError(f"`clip_length` must be a positive integer, got {self.clip_length!r}")
        if not isinstance(self.size_divisor, int) or self.size_divisor < 1:
            raise ValueError(f"`size_divisor` must be a positive integer, got {self.size_divisor!r}")

    # ------------------------------------------------------------------ geometry
    def _size_dict(self) -> SizeDict:
        return self.size if isinstance(self.size, SizeDict) else SizeDict(**self.size)

    def content_size(self, height: int, width: int) -> tuple[int, int]:
        """Size of a ``height x width`` frame after resizing (aspect kept)."""
        if not self.do_resize:
            return height, width
        size = self._size_dict()
        if size.shortest_edge and size.longest_edge:
            return tuple(get_size_with_aspect_ratio((height, width), size.shortest_edge, size.longest_edge))
        probe = torch.zeros(1, 1, height, width)  # other size specs: ask resize itself
        return tuple(self.resize(probe, size=size, resample=self.resample).shape[-2:])

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        d = self.size_divisor
        return math.ceil(height / d) * d, math.ceil(width / d) * d

    def transform_frames(self, frames: torch.Tensor, padded_size: tuple[int, int] | None = None) -> torch.Tensor:
        """``uint8 (T, 3, H, W)`` -> resized, normalised, padded float frames ``(T, 3, H', W')``."""
        frames = frames.float() if not self.do_rescale else frames
        if self.do_resize:
            frames = self.resize(frames, size=self._size_dict(), resample=self.resample)
        frames = self.rescale_and_normalize(
            frames, self.do_rescale, self.rescale_factor, self.do_normalize, self.image_mean, self.image_std
        )
        height, width = frames.shape[-2:]
        target = padded_size or self.padded_size(height, width)
        if (height, width) != tuple(target):
            frames = torch.nn.functional.pad(frames, (0, target[1] - width, 0, target[0] - height))
        return frames

    # ------------------------------------------------------------------ decoding hooks of BaseVideoProcessor
    def fetch_videos(self, video_url_or_urls, sample_indices_fn=None):
        """Decode paths / URLs with PyAV (the stock path needs torchcodec)."""
        if isinstance(video_url_or_urls, list):
            results = [self.fetch_videos(x, sample_indices_fn=sample_indices_fn) for x in video_url_or_urls]
            return [r[0] for r in results], [r[1] for r in results]
        reader = VideoFrames(video_url_or_urls)
        frames = np.stack([frame for _, frame in reader])
        metadata = VideoMetadata(
            total_num_frames=len(frames), fps=reader.video_fps, width=reader.width, height=reader.height
        )
        if sample_indices_fn is not None:
            indices = sample_indices_fn(metadata=metadata)
            frames = frames[indices]
            metadata.frames_indices = indices
        return frames, metadata

    def _preprocess(self, videos, return_tensors=None, **kwargs):
        original_sizes, content_sizes, processed = [], [], []
        for video in videos:
            if video.ndim != 4:
                raise ValueError(f"each video must be (frames, 3, H, W), got shape {tuple(video.shape)}")
            original_sizes.append(list(video.shape[-2:]))
            frames = self.transform_frames(video, padded_size=None)
            content_sizes.append(list(self.content_size(*video.shape[-2:])))
            processed.append(frames)
        height = max(v.shape[-2] for v in processed)
        width = max(v.shape[-1] for v in processed)
        length = max(v.shape[0] for v in processed)
        length = math.ceil(length / self.clip_length) * self.clip_length
        batch = torch.zeros(len(processed), length, 3, height, width, dtype=processed[0].dtype)
        for i, video in enumerate(processed):
            batch[i, : video.shape[0], :, : video.shape[-2], : video.shape[-1]] = video
            if video.shape[0] < length:  # pad in time with the last frame
                batch[i, video.shape[0] :, :, : video.shape[-2], : video.shape[-1]] = video[-1]
        data = {
            "pixel_values_videos": batch,
            "original_sizes": torch.tensor(original_sizes),
            "content_sizes": torch.tensor(content_sizes),
            "num_frames": torch.tensor([v.shape[0] for v in processed]),
        }
        return BatchFeature(data=data, tensor_type=return_tensors)

    # ------------------------------------------------------------------ streaming
    def open_video(self, video, num_frames=None, fps=None, max_frames=None, video_fps=None) -> VideoFrames:
        """A lazily decoded video (see :class:`VideoFrames`); raises ``ValueError`` at once for bad input."""
        return VideoFrames(
            video,
            num_frames=num_frames,
            fps=fps,
            max_frames=max_frames if max_frames is not None else self.max_frames,
            video_fps=video_fps,
        )

    def iter_clips(self, frames: VideoFrames, clip_length: int | None = None):
        """Yield ``(pixel_values (T', 3, H', W'), source_frame_indices)`` clip by clip (``T' <= clip_length``; only
        the last clip is shorter). Memory holds one clip at a time."""
        clip_length = clip_length or self.clip_length
        padded = self.padded_size(*self.content_size(frames.height, frames.width))
        buffer, indices = [], []
        for index, frame in frames:
            if frame.shape[:2] != (frames.height, frames.width):
                raise ValueError(
                    f"`video`: frame {index} is {frame.shape[1]}x{frame.shape[0]}, the first frame "
                    f"{frames.width}x{frames.height}; all frames must have one size"
                )
            buffer.append(torch.from_numpy(np.require(frame, requirements=["C", "W"])).permute(2, 0, 1))
            indices.append(index)
            if len(buffer) == clip_length:
                yield self.transform_frames(torch.stack(buffer), padded), indices
                buffer, indices = [], []
        if buffer:
            yield self.transform_frames(torch.stack(buffer), padded), indices

    # ------------------------------------------------------------------ post-processing
    def post_process_dense_captions(
        self,
        outputs: dict,
        original_size: tuple[int, int],
        content_size: tuple[int, int] | None = None,
        frame_indices: list[int] | None = None,
        return_masks: bool = True,
    ) -> dict:
        """Map :meth:`CaptionFormerForDenseVideoObjectCaptioning.track_video` outputs (model input space:
        normalised ``(cx, cy, w, h)`` boxes, masks at the padded input size) to the original video: absolute
        ``[x, y, w, h]`` boxes clipped to the frame and COCO RLE masks at ``original_size``.

        Args:
            outputs: the ``track_video`` result. original_size: ``(height, width)`` of the source frames.
            content_size: ``(height, width)`` of the resized frame inside the padded input (default: the size the
                processor resizes ``original_size`` to).
            frame_indices: source frame index of each processed frame (frame sampling); default: identity.
        """
        from pycocotools import mask as mask_utils

        input_h, input_w = outputs["input_size"]
        out_h, out_w = int(original_size[0]), int(original_size[1])
        content_h, content_w = content_size or self.content_size(out_h, out_w)
        sx, sy = out_w / content_w, out_h / content_h
        # masks already encoded at the original size by track_video(mask_size=..., content_size=...)
        masks_ready = list(outputs.get("mask_size") or []) == [out_h, out_w]
        trajectories = []
        for trajectory in outputs["trajectories"]:
            frames = []
            for entry in trajectory["frames"]:
                cx, cy, w, h = entry["box"]
                x0 = max(0.0, min(out_w, (cx - w / 2) * input_w * sx))
                y0 = max(0.0, min(out_h, (cy - h / 2) * input_h * sy))
                x1 = max(0.0, min(out_w, (cx + w / 2) * input_w * sx))
                y1 = max(0.0, min(out_h, (cy + h / 2) * input_h * sy))
                index = entry["frame_index"]
                new = {
                    "frame_index": int(frame_indices[index]) if frame_indices is not None else int(index),
                    "box": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                    "score": entry.get("score"),
                }
                if return_masks and entry.get("mask_rle") is not None and masks_ready:
                    new["mask_rle"] = entry["mask_rle"]
                elif return_masks and entry.get("mask_rle") is not None:
                    mask = mask_utils.decode({"size": [input_h, input_w], "counts": entry["mask_rle"].encode()})
                    mask = torch.from_numpy(mask[:content_h, :content_w].copy())[None, None].float()
                    if (content_h, content_w) != (out_h, out_w):
                        mask = torch.nn.functional.interpolate(mask, size=(out_h, out_w), mode="nearest")
                    binary = np.asfortranarray(mask[0, 0].numpy().astype(np.uint8))
                    new["mask_rle"] = mask_utils.encode(binary)["counts"].decode("ascii")
                frames.append(new)
            trajectories.append({**{k: v for k, v in trajectory.items() if k != "frames"}, "frames": frames})
        return {"height": out_h, "width": out_w, "trajectories": trajectories}


__all__ = ["CaptionFormerVideoProcessor", "VideoFrames"]
