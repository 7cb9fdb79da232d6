"""Procedural dense-video-object-captioning data: coloured shapes with motions that need time to describe.

Each video holds a few objects (category = shape) that move left/right/up/down, bounce, grow, shrink or stand
still; grey occluder bars pass in front of them so they disappear and reappear; objects may enter or leave the
frame. Masks, boxes and track ids are exact (computed from the rendered layers) and every track has a caption such
as "a red square moving to the left". Deterministic for a seed.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass

import numpy as np

SHAPES = ("square", "circle", "triangle", "star")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
MOTIONS = {
    "left": "moving to the left",
    "right": "moving to the right",
    "up": "moving up",
    "down": "moving down",
    "bounce": "bouncing up and down",
    "grow": "growing",
    "shrink": "shrinking",
    "still": "standing still",
}
CATEGORIES = list(SHAPES)
MIN_VISIBLE_PIXELS = 12


@dataclass
class SyntheticVideoConfig:
    height: int = 96
    width: int = 128
    num_frames: int = 24
    fps: int = 8
    min_objects: int = 1
    max_objects: int = 3
    occluder_probability: float = 0.5
    enter_probability: float = 0.25
    min_size: int = 14
    max_size: int = 26

    def __post_init__(self):
        from ..processing.trajectory_captionformer import check_positive_ints

        check_positive_ints(**{name: getattr(self, name) for name in (
            "height", "width", "num_frames", "fps", "min_objects", "max_objects", "min_size", "max_size")})
        if self.min_objects > self.max_objects:
            raise ValueError("`min_objects` must not exceed `max_objects`")
        if self.min_size > self.max_size or 2 * self.max_size > min(self.height, self.width):
            raise ValueError("`min_size`/`max_size` must satisfy min <= max <= half the shorter side")


def sample_video_config(height: int = 192, width: int = 256, num_frames: int = 48, fps: int = 8) -> SyntheticVideoConfig:
    """The configuration of ``captionformer sample-video``: objects as large, relative to the frame, as in the
    training videos (14-26 pixels at 96 x 128)."""
    scale = min(height / 96, width / 128)
    return SyntheticVideoConfig(height=height, width=width, num_frames=num_frames, fps=fps,
                                min_size=max(4, round(14 * scale)), max_size=max(5, round(26 * scale)))


def caption_for(color: str, shape: str, motion: str) -> str:
    article = "an" if color[0] in "aeiou" else "a"
    return f"{article} {color} {shape} {MOTIONS[motion]}"


def shape_mask(shape: str, cx: float, cy: float, size: float, height: int, width: int) -> np.ndarray:
    """Boolean mask of a shape centred at (cx, cy) with half-extent size / 2."""
    ys, xs = np.mgrid[0:height, 0:width]
    xs = xs + 0.5
    ys = ys + 0.5
    r = size / 2
    if shape == "square":
        return (np.abs(xs - cx) <= r) & (np.abs(ys - cy) <= r)
    if shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= r**2
    if shape == "triangle":  # pointing up
        top = (cx, cy - r)
        left = (cx - r, cy + r)
        right = (cx + r, cy + r)
        return _inside_polygon(xs, ys, [top, right, left])
    if shape == "star":
        points = []
        for k in range(10):
            angle = -math.pi / 2 + k * math.pi / 5
            radius = r if k % 2 == 0 else r * 0.45
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return _inside_star(xs, ys, points)
    raise ValueError(f"unknown shape {shape!r}")


def _inside_polygon(xs, ys, points) -> np.ndarray:
    """Convex polygon (clockwise in image coordinates) by half-planes."""
    inside = np.ones(xs.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]):
        inside &= (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0) >= 0
    return inside


def _inside_star(xs, ys, points) -> np.ndarray:
    """Even-odd rule for the (non-convex) star polygon."""
    inside = np.zeros(xs.shape, dtype=bool)
    n = len(points)
    for i in range(n):
        x0, y0 = points[i]
        x1, y1 = points[(i + 1) % n]
        crosses = (y0 > ys) != (y1 > ys)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = (x1 - x0) * (ys - y0) / (y1 - y0) + x0
        inside ^= crosses & (xs < x_at)
    return inside


def _trajectory(rng, motion, config, size):
    """Per-frame (cx, cy, size) of an object."""
    h, w, n = config.height, config.width, config.num_frames
    margin = size / 2 + 1
    cx = rng.uniform(margin, w - margin)
    cy = rng.uniform(margin, h - margin)
    speed = rng.uniform(1.5, 3.5)
    sizes = np.full(n, float(size))
    xs = np.full(n, cx)
    ys = np.full(n, cy)
    t = np.arange(n)
    enters = rng.random() < config.enter_probability
    if motion in ("left", "right", "up", "down"):
        direction = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[motion]
        if enters:  # start just outside the frame, moving in
            if direction[0]:
                cx = -size / 2 if direction[0] > 0 else w + size / 2
            else:
                cy = -size / 2 if direction[1] > 0 else h + size / 2
        xs = cx + direction[0] * speed * t
        ys = cy + direction[1] * speed * t
    elif motion == "bounce":
        period = rng.uniform(8, 14)
        amplitude = rng.uniform(0.15, 0.3) * h
        cy = min(max(cy, margin + amplitude), h - margin - amplitude) if h - 2 * margin > 2 * amplitude else h / 2
        ys = cy - amplitude * np.abs(np.sin(np.pi * t / period)) + amplitude / 2
    elif motion in ("grow", "shrink"):
        small, large = config.min_size * 0.6, config.max_size * 1.2
        sizes = np.linspace(small, large, n) if motion == "grow" else np.linspace(large, small, n)
        xs = np.full(n, min(max(cx, large / 2 + 1), w - large / 2 - 1))
        ys = np.full(n, min(max(cy, large / 2 + 1), h - large / 2 - 1))
    return xs, ys, sizes


def generate_video(seed: int, config: SyntheticVideoConfig | None = None) -> dict:
    """One synthetic video: ``{"frames": uint8 (T, H, W, 3), "fps", "trajectories": [{"track_id", "category",
    "category_id", "color", "motion", "caption", "frames": [{"frame_index", "box": [x, y, w, h], "mask":
    bool (H, W)}]}]}`` (a frame where the object is hidden or outside is not listed)."""
    config = config or SyntheticVideoConfig()
    rng = np.random.default_rng(seed)
    h, w, n = config.height, config.width, config.num_frames
    yy, xx = np.mgrid[0:h, 0:w]
    base_tone = rng.uniform(20, 70)
    background = np.stack(
        [base_tone + 25 * xx / w, base_tone + 20 * yy / h, np.full((h, w), base_tone + 10)], axis=-1
    )
    frames = np.repeat(background[None], n, axis=0)
    frames += rng.normal(0, 3, frames.shape)
    num_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
    colors = rng.choice(list(COLORS), size=num_objects, replace=False)
    objects = []
    for k in range(num_objects):
        shape = str(rng.choice(SHAPES))
        motion = str(rng.choice(list(MOTIONS)))
        size = int(rng.integers(config.min_size, config.max_size + 1))
        xs, ys, sizes = _trajectory(rng, motion, config, size)
        objects.append({"shape": shape, "color": str(colors[k]), "motion": motion, "xs": xs, "ys": ys, "sizes": sizes})
    occluders = []
    if rng.random() < config.occluder_probability:
        bar_w = int(rng.integers(max(8, w // 10), max(9, w // 5)))
        start = rng.uniform(-bar_w, w)
        speed = rng.choice([-1, 1]) * rng.uniform(2.0, 5.0)
        occluders.append((bar_w, start, speed))

    # draw in depth order: objects (later ones in front), then occluders in front of everything
    masks = np.zeros((num_objects, n, h, w), dtype=bool)
    for k, obj in enumerate(objects):
        for t in range(n):
            masks[k, t] = shape_mask(obj["shape"], obj["xs"][t], obj["ys"][t], obj["sizes"][t], h, w)
    occluder_masks = np.zeros((n, h, w), dtype=bool)
    for bar_w, start, speed in occluders:
        for t in range(n):
            x0 = start + speed * t
            occluder_masks[t] |= (xx >= x0) & (xx < x0 + bar_w)
    visible = masks.copy()
    for k in range(num_objects):
        for later in range(k + 1, num_objects):
            visible[k] &= ~masks[later]
        visible[k] &= ~occluder_masks
    for k, obj in enumerate(objects):
        color = np.array(COLORS[obj["color"]], dtype=np.float64)
        shade = 0.85 + 0.15 * (yy / h)[..., None]  # slight shading so objects are not flat
        for t in range(n):
            frames[t][masks[k, t]] = (color * shade)[masks[k, t]]
    for t in range(n):
        frames[t][occluder_masks[t]] = (120, 120, 120)
    frames = np.clip(frames, 0, 255).astype(np.uint8)

    tracks = []
    for k, obj in enumerate(objects):
        track_frames = []
        for t in range(n):
            mask = visible[k, t]
            if mask.sum() < MIN_VISIBLE_PIXELS:
                continue
            rows = np.nonzero(mask.any(1))[0]
            cols = np.nonzero(mask.any(0))[0]
            box = [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
            track_frames.append({"frame_index": t, "box": box, "mask": mask})
        if not track_frames:
            continue
        tracks.append(
            {
                "track_id": k,
                "category": obj["shape"],
                "category_id": CATEGORIES.index(obj["shape"]),
                "color": obj["color"],
                "motion": obj["motion"],
                "caption": caption_for(obj["color"], obj["shape"], obj["motion"]),
                "frames": track_frames,
            }
        )
    return {"frames": frames, "fps": config.fps, "height": h, "width": w, "num_frames": n, "trajectories": tracks}


def write_video(frames, path: str | os.PathLike, fps: float = 8, codec: str | None = None,
                keyframe_interval: int | None = None) -> None:
    """Encode ``uint8 (T, H, W, 3)`` frames (an array or any iterable of frames, consumed one at a time) with PyAV
    (H.264 in mp4 by default; mpeg4 for .avi, VP9 for .webm), atomically (a temporary file renamed into place).
    ``fps`` may be fractional (29.97 is written as 30000/1001, so the video plays at its own speed).
    ``keyframe_interval``: a keyframe every that many frames (the encoder's default otherwise): training clips
    seek to the keyframe before their first frame, so short intervals make reading a clip cheap."""
    from fractions import Fraction

    import av

    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"`fps` must be a positive finite number, got {fps!r}")
    rate = Fraction(fps).limit_denominator(1001)

    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError("`frames` is empty: nothing to encode")

    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lower() or ".mp4"
    codec = codec or {".avi": "mpeg4", ".webm": "libvpx-vp9"}.get(extension, "libx264")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    height, width = first.shape[:2]
    # yuv420p needs even sizes
    even_h, even_w = height - height % 2, width - width % 2
    try:
        with av.open(tmp, mode="w", format={".mp4": "mp4", ".avi": "avi", ".webm": "webm"}.get(extension)) as container:
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height = even_w, even_h
            stream.pix_fmt = "yuv420p"
            if keyframe_interval is not None:
                stream.gop_size = int(keyframe_interval)
            if codec == "libx264":
                stream.options = {"crf": "18", "preset": "veryfast"}
            for frame in itertools.chain([first], frames):
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:even_h, :even_w]), format="rgb24")
                for packet in stream.encode(video_frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


SYNTHETIC_CARD = (
    "Procedurally generated dense-video-object-captioning data (captionformer_hf.data.synthetic): coloured shapes "
    "(category = shape: square, circle, triangle, star) moving left/right/up/down, bouncing, growing, shrinking or "
    "standing still; grey occluder bars hide them for some frames so they disappear and reappear; objects may enter "
    "or leave the frame. Masks, boxes and track ids are exact; captions follow the template "
    "'a <colour> <shape> <motion>'. Deterministic for a seed."
)


def synthetic_example(seed: int, video_id: str, config: SyntheticVideoConfig | None = None,
                      video_path: str | None = None) -> dict:
    """One example in the DVOC schema (``captionformer_hf.data.schema``): the video encoded as mp4 bytes (also
    written to ``video_path`` when given), tracks with boxes and COCO RLE masks."""
    from ..processing.trajectory_captionformer import rle_encode

    video = generate_video(seed, config)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = video_path or os.path.join(tmp, f"{video_id}.mp4")
        write_video(video["frames"], path, fps=video["fps"], keyframe_interval=8)
        with open(path, "rb") as f:
            data = f.read()
    tracks = []
    for track in video["trajectories"]:
        frames = []
        for frame in track["frames"]:
            rle = rle_encode(frame["mask"])
            frames.append({"frame_index": frame["frame_index"], "box": [float(v) for v in frame["box"]], "mask_rle": rle})
        tracks.append({"track_id": track["track_id"], "category": track["category"], "category_id": track["category_id"],
                       "caption": track["caption"], "frames": frames})
    height, width = video["frames"].shape[1:3]
    return {
        "video": {"bytes": data, "path": f"{video_id}.mp4"},
        "video_id": video_id,
        "fps": float(video["fps"]),
        "height": int(height - height % 2),
        "width": int(width - width % 2),
        "num_frames": int(video["num_frames"]),
        "trajectories": tracks,
    }


def build_synthetic_dataset(num_videos: int, seed: int = 0, config: SyntheticVideoConfig | None = None,
                            splits: dict[str, float] | None = None, video_dir: str | None = None,
                            progress: bool = False, num_proc: int = 1):
    """A ``datasets.DatasetDict`` of ``num_videos`` synthetic videos split by ``splits`` (fractions; default
    train 0.8 / validation 0.1 / test 0.1). Video ``i`` uses the seed ``seed * 1_000_003 + i``, so a dataset is
    reproducible and two seeds give disjoint videos. With ``video_dir``, the mp4 files are also written there.
    ``num_proc`` processes generate the videos (the same dataset for any number)."""
    import datasets

    from .schema import dvoc_features

    if num_videos < 1:
        raise ValueError(f"`num_videos` must be >= 1, got {num_videos}")
    splits = splits or {"train": 0.8, "validation": 0.1, "test": 0.1}
    if abs(sum(splits.values()) - 1.0) > 1e-6 or any(v < 0 for v in splits.values()):
        raise ValueError(f"`splits` fractions must be >= 0 and sum to 1, got {splits}")
    if config is not None and (config.height % 2 or config.width % 2):
        raise ValueError("synthetic videos need an even height and width (yuv420p)")
    counts, assigned = {}, 0
    names = list(splits)
    for name in names[:-1]:
        counts[name] = int(round(num_videos * splits[name]))
        assigned += counts[name]
    counts[names[-1]] = num_videos - assigned
    examples = {name: [] for name in names}
    boundaries = np.cumsum([counts[name] for name in names])
    jobs = []
    for i in range(num_videos):
        split = names[int(np.searchsorted(boundaries, i, side="right"))]
        video_id = f"synthetic-{seed}-{i:06d}"
        path = None
        if video_dir is not None:
            os.makedirs(os.path.join(video_dir, split), exist_ok=True)
            path = os.path.join(video_dir, split, f"{video_id}.mp4")
        jobs.append((split, (seed * 1_000_003 + i, video_id, config, path)))
    from ..processing.trajectory_captionformer import check_positive_ints

    check_positive_ints(num_proc=num_proc)
    if num_proc == 1:
        results = (synthetic_example(*arguments) for _, arguments in jobs)
    else:  # each video depends only on its seed: the same dataset, made by several processes (spawned: no fork of
        # a process whose thread pools may be busy)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(synthetic_example, *zip(*(arguments for _, arguments in jobs)), chunksize=4)
    if progress:
        from transformers.utils.logging import tqdm

        results = tqdm(results, total=num_videos, desc="synthetic videos")
    try:
        for (split, _), example in zip(jobs, results):
            examples[split].append(example)
    finally:
        if num_proc > 1:
            pool.shutdown(cancel_futures=True)
    features = dvoc_features("video")
    return datasets.DatasetDict(
        {name: datasets.Dataset.from_list(rows, features=features) for name, rows in examples.items() if rows}
    )
