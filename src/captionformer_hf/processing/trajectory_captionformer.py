"""The trajectory format of CaptionFormer and its mask RLE helpers (numpy only: no torch, no pycocotools).

One format serves model outputs, dataset targets, CHOTA inputs, the CLI and the Spaces; ``docs/format.md`` describes
it in full. A *video* is::

    {"video_id", "num_frames", "height", "width", "fps", "trajectories": [trajectory, ...]}

and a *trajectory* (one object)::

    {"track_id": int, "score": float, "category": str | None, "category_id": int | None, "caption": str,
     "frames": [{"frame_index": int, "box": [x, y, w, h], "mask_rle": str | None, "score": float}, ...]}

Boxes are absolute pixels of the original video (top-left corner, width, height; no +1); ``mask_rle`` is a COCO
compressed RLE string (pycocotools' ``counts``) of a ``height x width`` mask; a frame where the object is absent is not
listed. Ground truth has the same shape (``score`` optional); a dataset example stores its trajectories under
``trajectories`` too.

The RLE codec here is pycocotools' (column-major runs starting with a run of zeros; each run, after the first two, as
its difference to the run two before, written 5 bits a character with a continuation bit, offset by 48), vectorised
with numpy over many masks at once; tests check it byte for byte against pycocotools.

Remote-code safe: imports numpy and the standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import NamedTuple, TypedDict

import numpy as np



def check_positive_ints(_optional: bool = False, **values) -> None:
    """``ValueError`` naming the first of ``values`` (name=value) that is not an integer >= 1 (a bool is not one);
    ``None`` passes when ``_optional``. The package's one check of positive-integer arguments, here because this
    module is remote-code safe and torch-free (the processing files and the rest of the package import it); the
    ``modeling/`` folder, which must stand alone, has the same check in ``video_level_captionformer``."""
    for name, value in values.items():
        if value is None and _optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}")


class FrameEntry(TypedDict, total=False):
    """One frame of a trajectory."""

    frame_index: int  # 0-based index of the frame in the video
    box: list[float]  # [x, y, w, h], absolute pixels of the original video
    mask_rle: str | None  # COCO compressed RLE of a (height, width) mask
    score: float  # the detection's confidence (predictions)
    caption: str  # optional per-frame caption (frame-level ground truth of some benchmarks)


class Trajectory(TypedDict, total=False):
    """One object over the video."""

    track_id: int
    score: float
    category: str | None
    category_id: int | None
    caption: str
    frames: list[FrameEntry]


class VideoTrajectories(TypedDict, total=False):
    """A video's trajectories with its geometry."""

    video_id: str | int
    num_frames: int
    height: int
    width: int
    fps: float | None
    trajectories: list[Trajectory]


FORMAT_DOC = "docs/format.md"


# -------------------------------------------------------------------------------------------------- RLE codec
def _as_bytes(counts) -> bytes:
    if isinstance(counts, str):
        try:
            return counts.encode("ascii")
        except UnicodeEncodeError as error:
            raise ValueError("mask RLE has non-ASCII characters") from error
    if isinstance(counts, (bytes, bytearray)):
        return bytes(counts)
    raise TypeError(f"mask RLE must be a COCO compressed RLE string, got {type(counts).__name__}")


# The largest mask an RLE string may describe: pycocotools counts runs and pixels in 32-bit unsigned integers, and a
# bound here keeps every sum of run lengths exact in int64 (at most MAX_PIXELS + 1 runs of at most MAX_PIXELS each).
MAX_PIXELS = 2**31 - 1
# 5 bits a character: 7 characters hold any value of magnitude below 2^34 (far above MAX_PIXELS)
_MAX_CHARACTERS_PER_VALUE = 7


