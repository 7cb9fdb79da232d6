"""Training augmentation of clips, the same for every frame of a clip and applied to masks and boxes.

The paper's recipe (Mask2Former-VIS / OVFormer): multi-scale resize, random crop, horizontal flip, colour jitter and
large-scale jitter; images become pseudo-clips of T frames by augmenting one image T times (independent crops and
scales, the same flip and colours), which simulates camera motion.

All operations work on ``uint8`` frames ``(T, 3, H, W)`` and ``uint8`` masks ``(N, T, H, W)`` with torch; boxes are
read off the transformed masks, or (box-only annotations, where the masks are the boxes drawn as rectangles) off the
transformed rectangles — the same thing. Random draws come from a ``torch.Generator`` so a clip's augmentation is a
function of its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class AugmentConfig:
    """What to draw per clip. ``scale_range``: multi-scale factor on the input size (the short side), e.g. (0.75,
    1.25); ``crop_probability`` / ``crop_range``: a random crop of relative size in the range (both sides);
    ``flip_probability``; colour jitter strengths ``brightness`` / ``contrast`` / ``saturation`` (factors drawn in
    ``[1 - s, 1 + s]``); ``lsj_probability`` / ``lsj_range``: large-scale jitter, the frame scaled by a factor in the
    range then cropped or padded back to its size; ``pseudo_crop_range``: per-frame crop size of pseudo-clips."""

    scale_range: tuple[float, float] = (0.75, 1.25)
    crop_probability: float = 0.5
    crop_range: tuple[float, float] = (0.6, 1.0)
    flip_probability: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    lsj_probability: float = 0.0
    lsj_range: tuple[float, float] = (0.1, 2.0)
    pseudo_crop_range: tuple[float, float] = (0.8, 1.0)

    def __post_init__(self):
        for name in ("crop_probability", "flip_probability", "lsj_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`augment.{name}` must be in [0, 1], got {value!r}")
        for name in ("scale_range", "crop_range", "lsj_range", "pseudo_crop_range"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"`augment.{name}` must be (low, high) with 0 < low <= high, got {getattr(self, name)!r}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"`augment.{name}` must be in [0, 1), got {getattr(self, name)!r}")


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _crop(frames, masks, top, left, height, width):
    return frames[..., top : top + height, left : left + width], masks[..., top : top + height, left : left + width]


def random_crop(frames, masks, generator, size_range):
    """The same random crop (relative size in ``size_range`` per side) of all frames and masks."""
    height, width = frames.shape[-2:]
    ch = max(1, round(height * _uniform(generator, *size_range)))
    cw = max(1, round(width * _uniform(generator, *size_range)))
    top = int(torch.randint(0, height - ch + 1, (), generator=generator))
    left = int(torch.randint(0, width - cw + 1, (), generator=generator))
    return _crop(frames, masks, top, left, ch, cw)


def colour_jitter(frames: torch.Tensor, generator, brightness, contrast, saturation) -> torch.Tensor:
    """Brightness, contrast and saturation factors drawn once for the clip."""
    if not (brightness or contrast or saturation):
        return frames
    x = frames.float()
    b = _uniform(generator, 1 - brightness, 1 + brightness)
    c = _uniform(generator, 1 - contrast, 1 + contrast)
    s = _uniform(generator, 1 - saturation, 1 + saturation)
    x = x * b
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    x = (x - gray.mean(dim=(-2, -1), keepdim=True)) * c + gray.mean(dim=(-2, -1), keepdim=True)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    x = (x - gray) * s + gray
    return x.clamp(0, 255).round().to(torch.uint8)


def resize_clip(frames: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]):
    """Bilinear (antialiased) frames and nearest masks at ``size``."""
    if tuple(frames.shape[-2:]) == tuple(size) and tuple(masks.shape[-2:]) == tuple(size):
        return frames, masks
    if frames.shape[0]:
        resized = torch.nn.functional.interpolate(frames.float(), size=size, mode="bilinear", align_corners=False,
                                                  antialias=True).clamp(0, 255).round().to(torch.uint8)
    else:
        resized = frames.new_zeros(0, frames.shape[1], *size)
    count, frames_count = masks.shape[:2]
    if masks.numel():
        masks = torch.nn.functional.interpolate(masks.flatten(0, 1)[:, None].float(), size=size, mode="nearest")
        masks = masks[:, 0].reshape(count, frames_count, *size).to(torch.uint8)
    else:
        masks = masks.new_zeros(count, frames_count, *size)
    return resized, masks


def large_scale_jitter(frames, masks, generator, scale_range):
    """Scale by a factor in ``scale_range``, then crop (larger) or pad with zeros (smaller) back to the size."""
    height, width = frames.shape[-2:]
    factor = _uniform(generator, *scale_range)
    new = (max(1, round(height * factor)), max(1, round(width * factor)))
    frames, masks = resize_clip(frames, masks, new)
    if factor >= 1:
        top = int(torch.randint(0, new[0] - height + 1, (), generator=generator))
        left = int(torch.randint(0, new[1] - width + 1, (), generator=generator))
        return _crop(frames, masks, top, left, height, width)
    canvas = frames.new_zeros(*frames.shape[:2], height, width)
    canvas_masks = masks.new_zeros(*masks.shape[:2], height, width)
    canvas[..., : new[0], : new[1]] = frames
    canvas_masks[..., : new[0], : new[1]] = masks
    return canvas, canvas_masks


def augment_clip(frames: torch.Tensor, masks: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
                 pseudo_clip: bool = False):
    """Augment a clip: ``frames`` ``uint8 (T, 3, H, W)``, ``masks`` ``uint8 (N, T, H, W)``. With ``pseudo_clip`` the
    T frames are copies of one image and each gets its own crop (camera motion). Returns ``(frames, masks,
    scale)`` where ``scale`` is the multi-scale factor to apply to the input size."""
    if pseudo_clip:
        height, width = frames.shape[-2:]
        out_frames, out_masks = [], []
        for t in range(frames.shape[0]):
            f, m = random_crop(frames[t : t + 1], masks[:, t : t + 1], generator, config.pseudo_crop_range)
            f, m = resize_clip(f, m, (height, width))
            out_frames.append(f)
            out_masks.append(m)
        frames, masks = torch.cat(out_frames), torch.cat(out_masks, dim=1)
    if config.crop_probability and float(torch.rand((), generator=generator)) < config.crop_probability:
        frames, masks = random_crop(frames, masks, generator, config.crop_range)
    if config.lsj_probability and float(torch.rand((), generator=generator)) < config.lsj_probability:
        frames, masks = large_scale_jitter(frames, masks, generator, config.lsj_range)
    if config.flip_probability and float(torch.rand((), generator=generator)) < config.flip_probability:
        frames, masks = frames.flip(-1), masks.flip(-1)
    frames = colour_jitter(frames, generator, config.brightness, config.contrast, config.saturation)
    scale = _uniform(generator, *config.scale_range)
    return frames, masks, scale


def boxes_from_masks(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, T, H, W)`` masks -> absolute ``(x0, y0, x1, y1)`` boxes ``(N, T, 4)`` (pixel ``i`` spans ``[i, i + 1)``)
    and ``valid`` ``(N, T)`` (non-empty)."""
    height, width = masks.shape[-2:]
    rows, cols = masks.any(-1), masks.any(-2)
    valid = rows.any(-1)

    def extent(occupied, size):
        index = torch.arange(size)
        low = torch.where(occupied, index, size).amin(-1)
        high = torch.where(occupied, index + 1, 0).amax(-1)
        return low.float(), high.float()

    y0, y1 = extent(rows, height)
    x0, x1 = extent(cols, width)
    boxes = torch.stack([x0, y0, x1, y1], dim=-1)
    return boxes.masked_fill(~valid[..., None], 0.0), valid


def scaled_size(height: int, width: int, short: float, long_max: float) -> tuple[int, int]:
    """``(h, w)`` with the short side ``short`` and the long side at most ``long_max``, aspect kept."""
    ratio = min(short / min(height, width), long_max / max(height, width))
    return max(1, int(math.floor(height * ratio + 0.5))), max(1, int(math.floor(width * ratio + 0.5)))


__all__ = ["AugmentConfig", "augment_clip", "boxes_from_masks", "colour_jitter", "large_scale_jitter", "random_crop",
           "resize_clip", "scaled_size"]
