"""CaptionFormer video processor: PyAV decoding (in a background thread), frame sampling, resize / normalise / pad on
the model's device, clips of T frames in batches, and the post-processing of tracked outputs back to the original
video: masks resized on the device and RLE-encoded from device-computed run lengths (once per clip batch), absolute
boxes, labels. The output is the trajectory format of ``docs/format.md``.

Remote-code safe: imports only transformers, torch, numpy, PyAV and single-dot siblings of this folder.
"""

from __future__ import annotations

import io
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from transformers.image_processing_utils import BatchFeature
from transformers.image_transforms import get_size_with_aspect_ratio
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling, SizeDict
from transformers.processing_utils import VideosKwargs
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata

from .trajectory_captionformer import VideoTrajectories, check_positive_ints, encode_runs, runs_from_changes

logger = logging.getLogger(__name__)

MAX_SIDE = 8192  # larger frames are rejected as absurd input
MAX_SOURCE_SIDE = 4 * MAX_SIDE  # with `max_side`, sources up to this are read (downscaled while decoding)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".gif", ".mpg", ".mpeg", ".ogv")


class CaptionFormerVideoProcessorKwargs(VideosKwargs, total=False):
    clip_length: int
    size_divisor: int
    max_frames: int
    resize_convention: str


RESIZE_CONVENTIONS = ("transformers", "detectron2")


def detectron2_resized_size(height: int, width: int, shortest_edge: int, longest_edge: int) -> tuple[int, int]:
    """The size detectron2's ``ResizeShortestEdge`` gives a ``height x width`` frame: short side to
    ``shortest_edge``, then both scaled down so that the long side is at most ``longest_edge``, each rounded
    (``int(x + 0.5)``; transformers' ``get_size_with_aspect_ratio`` truncates: 368 x 640 -> 480 x 835 here, 834
    there). Written from the formula of detectron2's ``ResizeShortestEdge.get_output_shape``."""
    scale = shortest_edge / min(height, width)
    new_h, new_w = (shortest_edge, scale * width) if height < width else (scale * height, shortest_edge)
    if max(new_h, new_w) > longest_edge:
        scale = longest_edge / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


# ----------------------------------------------------------------------------------------------------- decoding
MAX_DOWNLOAD_BYTES = 2 * 1024**3  # default cap on a video read from a URL


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count / 1024:.1f} KiB"


DOWNLOAD_SECONDS = 300  # a whole download, however slowly the server sends it


def _download(url: str, max_bytes: int, max_seconds: float = DOWNLOAD_SECONDS) -> bytes:
    """The body of ``url``, read in chunks and refused beyond ``max_bytes`` (checked on the declared length first) or
    ``max_seconds`` in all (a server trickling bytes cannot hold the caller)."""
    from urllib.error import HTTPError, URLError
    from urllib.request import urlopen

    deadline = time.monotonic() + max_seconds
    try:
        with urlopen(url, timeout=min(60, max_seconds)) as response:  # noqa: S310 - user-given URL
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ValueError(f"`video`: {url} is {_size(int(declared))}, more than the {_size(max_bytes)} "
                                 "allowed (`max_download_bytes`)")
            chunks, size = [], 0
            while chunk := response.read1(1 << 16):
                size += len(chunk)
                if size > max_bytes:
                    raise ValueError(f"`video`: {url} is larger than the {_size(max_bytes)} allowed "
                                     "(`max_download_bytes`)")
                if time.monotonic() > deadline:
                    raise ValueError(f"`video`: downloading {url} took longer than {max_seconds:g} s")
                chunks.append(chunk)
    except HTTPError as error:
        raise ValueError(f"`video`: could not download {url} (HTTP {error.code} {error.reason})") from error
    except (URLError, OSError) as error:
        raise ValueError(f"`video`: could not download {url} ({getattr(error, 'reason', None) or error})") from error
    return b"".join(chunks)


def _resolve_source(source, max_download_bytes: int):
    """Check a video source once: a path (must be a file), bytes, a file-like object, or a URL (downloaded once,
    at most ``max_download_bytes``)."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, str):
        if source.startswith(("http://", "https://")):
            return _download(source, max_download_bytes)
        if not os.path.exists(source):
            raise ValueError(f"`video`: file not found: {source}")
        if os.path.isdir(source):
            raise ValueError(f"`video`: {source} is a directory, not a video file")
        if not os.path.isfile(source):  # a FIFO, socket or device would block the reader or never end
            raise ValueError(f"`video`: {source} is not a regular file (a pipe, socket or device)")
        return source
    if hasattr(source, "read"):
        return source
    raise TypeError(f"`video` must be a path, URL, bytes or a file-like object, got {type(source).__name__}")


def _open_source(source):
    """Something PyAV can open from a resolved source (see :func:`_resolve_source`)."""
    if isinstance(source, bytes):
        return io.BytesIO(source)
    if hasattr(source, "seek"):
        source.seek(0)
    return source


_REFORMATTERS: dict = {}


def _rgb_single_threaded(frame, size: tuple[int, int] | None = None) -> np.ndarray:
    """``uint8 (H, W, 3)`` of a PyAV frame (at ``size`` ``(height, width)`` when given) through one reformatter per
    process, single-threaded: its conversion context is reused (``frame.to_ndarray`` builds one, with a thread pool,
    per frame; the pixels are the same), and a forked data-loader worker inherits no thread pool it could wait on."""
    reformatter = _REFORMATTERS.get(os.getpid())
    if reformatter is None:
        from av.video.reformatter import VideoReformatter

        reformatter = _REFORMATTERS[os.getpid()] = VideoReformatter()
    height, width = size if size is not None else (None, None)
    return reformatter.reformat(frame, format="rgb24", width=width, height=height, threads=1).to_ndarray()


def _fit_within(height: int, width: int, max_side: int) -> tuple[int, int]:
    """``(height, width)`` scaled so that the longer side is ``max_side`` (even sizes, at least 8)."""
    scale = max_side / max(height, width)
    return max(8, int(round(height * scale / 2)) * 2), max(8, int(round(width * scale / 2)) * 2)


def _resize_rgb(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-downscale a ``uint8 (H, W, 3)`` frame to ``size`` (arrays, and frames PyAV could not convert at once)."""
    tensor = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
    resized = torch.nn.functional.interpolate(tensor, size=size, mode="area")
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _check_frame(frame: np.ndarray, where: str, max_side: int | None = None) -> np.ndarray:
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    if frame.ndim != 3 or frame.shape[2] not in (1, 3, 4):
        raise ValueError(f"{where}: frames must be (H, W, 3) RGB, got shape {frame.shape}")
    if frame.shape[2] == 1:
        frame = np.repeat(frame, 3, axis=2)
    elif frame.shape[2] == 4:
        frame = frame[:, :, :3]
    height, width = frame.shape[:2]
    if max_side is not None and max(height, width) > max_side:
        return frame  # downscaled by the caller
    if min(height, width) < 8 or max(height, width) > MAX_SIDE:
        raise ValueError(f"{where}: frame size {width}x{height} is out of range (8 to {MAX_SIDE} pixels a side)")
    return frame