def rle_runs(counts, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Run lengths ``(R,)`` int64 of a COCO compressed RLE string (zeros first, column-major).

    Bounded: a string of more than ``max_pixels + 1`` runs, a value of more than 7 characters or a run longer than
    ``max_pixels`` is refused before any sum is taken, so no run or sum can overflow. Raises ``ValueError`` for
    characters outside the code, a truncated last value, a negative run, or those bounds."""
    data = np.frombuffer(_as_bytes(counts), dtype=np.uint8).astype(np.int64) - 48
    if data.size == 0:
        return np.zeros(0, dtype=np.int64)
    if (data < 0).any() or (data > 63).any():
        raise ValueError("mask RLE has characters outside the COCO RLE code")
    more = (data & 0x20) != 0
    if more[-1]:
        raise ValueError("mask RLE is truncated (its last value is unfinished)")
    ends = np.nonzero(~more)[0]  # last character of each value
    if len(ends) > max_pixels + 1:
        raise ValueError(f"mask RLE has {len(ends)} runs, more than a mask of at most {max_pixels} pixels can have")
    starts = np.concatenate([[0], ends[:-1] + 1])
    if int((ends - starts).max()) >= _MAX_CHARACTERS_PER_VALUE:
        raise ValueError("mask RLE has a value too large to be a run length")
    group = np.repeat(np.arange(len(ends)), ends - starts + 1)
    position = np.arange(len(data)) - starts[group]  # 5-bit chunk index within its value
    values = np.add.reduceat((data & 0x1F) << (5 * position), starts)
    negative = (data[ends] & 0x10) != 0  # sign bit of the last chunk
    values[negative] -= np.left_shift(1, 5 * (position[ends][negative] + 1))
    # values after the first three are differences to the run two before: cumulative sums per parity
    if len(values) > 3:
        # each value is below 2^34 in magnitude and there are at most 2^31 of them: the sums stay within int64
        for parity in (1, 2):
            values[parity::2] = np.cumsum(values[parity::2])
    if (values < 0).any():
        raise ValueError("mask RLE has a negative run length")
    if (values > max_pixels).any():
        raise ValueError(f"mask RLE has a run of {int(values.max())} pixels, more than {max_pixels}")
    return values


def rle_num_pixels(counts) -> int:
    """Number of pixels an RLE string covers (the sum of its runs)."""
    return int(rle_runs(counts).sum())


def rle_area(counts) -> int:
    """Foreground pixels of an RLE string (the sum of its odd runs)."""
    return int(rle_runs(counts)[1::2].sum())


def check_mask_size(height, width, where: str = "mask") -> int:
    """``height * width``, or a ``ValueError`` naming ``where`` unless both are integers >= 1 with a product of at
    most :data:`MAX_PIXELS`."""
    if not (_is_int(height) and _is_int(width)) or height < 1 or width < 1:
        raise ValueError(f"{where}: the mask size must be two integers >= 1, got {height!r} x {width!r}")
    pixels = int(height) * int(width)
    if pixels > MAX_PIXELS:
        raise ValueError(f"{where}: a {height}x{width} mask has {pixels} pixels, more than {MAX_PIXELS} (the largest "
                         "RLE mask pycocotools can hold)")
    return pixels


def check_rle(counts, height: int, width: int, where: str = "mask_rle") -> None:
    """Raise a ``ValueError`` naming ``where`` unless ``counts`` is a COCO RLE string of a ``height x width`` mask
    (decoded by the bounded :func:`rle_runs`, before pycocotools or anything else sees it)."""
    pixels = check_mask_size(height, width, where)
    try:
        covered = int(rle_runs(counts, max_pixels=pixels).sum())
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: bad mask RLE ({error})") from error
    if covered != int(height) * int(width):
        raise ValueError(
            f"{where}: bad mask RLE (its runs cover {covered} pixels, a {height}x{width} frame has {height * width})"
        )


def encode_runs(runs: np.ndarray, offsets: np.ndarray) -> list[str]:
    """COCO compressed RLE strings of many masks at once.

    ``runs`` ``(R,)`` are the run lengths of all masks concatenated (each mask's runs start with its run of zeros,
    possibly 0); mask ``i`` owns ``runs[offsets[i]:offsets[i + 1]]`` (``offsets`` ``(N + 1,)``)."""
    runs = np.asarray(runs, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    count = len(offsets) - 1
    if count <= 0:
        return []
    # delta-code: a run after the first two of its mask is written as the difference to the run two before it
    index_in_mask = np.arange(len(runs)) - np.repeat(offsets[:-1], np.diff(offsets))
    values = runs.copy()
    delta = index_in_mask > 2
    values[delta] = runs[delta] - runs[np.nonzero(delta)[0] - 2]
    # 5 bits a character, as many characters as pycocotools' loop writes: step k handles only the values that still
    # have bits left (most runs need one or two characters), then each character goes to its value's place
    if len(values) == 0:
        return [""] * count
    alive, rest, steps = np.arange(len(values)), values, []
    while alive.size:
        chunk = rest & 0x1F
        rest = rest >> 5  # arithmetic shift, as on the C long
        more = np.where((chunk & 0x10) != 0, rest != -1, rest != 0)
        steps.append((alive, (chunk + 48 + 0x20 * more).astype(np.uint8)))
        alive, rest = alive[more], rest[more]
    length = np.bincount(np.concatenate([index for index, _ in steps]), minlength=len(values))
    start = np.concatenate([[0], np.cumsum(length)])
    buffer = np.empty(int(start[-1]), dtype=np.uint8)
    for k, (index, chars) in enumerate(steps):
        buffer[start[index] + k] = chars
    characters = buffer.tobytes()
    # characters of mask i: the values runs[offsets[i]:offsets[i+1]] in order
    bounds = start[offsets]
    return [characters[bounds[i] : bounds[i + 1]].decode("ascii") for i in range(count)]


def mask_runs(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths of binary masks ``(N, H, W)`` in COCO order: ``(runs, offsets)`` as :func:`encode_runs` takes."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"`masks` must have shape (N, H, W), got {masks.shape}")
    count = masks.shape[0]
    flat = masks.transpose(0, 2, 1).reshape(count, -1).astype(bool)  # column-major (Fortran) order per mask
    length = flat.shape[1]
    if length == 0:
        return np.zeros(count, dtype=np.int64), np.arange(count + 1, dtype=np.int64)
    rows, cols = np.nonzero(flat[:, 1:] != flat[:, :-1])
    return runs_from_changes(rows, cols + 1, flat[:, 0], count, length)


def runs_from_changes(rows: np.ndarray, positions: np.ndarray, first_values: np.ndarray, count: int,
                      length: int) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths from the positions where masks change value (``rows`` sorted, ``positions`` increasing within a
    row; ``first_values`` ``(N,)`` the value of each mask's first pixel; every mask has ``length`` pixels)."""
    rows = np.asarray(rows, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.int64)
    first_values = np.asarray(first_values, dtype=bool)
    changes = np.bincount(rows, minlength=count)
    lead = first_values.astype(np.int64)  # a mask starting with foreground has an empty first run of zeros
    runs_per_mask = changes + 1 + lead
    offsets = np.concatenate([[0], np.cumsum(runs_per_mask)])
    # boundaries of mask i: [0, positions..., length]; runs are their differences
    boundary_count = changes + 2
    boundary_offsets = np.concatenate([[0], np.cumsum(boundary_count)])
    boundaries = np.empty(boundary_offsets[-1], dtype=np.int64)
    boundaries[boundary_offsets[:-1]] = 0
    boundaries[boundary_offsets[1:] - 1] = length
    inner = np.ones(len(boundaries), dtype=bool)
    inner[boundary_offsets[:-1]] = False
    inner[boundary_offsets[1:] - 1] = False
    boundaries[inner] = positions
    differences = np.diff(boundaries)
    not_across = np.ones(len(differences), dtype=bool)
    not_across[boundary_offsets[1:-1] - 1] = False  # the step from one mask's end to the next mask's start
    differences = differences[not_across]
    runs = np.zeros(offsets[-1], dtype=np.int64)
    slot = np.ones(offsets[-1], dtype=bool)
    slot[offsets[:-1][first_values]] = False  # the empty leading run stays 0
    runs[slot] = differences
    return runs, offsets


def rle_encode(masks: np.ndarray) -> str | list[str]:
    """COCO compressed RLE string of a binary mask ``(H, W)``, or the list of strings of masks ``(N, H, W)``."""
    masks = np.asarray(masks)
    if masks.ndim == 2:
        return encode_runs(*mask_runs(masks[None]))[0]
    return encode_runs(*mask_runs(masks))


def rle_decode(counts, height: int, width: int, where: str = "mask_rle") -> np.ndarray:
    """``uint8 (height, width)`` mask of a COCO compressed RLE string; ``ValueError`` (naming ``where``) when the
    string is not a mask of that size."""
    pixels = check_mask_size(height, width, where)
    try:
        runs = rle_runs(counts, max_pixels=pixels)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: bad mask RLE ({error})") from error
    if int(runs.sum()) != pixels:
        raise ValueError(
            f"{where}: bad mask RLE (its runs cover {int(runs.sum())} pixels, a {height}x{width} frame has "
            f"{int(height) * int(width)})"
        )
    values = (np.arange(len(runs)) % 2).astype(np.uint8)
    return np.repeat(values, runs).reshape(int(width), int(height)).T.copy()


def rle_to_box(counts, height: int, width: int) -> list[float]:
    """``[x, y, w, h]`` bounding box of an RLE mask (pixel ``i`` spans ``[i, i + 1)``; all zeros when empty)."""
    mask = rle_decode(counts, height, width)
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if len(rows) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]), float(rows[-1] + 1 - rows[0])]


