"""Overlay rendering: masks, boxes, track ids and captions drawn on the video frames, encoded with PyAV."""

from __future__ import annotations

import colorsys
import os
from collections import defaultdict

import numpy as np


def track_color(track_id: int) -> tuple[int, int, int]:
    hue = (track_id * 0.61803398875) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_frame(frame: np.ndarray, detections: list[dict], alpha: float = 0.45,
               source_size: tuple[int, int] | None = None) -> np.ndarray:
    """Draw ``detections`` (``track_id``, ``box`` [x, y, w, h], optional ``mask_rle``, ``caption``) on a
    ``uint8 (H, W, 3)`` frame. ``source_size``: ``(height, width)`` the detections are in, when the frame is smaller
    (a video downscaled while decoding): boxes are scaled and masks resampled to the frame."""
    from PIL import Image, ImageDraw

    height, width = frame.shape[:2]
    source_h, source_w = source_size or (height, width)
    sx, sy = width / source_w, height / source_h
    canvas = frame.astype(np.float32)
    if any(d.get("mask_rle") for d in detections):
        from .processing.trajectory_captionformer import rle_decode

        for det in detections:
            if det.get("mask_rle"):
                mask = rle_decode(det["mask_rle"], source_h, source_w).astype(bool)
                if (source_h, source_w) != (height, width):  # nearest sample of the source mask at each pixel
                    rows = np.minimum((np.arange(height) + 0.5) / sy, source_h - 1).astype(int)
                    cols = np.minimum((np.arange(width) + 0.5) / sx, source_w - 1).astype(int)
                    mask = mask[rows][:, cols]
                color = np.array(track_color(det["track_id"]), dtype=np.float32)
                canvas[mask] = (1 - alpha) * canvas[mask] + alpha * color
    image = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for det in detections:
        x, y, w, h = det["box"]
        x, y, w, h = x * sx, y * sy, w * sx, h * sy
        color = track_color(det["track_id"])
        draw.rectangle([x, y, x + w, y + h], outline=color, width=2)
        label = f"{det['track_id']}: {det.get('caption') or det.get('category') or ''}".strip()
        text_y = max(0, y - 11)
        text_w = draw.textlength(label) if hasattr(draw, "textlength") else 6 * len(label)
        draw.rectangle([x, text_y, x + text_w + 4, text_y + 11], fill=(0, 0, 0))
        draw.text((x + 2, text_y), label, fill=color)
    return np.asarray(image)


def detections_by_frame(prediction: dict) -> dict[int, list[dict]]:
    by_frame = defaultdict(list)
    for trajectory in prediction["trajectories"]:
        for entry in trajectory["frames"]:
            by_frame[entry["frame_index"]].append(
                {
                    "track_id": trajectory["track_id"],
                    "box": entry["box"],
                    "mask_rle": entry.get("mask_rle"),
                    # a per-frame caption (several captions per trajectory) wins over the trajectory's
                    "caption": entry.get("caption", trajectory.get("caption")),
                    "category": trajectory.get("category"),
                }
            )
    return by_frame


def render_overlay(frames, prediction: dict, path: str | os.PathLike, fps: float | None = None) -> None:
    """Write an overlay video of ``prediction`` (the pipeline's output) on ``frames`` (an iterable of
    ``(frame_index, uint8 (H, W, 3))``, e.g. a :class:`VideoFrames`), atomically."""
    from .data.synthetic import write_video

    by_frame = detections_by_frame(prediction)
    source = (prediction["height"], prediction["width"]) if "height" in prediction and "width" in prediction else None
    rendered = (draw_frame(frame, by_frame.get(index, []), source_size=source) for index, frame in frames)
    write_video(rendered, path, fps=fps or prediction.get("fps") or 8)