class _DecodeError:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


def _threaded(make_iterator, size: int):
    """Iterate ``make_iterator()`` in a background thread, ``size`` items ahead (PyAV decodes without holding the
    GIL, so decoding overlaps the model). Errors are re-raised in the caller; leaving the loop early stops the
    thread."""
    items: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work():
        iterator = make_iterator()
        try:
            for item in iterator:
                if not put(item):
                    return
            put(_END)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            put(_DecodeError(error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=work, name="captionformer-decode", daemon=True)
    worker.start()
    try:
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, _DecodeError):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join(timeout=10)


class VideoFrames:
    """Frames of one video, decoded lazily with PyAV (paths, URLs, bytes, file-like objects: mp4, avi, webm...) or
    taken from an array ``(T, H, W, 3)`` / a list of PIL images or arrays.

    Sampling: ``num_frames`` uniformly over the video, or ``fps`` frames per second (``video_fps`` is needed for
    arrays); ``max_frames`` stops after that many sampled frames. Iterating yields ``(source_index, frame)`` with
    frames as ``uint8 (H, W, 3)``; only the sampled frames are converted to RGB, and a background thread decodes up
    to ``prefetch`` frames ahead (``0``: decode in the caller's thread). The first frame is decoded on construction,
    so a missing, corrupt or empty video fails here with a clear ``ValueError``.

    Bounds and checks: ``max_side`` downscales larger frames while decoding (aspect kept); a URL is read once, at most
    ``max_download_bytes``; ``max_decoded_frames`` refuses longer videos (declared length first, then while decoding,
    whatever the sampling); ``deadline`` (a ``time.monotonic()`` value) stops decoding, and so the work that consumes
    the frames, with a ``ValueError`` once it is passed. A file whose container declares more frames than it holds
    (a truncated download or copy) is refused on construction, before any decoding work, unless ``allow_truncated``;
    then ``truncated`` is set and ``warnings`` says how many frames are missing. ``declared_frames``: the count the container declares (``None``
    if it declares none).

    ``probe=False`` opens nothing on construction (random access with :meth:`read`, as a training data loader does
    for every clip; no sampling settings, no ``max_side``): an empty or corrupt file fails when it is read, and a
    frame a truncated file lacks is a ``ValueError`` then."""

    is_video_frames = True  # recognised without isinstance (remote code may load two copies of this class)

    def __init__(self, video, num_frames=None, fps=None, max_frames=None, video_fps=None, prefetch: int = 16,
                 max_side: int | None = None, allow_truncated: bool = False,
                 max_download_bytes: int = MAX_DOWNLOAD_BYTES, max_decoded_frames: int | None = None,
                 deadline: float | None = None, probe: bool = True):
        if not probe and (num_frames is not None or fps is not None or max_frames is not None or max_side is not None):
            raise ValueError("`probe=False` is for random access with read(): it takes no `num_frames`, `fps`, "
                             "`max_frames` or `max_side`")
        if num_frames is not None and fps is not None:
            raise ValueError("`num_frames` and `fps` are mutually exclusive")
        check_positive_ints(True, num_frames=num_frames, max_frames=max_frames, max_decoded_frames=max_decoded_frames)
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps)
                                or fps <= 0):
            raise ValueError(f"`fps` must be a positive finite number, got {fps!r}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"`prefetch` must be an integer >= 0, got {prefetch!r}")
        if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 8):
            raise ValueError(f"`max_side` must be an integer >= 8, got {max_side!r}")
        if video_fps is not None and (isinstance(video_fps, bool) or not isinstance(video_fps, (int, float))
                                      or not math.isfinite(video_fps) or video_fps <= 0):
            raise ValueError(f"`video_fps` must be a positive finite number, got {video_fps!r}")
        self.max_decoded_frames = max_decoded_frames
        self.deadline = deadline
        self.num_frames, self.fps, self.max_frames = num_frames, fps, max_frames
        self.prefetch = prefetch
        self.max_side = max_side
        self.allow_truncated = bool(allow_truncated)
        self.declared_frames = None
        self.truncated = False
        self.warnings: list[str] = []
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
            self._source = _resolve_source(video, max_download_bytes)
        if self._array is not None:
            self.video_fps = video_fps
            self.total_frames = len(self._array)
            if fps is not None and video_fps is None:
                raise ValueError("`fps` sampling of frames given as an array needs `video_fps`")
            first = self._array[0]
        elif not probe:  # nothing known until frames are read
            self.video_fps, self.total_frames, self._target_size = video_fps, None, None
            self.source_height = self.source_width = self.height = self.width = None
            self.downscaled = False
            self.decoded_frames = 0
            self.read_to_end = False
            return
        else:
            self.video_fps, self.total_frames, first = self._probe()
        if self._array is not None:
            self.source_height, self.source_width = first.shape[:2]
            if self.max_side is not None and max(first.shape[:2]) > self.max_side:
                self._target_size = _fit_within(first.shape[0], first.shape[1], self.max_side)
                first = _resize_rgb(first, self._target_size)
            else:
                self._target_size = None
        self.downscaled = self._target_size is not None  # frames come out smaller than the source (``max_side``)
        # the frames come out at height x width; results are in the source's pixels (source_height x source_width)
        self.height, self.width = first.shape[:2]
        self.decoded_frames = 0  # source frames read so far (equals the video length once iterated)
        self.read_to_end = False

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
            low, high = float(video.min()), float(video.max())
            if low < 0 or high > 255:
                raise ValueError(f"`video`: a float array must hold values in [0, 1] or [0, 255], got [{low:g}, {high:g}]")
            # values in [0, 1] are scaled to [0, 255]; values beyond 1 mean the array is in [0, 255] already
            scale = 255.0 if high <= 1.0 else 1.0
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
            container_seconds = container.duration / 1e6 if container.duration else None
            # the size the stream declares is checked before any frame is decoded (or allocated)
            declared = (int(stream.codec_context.height or 0), int(stream.codec_context.width or 0))
            if min(declared) > 0:
                self._check_source_size(*declared)
            try:
                first = next(iter(container.decode(stream)), None)
            except av.error.FFmpegError as error:
                raise ValueError(f"`video`: could not decode {self._describe()} ({error})") from error
            if first is None:
                raise ValueError(f"`video`: {self._describe()} has zero frames")
            self.source_height, self.source_width = self._check_source_size(first.height, first.width)
            if self._target_size is not None:  # scaled by the converter: no full-size RGB frame is made
                frame = first.to_ndarray(format="rgb24", width=self._target_size[1], height=self._target_size[0])
            else:
                frame = first.to_ndarray(format="rgb24")
            frame = _check_frame(frame, "`video`", self.max_side)
        finally:
            container.close()
        self.declared_frames = total
        if total and self.max_decoded_frames is not None and total > self.max_decoded_frames:
            raise ValueError(f"`video`: {self._describe()} has {total} frames; at most {self.max_decoded_frames} can be "
                             "decoded here (`max_decoded_frames`)")
        packets, span, measured_fps = self._check_complete(total, container_seconds)
        if not total and packets:
            total = packets  # containers such as webm / mkv declare no frame count: the packets are the frames
            if self.max_decoded_frames is not None and total > self.max_decoded_frames:
                raise ValueError(f"`video`: {self._describe()} has {total} frames; at most {self.max_decoded_frames} "
                                 "can be decoded here (`max_decoded_frames`)")
        if measured_fps and (not video_fps or abs(measured_fps - video_fps) > 0.1 * video_fps):
            # a variable frame rate (or a wrong declared one): the rate the timestamps give
            video_fps = measured_fps
        if self.num_frames is not None and total is None:
            total = sum(1 for _ in self._decode_all())
        return video_fps, total, frame

    def _check_source_size(self, height: int, width: int) -> tuple[int, int]:
        """Refuse a source larger than the frames this processor takes (``MAX_SIDE`` a side, or
        ``MAX_SOURCE_SIDE`` when ``max_side`` downscales it) and set the size frames come out at."""
        limit = MAX_SIDE if self.max_side is None else MAX_SOURCE_SIDE
        if min(height, width) < 8 or max(height, width) > limit:
            hint = "" if self.max_side is not None else " (pass max_side to downscale large videos while decoding)"
            raise ValueError(f"`video`: frame size {width}x{height} is out of range (8 to {limit} pixels a side){hint}")
        if self.max_side is not None and max(height, width) > self.max_side:
            self._target_size = _fit_within(height, width, self.max_side)
        else:
            self._target_size = None
        return height, width

    def _check_complete(self, declared: int | None, container_seconds: float | None):
        """Demux the video packets (no decoding) and compare them with what the container declares: its frame
        count, or (webm, mkv...: no count) its duration against the time the packets reach. Returns ``(packets,
        seconds the packets span or None, frame rate their timestamps give or None)``."""
        import av

        container = self._container()
        times = []
        try:
            stream = container.streams.video[0]
            base = stream.time_base
            try:
                available = 0
                for packet in container.demux(stream):
                    if not packet.size:
                        continue
                    available += 1
                    if packet.pts is not None and base:
                        times.append(float((packet.pts + (packet.duration or 0)) * base))
            except av.error.FFmpegError:
                available = None  # the demuxer stops at the damage: counted by decoding instead
        finally:
            container.close()
        if available is None:
            available = sum(1 for _ in self._decode_all(check=False))
            times = []
        span = measured = None
        if len(times) >= 2:
            times.sort()
            span = times[-1] - times[0]
            steps = [b - a for a, b in zip(times, times[1:]) if b > a]
            measured = len(steps) / sum(steps) if steps else None
        if declared:
            if available >= declared - max(2, declared // 100):  # containers may miscount by a frame or two
                return available, span, measured
            message = (f"`video`: {self._describe()} is truncated: its container declares {declared} frames but only "
                       f"{available} can be read")
        elif container_seconds and times:
            reached = times[-1] - min(times[0], 0.0)
            slack = 2.0 / measured if measured else 0.25
            if reached >= 0.98 * container_seconds - slack:
                return available, span, measured
            message = (f"`video`: {self._describe()} is truncated: its container declares {container_seconds:.2f} s "
                       f"but its frames end at {reached:.2f} s")
        else:
            return available, span, measured
        if not self.allow_truncated:
            raise ValueError(message + "; pass allow_truncated=True (command line: --allow-truncated) to use the "
                             "frames it has")
        self.truncated = True
        self.warnings.append(message)
        logger.warning("%s", message)
        return available, span, measured

    def _decode_all(self, check: bool = True) -> Iterator:
        """Every source frame, undecoded to RGB: arrays, or PyAV frames."""
        import av

        if self._array is not None:
            yield from self._array
            return
        container = self._container()
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            try:
                yield from container.decode(stream)
            except av.error.FFmpegError as error:
                if check:
                    raise ValueError(f"`video`: {self._describe()} is corrupt ({error})") from error
        finally:
            container.close()

    def sampled_indices(self, total: int) -> list[int]:
        if self.num_frames is not None:
            count = min(self.num_frames, total)
            return sorted(set(np.linspace(0, total - 1, count).round().astype(int).tolist()))
        return list(range(total))

    def _sampled(self) -> Iterator[tuple[int | None, int, np.ndarray | None]]:
        """``(source index, frames read so far, uint8 frame)`` of the sampled frames, then ``(None, frames read,
        None)`` once the video is read to its end."""
        wanted = set(self.sampled_indices(self.total_frames)) if self.num_frames is not None else None
        # `fps` sampling by time: a frame is kept once its timestamp reaches the next sampling instant (frames of a
        # variable-frame-rate video are as far apart as their timestamps say); arrays are timed by `video_fps`
        interval = 1.0 / self.fps if self.fps is not None and self.video_fps and self.fps < self.video_fps else None
        yielded = 0
        next_time = None
        read = 0
        for index, frame in enumerate(self._decode_all()):
            if self.max_frames is not None and yielded >= self.max_frames:
                return
            read = index + 1
            if self.max_decoded_frames is not None and read > self.max_decoded_frames:
                raise ValueError(f"`video`: more than {self.max_decoded_frames} frames decoded "
                                 "(`max_decoded_frames`)")
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise ValueError("`video`: processing ran past its time limit (`deadline`)")
            if wanted is not None and index not in wanted:
                continue
            if interval is not None:
                moment = getattr(frame, "time", None)
                moment = index / self.video_fps if moment is None else float(moment)
                if next_time is None:
                    next_time = moment
                if moment + 1e-6 < next_time:
                    continue
                next_time += interval * max(1, math.floor((moment - next_time) / interval + 1e-6) + 1)
            if isinstance(frame, np.ndarray):
                array = frame
            elif self._target_size is not None:  # downscaled by the converter while decoding
                array = frame.to_ndarray(format="rgb24", width=self._target_size[1], height=self._target_size[0])
            else:
                array = frame.to_ndarray(format="rgb24")
            array = _check_frame(array, "`video`", self.max_side)
            if self._target_size is not None and array.shape[:2] != self._target_size:
                array = _resize_rgb(array, self._target_size)
            yield index, read, array
            yielded += 1
        yield None, read, None

    def read(self, indices) -> np.ndarray:
        """``uint8 (len(indices), H, W, 3)``: the source frames ``indices`` (any order, repeats allowed), for random
        access such as a training clip; the sampling settings do not apply. Arrays are indexed; files are sought to
        the keyframe before the first wanted frame (frames identified by their timestamps), decoded forward, and only
        the wanted frames are converted (single-threaded: safe in forked data-loader workers), stopping after the
        last; a video whose timestamps do not identify its frames is decoded from the start. A frame the video does
        not have is a ``ValueError``."""
        wanted = sorted({int(i) for i in indices})
        if not wanted:
            raise ValueError("`indices`: no frame asked for")
        if wanted[0] < 0:
            raise ValueError(f"`indices`: frame indices must be >= 0, got {wanted[0]}")
        if self._array is not None:
            found = {i: self._to_rgb(self._array[i]) for i in wanted if i < len(self._array)}
        else:
            found = self._read_by_timestamp(wanted)
            if found is None or len(found) < len(wanted):
                found = self._collect(enumerate(self._decode_all()), wanted)
        missing = [i for i in wanted if i not in found]
        if missing:
            known = f"it has {self.total_frames} frames" if self.total_frames else "it has fewer frames"
            raise ValueError(f"`video` has no frame {missing[0]} ({known})")
        return np.stack([found[int(i)] for i in indices])

    def _to_rgb(self, frame) -> np.ndarray:
        if isinstance(frame, np.ndarray):
            array = frame
        else:
            array = _rgb_single_threaded(frame, self._target_size)
        array = _check_frame(array, "`video`", self.max_side)
        if self._target_size is not None and array.shape[:2] != self._target_size:
            array = _resize_rgb(array, self._target_size)
        return array

    def _collect(self, indexed_frames, wanted: list[int]) -> dict | None:
        """``{index: rgb}`` of the ``wanted`` frames among ``(index, frame)`` pairs in decoding order, stopping after
        the last wanted one; ``None`` when a frame has no index."""
        found, targets, last = {}, set(wanted), wanted[-1]
        for index, frame in indexed_frames:
            if index is None:
                return None
            if index > last:
                break
            if index in targets:
                found[index] = self._to_rgb(frame)
        return found

    def _read_by_timestamp(self, wanted: list[int]) -> dict | None:
        import av

        container = self._container()
        try:
            if not container.streams.video:
                raise ValueError(f"`video`: {self._describe()} has no video stream")
            stream = container.streams.video[0]
            rate, time_base = stream.average_rate, stream.time_base
            if not rate or not time_base:
                return None
            start = stream.start_time or 0
            if wanted[0] > 0:
                container.seek(start + int(wanted[0] / rate / time_base), stream=stream, backward=True, any_frame=False)
            frames = ((None if frame.pts is None else int(round(float((frame.pts - start) * time_base * rate))), frame)
                      for frame in container.decode(stream))
            try:
                return self._collect(frames, wanted)
            except av.error.FFmpegError:
                return None  # decoded from the start instead, where the damage is reported
        finally:
            container.close()

    @property
    def num_source_frames(self) -> int:
        """Frames of the video: those decoded once it was read to its end, else (reading stopped at
        ``max_frames``) the count its container declares, else the frames read so far."""
        if self.read_to_end:
            return self.decoded_frames
        return self.total_frames or self.decoded_frames

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        self.decoded_frames = 0
        self.read_to_end = False
        threaded = self.prefetch > 0 and self._array is None
        items = _threaded(self._sampled, self.prefetch) if threaded else self._sampled()
        for index, read, frame in items:
            self.decoded_frames = read
            if index is None:
                self.read_to_end = True
            else:
                yield index, frame


# -------------------------------------------------------------------------------------------------- processor
class CaptionFormerVideoProcessor(BaseVideoProcessor):
    r"""
    Video processor of CaptionFormer: decodes (PyAV), samples frames (``fps`` or ``num_frames``, ``max_frames``),
    resizes keeping the aspect ratio (``size["shortest_edge"]`` / ``size["longest_edge"]``, 480 / 800 by default as
    the paper's test size), rescales and normalises (ImageNet statistics, the segmenter's), pads bottom/right to a
    multiple of ``size_divisor``, and cuts videos into clips of ``clip_length`` frames.

    ``__call__`` returns ``pixel_values_videos (B, N, 3, H, W)`` (videos padded to a common size and length) with
    ``original_sizes``, ``content_sizes`` and ``num_frames``; :meth:`iter_clip_batches` streams one video as clip
    batches on the model's device; :meth:`post_process_clip_masks` encodes each forward's masks at the original size;
    :meth:`post_process_dense_captions` maps the video output back to the original video and joins those masks.
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
    resize_convention = "transformers"
    valid_kwargs = CaptionFormerVideoProcessorKwargs
    model_input_names = ["pixel_values_videos", "pixel_mask"]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        check_positive_ints(clip_length=self.clip_length, size_divisor=self.size_divisor)
        if self.resize_convention not in RESIZE_CONVENTIONS:
            raise ValueError(f"`resize_convention` must be one of {RESIZE_CONVENTIONS}, got {self.resize_convention!r}")
        if self.resize_convention == "detectron2":
            size = self._size_dict()
            if not (size.shortest_edge and size.longest_edge):
                raise ValueError("`resize_convention='detectron2'` needs `size` with shortest_edge and longest_edge, "
                                 f"got {dict(self.size) if not isinstance(self.size, dict) else self.size!r}")

    # ------------------------------------------------------------------ geometry
    def _size_dict(self) -> SizeDict:
        return self.size if isinstance(self.size, SizeDict) else SizeDict(**self.size)

    def content_size(self, height: int, width: int) -> tuple[int, int]:
        """Size of a ``height x width`` frame after resizing (aspect kept)."""
        if not self.do_resize:
            return height, width
        size = self._size_dict()
        if self.resize_convention == "detectron2":
            return detectron2_resized_size(height, width, size.shortest_edge, size.longest_edge)
        if size.shortest_edge and size.longest_edge:
            return tuple(get_size_with_aspect_ratio((height, width), size.shortest_edge, size.longest_edge))
        probe = torch.zeros(1, 1, height, width)  # other size specs: ask resize itself
        return tuple(self.resize(probe, size=size, resample=self.resample).shape[-2:])

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        d = self.size_divisor
        return math.ceil(height / d) * d, math.ceil(width / d) * d

    def transform_frames(
        self,
        frames: torch.Tensor,
        padded_size: tuple[int, int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """``uint8 (T, 3, H, W)`` -> resized, normalised, padded float frames ``(T, 3, H', W')``, computed on
        ``device`` (the frames are moved there first; default: where they are) and returned in ``dtype``."""
        if self.do_resize and self.resize_convention == "detectron2":
            frames = self._detectron2_resize(frames)
        if device is not None:
            frames = frames.to(device, non_blocking=True)
        frames = frames.float() if not self.do_rescale else frames
        if self.do_resize and self.resize_convention != "detectron2":
            frames = self.resize(frames, size=self._size_dict(), resample=self.resample)
        frames = self.rescale_and_normalize(
            frames, self.do_rescale, self.rescale_factor, self.do_normalize, self.image_mean, self.image_std
        )
        height, width = frames.shape[-2:]
        target = padded_size or self.padded_size(height, width)
        if (height, width) != tuple(target):
            frames = torch.nn.functional.pad(frames, (0, target[1] - width, 0, target[0] - height))
        return frames if dtype is None else frames.to(dtype)

    def _detectron2_resize(self, frames: torch.Tensor) -> torch.Tensor:
        """detectron2's ``ResizeTransform`` on uint8 frames: PIL bilinear per frame (not antialiased torch), to the
        rounded size of :func:`detectron2_resized_size` (what the release's evaluation feeds its models)."""
        from PIL import Image

        if frames.dtype != torch.uint8:
            raise ValueError(f"`resize_convention='detectron2'` resizes uint8 frames (as detectron2 does), got "
                             f"{frames.dtype}")
        height, width = frames.shape[-2:]
        new_h, new_w = self.content_size(height, width)
        if (new_h, new_w) == (height, width):
            return frames
        resample = {PILImageResampling.BILINEAR: Image.BILINEAR, PILImageResampling.BICUBIC: Image.BICUBIC,
                    PILImageResampling.NEAREST: Image.NEAREST}.get(self.resample, Image.BILINEAR)
        out = np.stack([
            np.asarray(Image.fromarray(frame).resize((new_w, new_h), resample))
            for frame in frames.permute(0, 2, 3, 1).cpu().numpy()
        ])
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

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
        """Whole videos -> ``pixel_values_videos (B, N, 3, H, W)``, padded to the batch's largest size and longest
        video (in time by repeating the last frame), with ``pixel_mask`` ``(B, H, W)`` (1 on each video's content), and
        ``original_sizes``, ``content_sizes`` and ``num_frames`` for post-processing.
        ``model(**processor(videos=clip))`` runs a clip of ``clip_length`` frames; whole videos go through
        :meth:`iter_clip_batches` (``captionformer_hf.predict_video``)."""
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
        batch = torch.zeros(len(processed), length, 3, height, width, dtype=processed[0].dtype)
        pixel_mask = torch.zeros(len(processed), height, width, dtype=torch.long)
        for i, video in enumerate(processed):
            batch[i, : video.shape[0], :, : video.shape[-2], : video.shape[-1]] = video
            pixel_mask[i, : content_sizes[i][0], : content_sizes[i][1]] = 1
            if video.shape[0] < length:  # pad in time with the last frame
                batch[i, video.shape[0] :, :, : video.shape[-2], : video.shape[-1]] = video[-1]
        data = {
            "pixel_values_videos": batch,
            "pixel_mask": pixel_mask,
            "original_sizes": torch.tensor(original_sizes),
            "content_sizes": torch.tensor(content_sizes),
            "num_frames": torch.tensor([v.shape[0] for v in processed]),
        }
        return BatchFeature(data=data, tensor_type=return_tensors)

    # ------------------------------------------------------------------ streaming
    def open_video(self, video, num_frames=None, fps=None, max_frames=None, video_fps=None, prefetch=16,
                   **kwargs) -> VideoFrames:
        """A lazily decoded video (see :class:`VideoFrames`, whose ``max_side``, ``allow_truncated`` and
        ``max_download_bytes`` pass through ``kwargs``); raises ``ValueError`` at once for bad input."""
        return VideoFrames(
            video,
            num_frames=num_frames,
            fps=fps,
            max_frames=max_frames if max_frames is not None else self.max_frames,
            video_fps=video_fps,
            prefetch=prefetch,
            **kwargs,
        )

    def geometry(self, frames: VideoFrames) -> VideoGeometry:
        """Sizes of a video through this processor: original (the source's: results are in its pixels, also when
        ``max_side`` downscaled the frames while decoding), resized content, padded model input, decoded frames."""
        decoded = (int(frames.height), int(frames.width))
        original = (int(getattr(frames, "source_height", decoded[0])), int(getattr(frames, "source_width", decoded[1])))
        content = self.content_size(*decoded)
        return VideoGeometry(original, tuple(content), tuple(self.padded_size(*content)), decoded)

    def iter_clip_batches(
        self,
        frames: VideoFrames,
        clip_length: int | None = None,
        batch_size: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Iterator[CaptionFormerClipBatch]:
        """Stream a video as batches of ``batch_size`` clips of ``clip_length`` frames (the last clip may be shorter
        and comes in a batch of its own), resized and normalised on ``device``. Memory holds one batch at a time
        (plus the decoder's look-ahead)."""
        clip_length = clip_length or self.clip_length
        check_positive_ints(batch_size=batch_size)
        geometry = self.geometry(frames)
        pin = device is not None and torch.device(device).type == "cuda"
        buffer, indices = [], []

        def emit(count: int) -> CaptionFormerClipBatch:
            stacked = torch.from_numpy(np.stack(buffer[:count])).permute(0, 3, 1, 2)
            if pin:
                stacked = stacked.pin_memory()
            pixels = self.transform_frames(stacked, geometry.padded_size, device=device, dtype=dtype)
            length = min(clip_length, count)
            pixels = pixels.view(-1, length, *pixels.shape[1:])
            clips = [indices[i : i + length] for i in range(0, count, length)]
            del buffer[:count], indices[:count]
            return CaptionFormerClipBatch(pixels, clips, geometry)

        for index, frame in frames:
            if frame.shape[:2] != geometry.frame_size:
                raise ValueError(
                    f"`video`: frame {index} is {frame.shape[1]}x{frame.shape[0]}, the first frame "
                    f"{frames.width}x{frames.height}; all frames must have one size"
                )
            buffer.append(frame)
            indices.append(index)
            if len(buffer) == clip_length * batch_size:
                yield emit(len(buffer))
        full = (len(buffer) // clip_length) * clip_length
        if full:
            yield emit(full)
        if buffer:
            yield emit(len(buffer))

    # ------------------------------------------------------------------ post-processing
    def post_process_clip_masks(self, outputs, geometry: VideoGeometry, max_chunk_bytes: int | None = None) -> dict:
        """The masks of one clip batch's tracking output (``model(..., video_session=session)``) as COCO RLE strings
        at the original video size, for the pairs its ``mask_entries`` name: ``{(track_id, frame_index): rle}``
        (join them with :meth:`post_process_dense_captions`' ``mask_rles``). Resized on the masks' device, in
        chunks of at most ``max_chunk_bytes`` (:class:`ClipMaskEncoder`; by default its per-device size)."""
        entries = getattr(outputs, "mask_entries", None)
        if entries is None or getattr(outputs, "track_ids", None) is None:
            raise ValueError("`outputs` must be the tracking output of a forward pass with a `video_session` (it has "
                             "`track_ids` and `mask_entries`)")
        if outputs.masks_logits is None:
            return {}
        batch_idx, query_idx, frame_idx = torch.nonzero(entries, as_tuple=True)
        if len(batch_idx) == 0:
            return {}
        tracks = outputs.track_ids[batch_idx.cpu(), query_idx.cpu()].tolist()
        frame_indices = outputs.frame_indices
        frames = [int(frame_indices[b][t]) for b, t in zip(batch_idx.tolist(), frame_idx.tolist())]
        rles = ClipMaskEncoder(geometry, max_chunk_bytes=max_chunk_bytes)(
            outputs.masks_logits[batch_idx, query_idx, frame_idx])
        return dict(zip(zip(tracks, frames), rles))

    def post_process_dense_captions(
        self,
        outputs,
        original_size: tuple[int, int],
        content_size: tuple[int, int] | None = None,
        id2label: dict | None = None,
        mask_rles: dict | None = None,
        num_frames: int | None = None,
        fps: float | None = None,
        video_id=None,
    ) -> VideoTrajectories:
        """Map a :class:`CaptionFormerVideoOutput` (``model.finalize_video_session`` / ``track_video``: boxes
        normalised ``(cx, cy, w, h)`` of the padded input) to a video of the trajectory format (``docs/format.md``):
        absolute ``[x, y, w, h]`` boxes clipped to the frame, each entry's mask from ``mask_rles``, the category name
        from ``id2label``. Captions stay as ``caption_ids`` (the processor decodes them).

        Args:
            outputs: the video output. original_size: ``(height, width)`` of the source frames.
            content_size: ``(height, width)`` of the resized frame inside the padded input (default: the size the
                processor resizes ``original_size`` to).
            id2label: class id -> name (the model config's).
            mask_rles: ``{(track_id, frame_index): rle}``, the union of :meth:`post_process_clip_masks` over the
                video's clip batches (``None``: no masks). An entry without its mask is an error.
            num_frames: frames of the source video (default: the frames the session processed). fps: its frame rate
                (default ``None``). video_id: put in the result when given.
        """
        out_h, out_w = int(original_size[0]), int(original_size[1])
        input_h, input_w = outputs.input_size
        content_h, content_w = content_size or self.content_size(out_h, out_w)
        if getattr(outputs, "video_inference_mode", None) == "release":
            absolute = release_boxes(outputs.frame_boxes, (input_h, input_w), (content_h, content_w), (out_h, out_w),
                                     fp16=getattr(outputs, "precision", None) == "fp16_autocast")
        else:
            boxes = outputs.frame_boxes.double().numpy().reshape(-1, 4)
            cx, cy, w, h = boxes.T
            sx, sy = input_w * out_w / content_w, input_h * out_h / content_h
            x0 = np.clip((cx - w / 2) * sx, 0, out_w)
            y0 = np.clip((cy - h / 2) * sy, 0, out_h)
            x1 = np.clip((cx + w / 2) * sx, 0, out_w)
            y1 = np.clip((cy + h / 2) * sy, 0, out_h)
            absolute = np.round(np.stack([x0, y0, x1 - x0, y1 - y0], 1), 2).tolist()
        frame_scores = np.round(outputs.frame_scores.numpy().astype(np.float64), 4).tolist()
        frame_indices = outputs.frame_indices.tolist()
        id2label = id2label or {}
        trajectories = []
        for track_id, score, category_id in zip(
            outputs.track_ids.tolist(), outputs.scores.tolist(), outputs.category_ids.tolist()
        ):
            trajectories.append({
                "track_id": int(track_id),
                "score": round(float(score), 4),
                "category": (id2label.get(category_id, str(category_id)) if category_id >= 0 else None),
                "category_id": int(category_id) if category_id >= 0 else None,
                "caption": "",
                "frames": [],
            })
        mask_track_ids = getattr(outputs, "frame_mask_track_ids", None)  # the ids the masks were keyed by, if not the tracks'
        mask_track_ids = None if mask_track_ids is None else mask_track_ids.tolist()
        for m, track in enumerate(outputs.frame_track_indices.tolist()):
            entry = {"frame_index": int(frame_indices[m]), "box": absolute[m], "score": frame_scores[m]}
            if mask_rles is not None:
                mask_track = trajectories[track]["track_id"] if mask_track_ids is None else int(mask_track_ids[m])
                key = (mask_track, entry["frame_index"])
                if key not in mask_rles:
                    raise ValueError(f"`mask_rles` has no mask for track {key[0]} in frame {key[1]} (give the union "
                                     "of `post_process_clip_masks` over every clip batch of the video)")
                entry["mask_rle"] = mask_rles[key]
            trajectories[track]["frames"].append(entry)
        result = {"num_frames": int(num_frames if num_frames is not None else outputs.num_frames), "height": out_h,
                  "width": out_w, "fps": float(fps) if fps is not None and math.isfinite(fps) else None,
                  "trajectories": trajectories}
        return result if video_id is None else {"video_id": video_id, **result}


def release_boxes(boxes: torch.Tensor, input_size, content_size, original_size, fp16: bool = False) -> list[list[float]]:
    """The released code's box post-processing of ``(cx, cy, w, h)`` boxes normalised to the padded input: as
    ``(x, y, w, h)``, scaled to the content (``*= padded / content``), each coordinate clamped to ``[0, 1]``, scaled to
    the original size and rounded to whole pixels. In float32, or with ``fp16`` as the release under autocast: its
    boxes are fp16 and each in-place product is rounded to fp16 (a float32 product of the fp16 value and the float32
    scalar, as CUDA computes it)."""
    boxes = boxes.float().reshape(-1, 4)
    xywh = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, 2:]], dim=1)
    ratio = torch.tensor([input_size[1] / content_size[1], input_size[0] / content_size[0]] * 2, dtype=torch.float32)
    scale = torch.tensor([original_size[1], original_size[0]] * 2, dtype=torch.float32)
    if fp16:
        xywh = (xywh.half().float() * ratio).half().clamp(0, 1)
        return (xywh.float() * scale).half().float().round().tolist()
    xywh = (xywh * ratio).clamp(0, 1)
    return (xywh * scale).round().tolist()


@dataclass(frozen=True)
class VideoGeometry:
    """Sizes of one video through the processor: ``original_size`` (the source frames: results are in its pixels),
    ``content_size`` (resized, aspect kept), ``padded_size`` (the model input: content padded bottom/right to the
    size divisor) and ``frame_size`` (the decoded frames: the source's, or smaller when ``max_side`` downscaled them
    while decoding)."""

    original_size: tuple[int, int]
    content_size: tuple[int, int]
    padded_size: tuple[int, int]
    frame_size: tuple[int, int] | None = None  # the decoded frames' (smaller than original with `max_side`)

    def __post_init__(self):
        if self.frame_size is None:
            object.__setattr__(self, "frame_size", tuple(self.original_size))


@dataclass
class CaptionFormerClipBatch:
    """A batch of consecutive clips of one video: ``pixel_values_videos`` ``(B, T', 3, H, W)`` (normalised, padded,
    on the requested device), ``frame_indices`` (the source frame index of each frame of each clip) and the video's
    ``geometry``. Pass it to ``model(**batch.model_inputs(), video_session=session)``: pixel values, frame indices
    and ``pixel_mask`` ``(B, H, W)`` (1 on the content, 0 on the padding), no geometry."""

    pixel_values_videos: torch.Tensor
    frame_indices: list[list[int]]
    geometry: VideoGeometry

    @property
    def content_size(self) -> tuple[int, int]:
        return self.geometry.content_size

    @property
    def pixel_mask(self) -> torch.LongTensor:
        """``(B, H, W)`` on the pixel values' device: 1 on the frames' content, 0 on the padding."""
        height, width = self.pixel_values_videos.shape[-2:]
        mask = torch.zeros(self.pixel_values_videos.shape[0], height, width, dtype=torch.long,
                           device=self.pixel_values_videos.device)
        mask[:, : self.geometry.content_size[0], : self.geometry.content_size[1]] = 1
        return mask

    def model_inputs(self) -> dict:
        return {
            "pixel_values_videos": self.pixel_values_videos,
            "frame_indices": self.frame_indices,
            "pixel_mask": self.pixel_mask,
        }


def _pycocotools_mask():
    try:
        from pycocotools import mask
    except ImportError:
        return None
    return mask


class ClipMaskEncoder:
    """Mask logits on the model's mask grid ``(N, h, w)`` -> COCO RLE strings at the original video size.

    On the logits' device, in chunks of at most ``max_chunk_bytes`` of float32 masks: bilinear upsampling to the padded
    input size, crop to the content, bilinear resize to the original size (as the released code), threshold at 0,
    and, on an accelerator, the positions where each column-major mask changes value (torch; one host copy per call,
    then the run lengths and their COCO string code with numpy, equal to pycocotools' ``encode``); on the CPU,
    pycocotools' ``encode`` of the binary masks when it is installed (faster there). ``method``: ``"auto"`` (as
    said), ``"runs"`` or ``"pycocotools"`` (the same strings either way). ``max_chunk_bytes`` (``None``: 16 MiB on
    the CPU, where a chunk that stays in the allocator's reused memory is a third faster than one that needs fresh
    pages, and 256 MiB on accelerators, where fewer, larger kernels are faster); at least one mask a chunk."""

    CPU_CHUNK_BYTES = 1 << 24
    DEVICE_CHUNK_BYTES = 1 << 28

    def __init__(self, geometry: VideoGeometry, max_chunk_bytes: int | None = None, method: str = "auto"):
        if method not in ("auto", "runs", "pycocotools"):
            raise ValueError(f"`method` must be 'auto', 'runs' or 'pycocotools', got {method!r}")
        check_positive_ints(True, max_chunk_bytes=max_chunk_bytes)
        self.geometry = geometry
        self.max_chunk_bytes = max_chunk_bytes
        self.method = method

    def binary_masks(self, masks_logits: torch.Tensor, column_major: bool = False) -> torch.Tensor:
        """``(N, h, w)`` logits -> ``(N, H, W)`` bool masks at the original size (one chunk's worth);
        ``column_major``: ``(N, W, H)`` instead, each mask's columns contiguous as COCO RLE reads them (a transposed
        copy of the bool masks after the threshold: thresholding in the transposed layout was slower)."""
        padded, content, original = self.geometry.padded_size, self.geometry.content_size, self.geometry.original_size
        logits = masks_logits[:, None].float()
        logits = torch.nn.functional.interpolate(logits, size=tuple(padded), mode="bilinear", align_corners=False)
        logits = logits[..., : content[0], : content[1]]
        if tuple(content) != tuple(original):
            logits = torch.nn.functional.interpolate(logits, size=tuple(original), mode="bilinear", align_corners=False)
        logits = logits[:, 0]
        if logits.device.type == "cpu":  # numpy's comparison is 2.5x torch's there
            binary = torch.from_numpy(np.greater(logits.numpy(), 0))
        else:
            binary = logits > 0
        if not column_major:
            return binary
        out = torch.empty(logits.shape[0], logits.shape[2], logits.shape[1], dtype=torch.bool, device=logits.device)
        return out.copy_(binary.transpose(1, 2))

    def __call__(self, masks_logits: torch.Tensor) -> list[str]:
        count = masks_logits.shape[0]
        if count == 0:
            return []
        height, width = self.geometry.original_size
        padded_h, padded_w = self.geometry.padded_size
        per_mask = 4 * (height * width + padded_h * padded_w) + 2 * height * width
        budget = self.max_chunk_bytes
        if budget is None:
            budget = self.CPU_CHUNK_BYTES if masks_logits.device.type == "cpu" else self.DEVICE_CHUNK_BYTES
        chunk = max(1, budget // per_mask)
        mask_utils = _pycocotools_mask() if self.method != "runs" else None
        if self.method == "pycocotools" and mask_utils is None:
            raise ImportError("`method='pycocotools'` needs pycocotools (pip install pycocotools)")
        # "auto": pycocotools on the CPU when installed (a Hub folder's inference does not need it)
        if mask_utils is not None and (self.method == "pycocotools" or masks_logits.device.type == "cpu"):
            strings = []
            for start in range(0, count, chunk):
                binary = self.binary_masks(masks_logits[start : start + chunk], column_major=True)
                # (N, W, H) C order is (H, W, N) Fortran order: pycocotools reads it without a copy
                rles = mask_utils.encode(binary.numpy().view(np.uint8).transpose(2, 1, 0))
                strings.extend(r["counts"].decode("ascii") for r in rles)
            return strings
        rows, positions, firsts = [], [], []
        for start in range(0, count, chunk):
            binary = self.binary_masks(masks_logits[start : start + chunk], column_major=True)
            flat = binary.reshape(binary.shape[0], -1)  # column-major, as COCO RLE
            changes = torch.nonzero(flat[:, 1:] != flat[:, :-1])
            rows.append(changes[:, 0] + start)
            positions.append(changes[:, 1] + 1)
            firsts.append(flat[:, 0])
        host = torch.stack([torch.cat(rows), torch.cat(positions)]).cpu().numpy()
        first = torch.cat(firsts).cpu().numpy()
        runs, offsets = runs_from_changes(host[0], host[1], first, count, height * width)
        return encode_runs(runs, offsets)


__all__ = ["CaptionFormerClipBatch", "CaptionFormerVideoProcessor", "ClipMaskEncoder", "VideoFrames", "VideoGeometry"]