# --------------------------------------------------------------------------------------------- validation
def _is_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def _number(value, where: str, name: str) -> float:
    """``float(value)``: a ``TypeError`` for anything but a number (a bool or the string "0.5" are not numbers), a
    ``ValueError`` for NaN or an infinity."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where}: `{name}` must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{where}: `{name}` must be finite, got {value!r}")
    return value


def check_box(box, where: str) -> list[float]:
    """``[x, y, w, h]`` as 4 finite floats with ``w, h >= 0``; ``ValueError`` naming ``where`` otherwise."""
    if not isinstance(box, Sequence) or isinstance(box, (str, bytes)) or len(box) != 4:
        raise ValueError(f"{where}: `box` must be 4 numbers [x, y, w, h], got {box!r}")
    values = [_number(v, where, "box") for v in box]
    if values[2] < 0 or values[3] < 0:
        raise ValueError(f"{where}: box {values} has a negative width or height")
    return values


def check_mask_rle(value, height, width, where: str) -> tuple:
    """``(counts, (height, width))`` of a frame's ``mask_rle`` once checked to describe a mask of its size exactly:
    a COCO compressed RLE string (of the video's ``height x width``) or a dict ``{"counts", "size"}`` whose counts
    are a compressed string or bytes, or an uncompressed list of run lengths. ``ValueError`` naming ``where``
    otherwise (pycocotools would loop forever on runs that do not cover the frame, and read garbage as empty)."""
    if isinstance(value, Mapping):
        size = value.get("size")
        if "counts" not in value or not isinstance(size, Sequence) or isinstance(size, (str, bytes)) or len(size) != 2:
            raise ValueError(f"{where}: an RLE dict needs `counts` and `size` [height, width], got {value!r:.80}")
        counts, (height, width) = value["counts"], size
    elif isinstance(value, (str, bytes)):
        if height is None or width is None:
            raise ValueError(f"{where}: a string `mask_rle` needs the video's `height` and `width`")
        counts = value
    else:
        raise ValueError(f"{where}: `mask_rle` must be a COCO RLE string or dict, got {type(value).__name__}")
    pixels = check_mask_size(height, width, where)
    if isinstance(counts, list):  # uncompressed RLE
        if len(counts) > pixels + 1 or not all(_is_int(c) and 0 <= c <= pixels for c in counts):
            raise ValueError(f"{where}: bad mask RLE (uncompressed counts must be at most {pixels + 1} integers from 0 "
                             "to the pixel count)")
        covered = sum(int(c) for c in counts)
        if covered != pixels:
            raise ValueError(f"{where}: bad mask RLE (its runs cover {covered} pixels, a {height}x{width} frame has "
                             f"{pixels})")
    else:
        check_rle(counts, height, width, where)
    return counts, (int(height), int(width))


class CheckedTrajectory(NamedTuple):
    """A trajectory that passed :func:`check_video`, as arrays in its listed frame order (N frames)."""

    index: int  # its position in the video's list
    track_id: Hashable
    frame_indices: np.ndarray  # (N,) int64
    boxes: np.ndarray | None  # (N, 4) float64 [x, y, w, h]; None unless every frame has a box
    scores: np.ndarray | None  # (N,) float64, each frame's score or else the trajectory's; None unless all have one
    captions: list[str]  # each frame's caption, else the trajectory's, else ""
    masks: list | None  # each frame's (counts, (height, width)) (check_mask_rle); None unless every frame has one


def check_video(
    video: VideoTrajectories | Mapping,
    where: str | None = None,
    *,
    key: str = "trajectories",
    require_scores: bool = False,
    require_boxes: bool = False,
    require_masks: bool = False,
    max_frames: int | None = None,
) -> tuple[int, list[CheckedTrajectory]]:
    """Check a video against the trajectory format and return ``(num_frames, trajectories)`` as
    :class:`CheckedTrajectory` arrays: the package's one validator (datasets, CHOTA, the VIS mAP, the protocols,
    the CLI).

    ``TypeError`` / ``ValueError`` name the video (``where``, by default ``video <id>``), track and frame of the first
    problem. ``key``: the field holding the trajectories. ``require_scores`` (predictions), ``require_boxes`` (box
    IoU) and ``require_masks`` (mask IoU) make those fields mandatory on every frame; ``max_frames`` bounds
    ``num_frames``. String masks need the video's ``height`` and ``width`` and must cover them exactly.

    Well-formed trajectories are taken with array operations (:func:`_fast_trajectory`); any other goes through the
    entry-by-entry checks, which accept the same inputs and name the first bad value."""
    if not isinstance(video, Mapping):
        raise TypeError(f"a video must be a dict, got {type(video).__name__}")
    where = where or f"video {video.get('video_id')!r}"
    num_frames = video.get("num_frames")
    if not _is_int(num_frames) or num_frames < 1:
        raise ValueError(f"{where}: `num_frames` must be a positive integer, got {num_frames!r}")
    if max_frames is not None and num_frames > max_frames:
        raise ValueError(f"{where}: `num_frames` is {num_frames}, more than the {max_frames} frames a video may have "
                         "here")
    height, width = video.get("height"), video.get("width")
    for name, value in (("height", height), ("width", width)):
        if value is not None and (not _is_int(value) or value < 1):
            raise ValueError(f"{where}: `{name}` must be a positive integer, got {value!r}")
    trajectories = video.get(key)
    if not isinstance(trajectories, Sequence) or isinstance(trajectories, (str, bytes)):
        raise TypeError(f"{where}: `{key}` must be a list of trajectories, got {type(trajectories).__name__}")
    checked, seen_ids = [], set()
    for index, trajectory in enumerate(trajectories):
        if not isinstance(trajectory, Mapping):
            raise TypeError(f"{where}: each trajectory must be a dict, got {type(trajectory).__name__}")
        track_id = trajectory.get("track_id", index)
        track_where = f"{where}, track_id {track_id!r}"
        try:
            hash(track_id)
        except TypeError:
            raise TypeError(f"{where}: trajectory {index}: `track_id` must be an integer or a string, got "
                            f"{type(track_id).__name__}") from None
        if track_id in seen_ids:
            raise ValueError(f"{track_where}: duplicate track_id in the same video")
        seen_ids.add(track_id)
        caption = trajectory.get("caption")
        if caption is not None and not isinstance(caption, str):
            raise TypeError(f"{track_where}: `caption` must be a string, got {type(caption).__name__}")
        track_score = trajectory.get("score")
        if track_score is not None:
            track_score = _number(track_score, track_where, "score")
        frames = trajectory.get("frames")
        if not isinstance(frames, Sequence) or isinstance(frames, (str, bytes)):
            raise ValueError(f"{track_where}: `frames` must be a list of per-frame dicts")
        fast = None if require_masks else _fast_trajectory(frames, num_frames, track_score, caption or "",
                                                           require_scores)
        if fast is not None:
            checked.append(CheckedTrajectory(index, track_id, *fast))
            continue
        indices, boxes, scores, captions, masks = [], [], [], [], []
        for entry in frames:
            if not isinstance(entry, Mapping):
                raise TypeError(f"{track_where}: each frame must be a dict, got {type(entry).__name__}")
            frame = entry.get("frame_index")
            if not _is_int(frame):
                raise ValueError(f"{track_where}: every frame needs an integer `frame_index`, got {frame!r}")
            frame_where = f"{track_where}, frame {frame}"
            if not 0 <= frame < num_frames:
                raise ValueError(f"{frame_where}: frame_index out of range [0, {num_frames})")
            indices.append(int(frame))
            if entry.get("box") is not None:
                boxes.append(check_box(entry["box"], frame_where))
            elif require_boxes:
                raise ValueError(f"{frame_where}: `box` [x, y, w, h] is needed (box IoU)")
            if entry.get("score") is not None:
                scores.append(_number(entry["score"], frame_where, "score"))
            elif track_score is not None:
                scores.append(track_score)
            elif require_scores:
                raise ValueError(f"{frame_where}: predictions need a `score` (per frame or per trajectory)")
            frame_caption = entry.get("caption")
            if frame_caption is not None and not isinstance(frame_caption, str):
                raise TypeError(f"{frame_where}: `caption` must be a string, got {type(frame_caption).__name__}")
            captions.append(frame_caption or caption or "")
            if entry.get("mask_rle") is not None:
                masks.append(check_mask_rle(entry["mask_rle"], height, width, frame_where))
            elif require_masks:
                raise ValueError(f"{frame_where}: `mask_rle` is needed (mask IoU)")
        frame_indices = np.asarray(indices, dtype=np.int64)
        if len(np.unique(frame_indices)) != len(frame_indices):
            first = int(frame_indices[[i for i, f in enumerate(indices) if f in indices[:i]][0]])
            raise ValueError(f"{track_where}, frame {first}: the trajectory lists this frame twice (a duplicate "
                             "track id in one frame)")
        n = len(indices)
        checked.append(CheckedTrajectory(
            index, track_id, frame_indices,
            np.asarray(boxes, dtype=np.float64).reshape(n, 4) if len(boxes) == n else None,
            np.asarray(scores, dtype=np.float64) if len(scores) == n else None,
            captions, masks if len(masks) == n else None,
        ))
    return int(num_frames), checked


# the number types of JSON and numpy that the array path takes as they are (a bool is not a number here)
_PLAIN_INTEGERS = frozenset((int, np.int64, np.int32))
_PLAIN_NUMBERS = frozenset((int, float, np.int64, np.int32, np.float64, np.float32))


def _fast_trajectory(frames, num_frames: int, track_score, caption: str, require_scores: bool):
    """``(frame_indices, boxes, scores, captions, masks)`` of a trajectory whose every entry is well-formed (plain
    dicts, distinct integer frame indices in range, a box of four finite numbers with non-negative size, finite
    numeric scores or the trajectory's, string captions, no masks), with array operations; ``None`` for anything
    else, which the entry-by-entry checks then take (or name). Those checks give the same result, many times slower
    on large inputs."""
    from itertools import chain

    if not frames:  # what the entry-by-entry checks give
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4)), np.zeros(0), [], []
    try:
        if set(map(type, frames)) != {dict}:
            return None
        keys = set(chain.from_iterable(frames))  # the fields present on some entry: absent ones cost nothing
        indices = [entry["frame_index"] for entry in frames]
        boxes = [entry["box"] for entry in frames]
    except (KeyError, TypeError):
        return None
    if "mask_rle" in keys and any(entry.get("mask_rle") is not None for entry in frames):
        return None
    if not set(map(type, indices)) <= _PLAIN_INTEGERS or not set(map(type, boxes)) <= {list, tuple}:
        return None
    if boxes and (set(map(len, boxes)) != {4} or not set(map(type, chain.from_iterable(boxes))) <= _PLAIN_NUMBERS):
        return None
    if "caption" in keys:
        captions = [entry.get("caption") for entry in frames]
        if not set(map(type, captions)) <= {str, type(None)}:
            return None
        captions = [frame_caption or caption for frame_caption in captions]
    else:
        captions = [caption] * len(frames)
    index = np.fromiter(indices, dtype=np.int64, count=len(indices))
    box = np.fromiter(chain.from_iterable(boxes), dtype=np.float64, count=4 * len(boxes)).reshape(-1, 4)
    if (index < 0).any() or (index >= num_frames).any():
        return None
    if not (np.diff(index) > 0).all() and len(np.unique(index)) != len(index):  # listed in order: distinct at once
        return None
    if not np.isfinite(box).all() or (box[:, 2:] < 0).any():
        return None
    scores = [entry.get("score") for entry in frames] if "score" in keys else None
    if scores is None or None in scores:
        if track_score is None:
            if require_scores or (scores is not None and any(s is not None for s in scores)):
                return None
            return index, box, None, captions, None
        if scores is None:
            return index, box, np.full(len(frames), track_score, dtype=np.float64), captions, None
        scores = [track_score if s is None else s for s in scores]
    if not set(map(type, scores)) <= _PLAIN_NUMBERS:
        return None
    score = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(score).all():
        return None
    return index, box, score, captions, None


def validate_video(
    video: VideoTrajectories | Mapping,
    where: str | None = None,
    *,
    key: str = "trajectories",
    require_scores: bool = False,
    require_masks: bool = False,
) -> None:
    """Check a video against the trajectory format (:func:`check_video`, without keeping its arrays)."""
    check_video(video, where, key=key, require_scores=require_scores, require_masks=require_masks)


__all__ = [
    "FORMAT_DOC",
    "CheckedTrajectory",
    "FrameEntry",
    "Trajectory",
    "VideoTrajectories",
    "check_box",
    "check_mask_rle",
    "check_rle",
    "check_video",
    "encode_runs",
    "mask_runs",
    "rle_area",
    "rle_decode",
    "rle_encode",
    "rle_num_pixels",
    "rle_runs",
    "rle_to_box",
    "runs_from_changes",
    "validate_video",
]
