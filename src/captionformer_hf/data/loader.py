"""Examples -> training clips: decoding only the frames a clip needs, augmentation, targets, and the datasets and
samplers that mix several sources with sampling ratios (map-style or streaming ``datasets``).

A clip is ``clip_length`` consecutive frames of a video (or, for an image, ``clip_length`` augmented copies of it: a
pseudo-clip), processed like at inference (resize, normalise, pad). Its targets are the tracks visible in it:
``class_labels (N,)``, ``mask_labels (N, T, H, W)`` at the padded input size, ``boxes (N, T, 4)`` normalised
``(cx, cy, w, h)`` of the padded input, ``valid (N, T)``, ``track_ids (N,)`` and the tokenised captions
``caption_ids`` / ``caption_attention_mask``.

The randomness of a clip (its start frame, its augmentation) is a function of a seed that the sampler draws from
``(seed, epoch)``, so data-loader workers need no state and a resumed run sees the same clips.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch

from .augment import AugmentConfig, augment_clip, boxes_from_masks, resize_clip, scaled_size


# ------------------------------------------------------------------------------------------------------ decoding
def read_video_frames(source, indices: list[int]) -> np.ndarray:
    """``uint8 (len(indices), H, W, 3)`` frames of a video file (path or bytes), decoded by the processor's
    :class:`~captionformer_hf.processing.VideoFrames` (the one PyAV decoder of the package): seek to the keyframe
    before the first wanted frame, decode forward, convert only the wanted frames, stop after the last one. A file
    whose container declares more frames than it holds is read as far as it goes (a frame beyond that is an error).
    Nothing is probed beforehand (``probe=False``): a clip costs one seek and its frames."""
    from ..processing.video_processing_captionformer import VideoFrames

    return VideoFrames(source, prefetch=0, probe=False).read(indices)


def read_frames(example: dict, indices: list[int]) -> np.ndarray:
    """``uint8 (len(indices), H, W, 3)``: the frames ``indices`` of an example whose ``video`` is an encoded video
    (bytes or path) or a list of frame images (only those frames are decoded)."""
    video = example["video"]
    if isinstance(video, dict):
        source = video.get("bytes") or video.get("path")
        if source is None:
            raise ValueError(f"video {example.get('video_id')!r}: `video` has neither bytes nor path")
        return read_video_frames(source, indices)
    if isinstance(video, (list, tuple)):
        from PIL import Image

        frames = {}
        for i in sorted(set(indices)):
            item = video[i]
            if isinstance(item, dict):
                item = Image.open(io.BytesIO(item["bytes"])) if item.get("bytes") else Image.open(item["path"])
            frames[i] = np.asarray(item.convert("RGB"))
        return np.stack([frames[i] for i in indices])
    return read_video_frames(video, indices)


def decode_example_frames(example: dict) -> np.ndarray:
    """All ``uint8 (T, H, W, 3)`` frames of an example."""
    return read_frames(example, list(range(int(example["num_frames"]))))


# -------------------------------------------------------------------------------------------------------- clips
def is_image_example(example: dict) -> bool:
    return int(example["num_frames"]) == 1


def clip_frame_indices(num_frames: int, clip_length: int, generator: torch.Generator | None, position: float = 0.0,
                       stratum: tuple[int, int] = (0, 1)):
    """Consecutive frame indices of a clip: a random start with ``generator``, else at ``position`` (0..1) of the
    video; a video shorter than the clip repeats its last frame. ``stratum=(k, n)``: the start is drawn from the
    k-th of n equal parts of the possible starts (``n`` clips of a video in time order, spread over all of it)."""
    last_start = max(0, num_frames - clip_length)
    k, n = stratum
    if generator is not None:
        low = (k * (last_start + 1)) // n
        high = max(low, ((k + 1) * (last_start + 1)) // n - 1)
        start = int(torch.randint(low, high + 1, (), generator=generator))
    else:
        start = round(position * last_start)
    indices = list(range(start, min(start + clip_length, num_frames)))
    return indices + [indices[-1]] * (clip_length - len(indices))


def _track_masks(example: dict, frame_indices: list[int]):
    """The tracks visible in the clip: ``uint8 (N, T, H, W)`` masks at the original size (rectangles for box-only
    annotations), class labels, captions, track ids."""
    from ..processing.trajectory_captionformer import rle_decode

    height, width = int(example["height"]), int(example["width"])
    position = {}
    for t, f in enumerate(frame_indices):
        position.setdefault(f, []).append(t)
    masks, labels, captions, track_ids = [], [], [], []
    for track in example["trajectories"]:
        entries = [(t, frame) for frame in track["frames"] for t in position.get(frame["frame_index"], ())]
        if not entries:
            continue
        track_masks = np.zeros((len(frame_indices), height, width), np.uint8)
        for t, frame in entries:
            if frame.get("mask_rle"):
                track_masks[t] = rle_decode(frame["mask_rle"], height, width)
            else:  # box annotations: the box as a mask
                x, y, w, h = frame["box"]
                track_masks[t, int(round(y)) : int(round(y + h)), int(round(x)) : int(round(x + w))] = 1
        masks.append(track_masks)
        labels.append(int(track.get("category_id") or 0))
        captions.append(track.get("caption") or "")
        track_ids.append(int(track["track_id"]))
    stacked = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, len(frame_indices), height, width,
                                                                          dtype=torch.uint8)
    return stacked, labels, captions, track_ids


def make_clip(example: dict, frame_indices: list[int], processor, augment: AugmentConfig | None = None,
              generator: torch.Generator | None = None, pseudo_clip: bool = False) -> dict:
    """One training clip (see the module docstring) of ``example`` made of ``frame_indices`` (for a pseudo-clip: the
    image repeated ``clip_length`` times), augmented with ``augment`` (``None``: as at inference)."""
    frames = torch.from_numpy(np.ascontiguousarray(read_frames(example, frame_indices))).permute(0, 3, 1, 2)
    masks, labels, captions, track_ids = _track_masks(example, frame_indices)
    scale = 1.0
    if augment is not None:
        frames, masks, scale = augment_clip(frames, masks, augment, generator, pseudo_clip=pseudo_clip)
    boxes, valid = boxes_from_masks(masks.bool())  # (x0, y0, x1, y1) in the (augmented) frame's pixels
    video_processor = processor.video_processor
    size = video_processor.size
    shortest = getattr(size, "shortest_edge", None) or size["shortest_edge"]
    longest = getattr(size, "longest_edge", None) or size.get("longest_edge") or shortest * 2
    height, width = frames.shape[-2:]
    # at scale 1 exactly the inference resize (the processor's own), else the multi-scale size
    content = tuple(video_processor.content_size(height, width)) if scale == 1.0 else scaled_size(
        height, width, shortest * scale, longest * scale)
    _, masks = resize_clip(frames[:0], masks, content)
    if tuple(frames.shape[-2:]) != content:
        from transformers.image_utils import SizeDict

        frames = video_processor.resize(frames, size=SizeDict(height=content[0], width=content[1]),
                                        resample=video_processor.resample)
    padded = video_processor.padded_size(*content)
    pixel_values = video_processor.rescale_and_normalize(
        frames.float() if not video_processor.do_rescale else frames, video_processor.do_rescale,
        video_processor.rescale_factor, video_processor.do_normalize, video_processor.image_mean,
        video_processor.image_std,
    )
    pixel_values = torch.nn.functional.pad(pixel_values, (0, padded[1] - content[1], 0, padded[0] - content[0]))
    mask_labels = torch.nn.functional.pad(masks, (0, padded[1] - content[1], 0, padded[0] - content[0]))
    sx, sy = content[1] / width, content[0] / height
    x0, y0, x1, y1 = boxes.unbind(-1)
    normalised = torch.stack([(x0 + x1) / 2 * sx / padded[1], (y0 + y1) / 2 * sy / padded[0],
                              (x1 - x0) * sx / padded[1], (y1 - y0) * sy / padded[0]], dim=-1)
    keep = valid.any(-1)  # objects the augmentation removed from every frame are dropped
    keep_list = keep.tolist()
    targets = {
        "class_labels": torch.tensor([l for l, k in zip(labels, keep_list) if k], dtype=torch.long),
        "mask_labels": mask_labels[keep],
        "boxes": normalised[keep],
        "valid": valid[keep],
        "track_ids": torch.tensor([t for t, k in zip(track_ids, keep_list) if k], dtype=torch.long),
    }
    if getattr(processor, "tokenizer", None) is not None:
        kept_captions = [c for c, k in zip(captions, keep_list) if k]
        targets.update(processor.tokenize_captions(kept_captions) if kept_captions else {
            "caption_ids": torch.zeros(0, 1, dtype=torch.long),
            "caption_attention_mask": torch.zeros(0, 1, dtype=torch.long),
        })
    return {"pixel_values": pixel_values, "labels": targets, "video_id": example["video_id"],
            "frame_indices": list(frame_indices)}


def example_to_clips(example: dict, processor, clip_length: int, clips_per_video: int = 1,
                     generator: torch.Generator | None = None, augment: AugmentConfig | None = None) -> list[dict]:
    """``clips_per_video`` clips of an example (random starts and augmentation with ``generator``, else evenly spaced
    and not augmented)."""
    clips = []
    pseudo = is_image_example(example)
    for k in range(clips_per_video):
        position = k / max(1, clips_per_video - 1)
        indices = [0] * clip_length if pseudo else clip_frame_indices(int(example["num_frames"]), clip_length,
                                                                       generator, position)
        clips.append(make_clip(example, indices, processor, augment if generator is not None else None, generator,
                               pseudo_clip=pseudo))
    return clips


def video_clips(example: dict, processor, clip_length: int, count: int, seed: int,
                augment: AugmentConfig | None = None) -> list[dict]:
    """``count`` clips of one video in time order, the k-th starting in the k-th of ``count`` equal parts of the
    video (random within it), all with the same augmentation draw (a video is augmented as a whole): the input of
    video-level captioning."""
    clips = []
    for k in range(count):
        generator = torch.Generator().manual_seed(seed)  # the same augmentation for every clip of the video
        starts = torch.Generator().manual_seed(seed + 1 + k)
        if is_image_example(example):
            indices = [0] * clip_length
        else:
            indices = clip_frame_indices(int(example["num_frames"]), clip_length, starts, stratum=(k, count))
        clips.append(make_clip(example, indices, processor, augment, generator, pseudo_clip=is_image_example(example)))
    return clips


LABEL_KEYS = ("class_labels", "mask_labels", "boxes", "valid", "track_ids")
CAPTION_KEYS = ("caption_ids", "caption_attention_mask")


def collate_clips(items: list) -> dict:
    """Stack clips into ``pixel_values_videos (B, T, 3, H, W)`` (zero-padded to the largest) and their targets packed
    into a few flat tensors, ``packed_labels`` (objects of all clips concatenated; ``counts (B,)`` objects per clip,
    ``caption_lengths (B,)`` token columns per clip; masks ``uint8``). Few tensors cross from a data-loader worker to
    the training process and to the device (each tensor costs a shared-memory segment and a copy);
    :func:`unpack_labels` gives the per-clip target dicts the model takes.

    An item may be a list of clips of one video (video-level captioning, :class:`DVOCClipDataset` with
    ``clips_per_item``): they are laid out one video after the other and ``video_index (B,)`` says which video of
    the batch each clip comes from."""
    video_index = None
    if items and isinstance(items[0], (list, tuple)):
        video_index = torch.tensor([v for v, group in enumerate(items) for _ in group], dtype=torch.long)
        items = [clip for group in items for clip in group]
    height = max(item["pixel_values"].shape[-2] for item in items)
    width = max(item["pixel_values"].shape[-1] for item in items)
    num_frames = items[0]["pixel_values"].shape[0]
    pixel = torch.zeros(len(items), num_frames, 3, height, width)
    targets = []
    for i, item in enumerate(items):
        h, w = item["pixel_values"].shape[-2:]
        pixel[i, :, :, :h, :w] = item["pixel_values"]
        target = dict(item["labels"])
        if (h, w) != (height, width):
            masks = target["mask_labels"].new_zeros(*target["mask_labels"].shape[:2], height, width)
            masks[..., :h, :w] = target["mask_labels"]
            target["mask_labels"] = masks
            target["boxes"] = target["boxes"] * torch.tensor([w / width, h / height, w / width, h / height])
        targets.append(target)
    packed = {"counts": torch.tensor([len(t["class_labels"]) for t in targets], dtype=torch.long)}
    if video_index is not None:
        packed["video_index"] = video_index
    for key in LABEL_KEYS:
        packed[key] = torch.cat([t[key] for t in targets])
    packed["mask_labels"] = packed["mask_labels"].to(torch.uint8)
    if all(key in t for t in targets for key in CAPTION_KEYS):
        lengths = [t["caption_ids"].shape[1] for t in targets]
        packed["caption_lengths"] = torch.tensor(lengths, dtype=torch.long)
        for key in CAPTION_KEYS:
            packed[key] = torch.cat([torch.nn.functional.pad(t[key], (0, max(lengths) - t[key].shape[1]))
                                     for t in targets])
    return {"pixel_values_videos": pixel, "packed_labels": packed, "video_ids": [item["video_id"] for item in items]}


def unpack_labels(packed: dict, device=None) -> list[dict]:
    """The per-clip target dicts of :func:`collate_clips`'s ``packed_labels`` on ``device`` (one copy per packed
    tensor; masks as ``float``): ``class_labels (N,)``, ``mask_labels (N, T, H, W)``, ``boxes (N, T, 4)``,
    ``valid (N, T)``, ``track_ids (N,)`` and, with captions, ``caption_ids`` / ``caption_attention_mask (N, L)``."""
    non_blocking = device is not None and torch.device(device).type == "cuda"
    moved = {k: v.to(device, non_blocking=non_blocking) if device is not None else v for k, v in packed.items()}
    moved["mask_labels"] = moved["mask_labels"].float()
    counts = packed["counts"].tolist()
    lengths = packed["caption_lengths"].tolist() if "caption_lengths" in packed else None
    split = {key: moved[key].split(counts) for key in LABEL_KEYS + (CAPTION_KEYS if lengths else ())}
    clips = []
    for i in range(len(counts)):
        target = {key: split[key][i] for key in LABEL_KEYS}
        if "video_index" in packed:
            target["video_index"] = int(packed["video_index"][i])
        if lengths:
            target.update({key: split[key][i][:, : lengths[i]] for key in CAPTION_KEYS})
        clips.append(target)
    return clips


# ---------------------------------------------------------------------------------------------- datasets, mixing
@dataclass
class ClipSource:
    """One dataset of a training mixture: a map-style ``datasets.Dataset`` (or a streaming one), its sampling
    ``ratio`` and a ``name`` for messages."""

    data: object
    ratio: float = 1.0
    name: str = "dataset"


def _clip_seed(seed: int, epoch: int, position: int) -> int:
    return int(np.random.default_rng([seed, epoch, position]).integers(0, 2**62))


class MixtureSampler(torch.utils.data.Sampler):
    """Keys ``(source, example, clip_seed)`` of one epoch of clips, ``clips_per_video`` per drawn example.

    One source: every example ``clips_per_video`` times, in a random order per epoch (or in order without
    ``shuffle``). Several: ``epoch_size`` clips (default: all examples of all sources, ``clips_per_video`` each), each
    from source ``s`` with probability ``ratio_s / sum(ratios)``, the examples of a source cycling through a random
    permutation. Deterministic for ``(seed, epoch)``.

    ``num_epochs``: iterate that many epochs in a row from ``epoch`` (one DataLoader iterator for a whole training
    run: the workers' prefetch queue never drains at an epoch end)."""

    def __init__(self, sizes: list[int], ratios: list[float], clips_per_video: int = 1, seed: int = 0,
                 shuffle: bool = True, epoch_size: int | None = None):
        if not sizes or len(sizes) != len(ratios):
            raise ValueError("`sizes` and `ratios` must be non-empty lists of the same length")
        if any(size < 1 for size in sizes):
            raise ValueError(f"every dataset of the mixture needs at least one example, got sizes {sizes}")
        if any(not math.isfinite(r) or r < 0 for r in ratios) or sum(ratios) <= 0:
            raise ValueError(f"sampling ratios must be non-negative numbers with a positive sum, got {ratios}")
        self.sizes, self.ratios = list(sizes), [float(r) for r in ratios]
        self.clips_per_video, self.seed, self.shuffle = clips_per_video, seed, shuffle
        self.epoch_size = epoch_size or sum(sizes) * clips_per_video
        self.epoch = 0
        self.num_epochs = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_epochs * self.clips_per_epoch

    @property
    def clips_per_epoch(self) -> int:
        return self.epoch_size if len(self.sizes) > 1 else self.sizes[0] * self.clips_per_video

    def __iter__(self):
        for epoch in range(self.epoch, self.epoch + self.num_epochs):
            yield from self._epoch_keys(epoch)

    def _epoch_keys(self, epoch: int):
        g = torch.Generator().manual_seed(int(np.random.default_rng([self.seed, epoch]).integers(0, 2**62)))
        if len(self.sizes) == 1:
            order = torch.randperm(self.sizes[0], generator=g).tolist() if self.shuffle else range(self.sizes[0])
            keys = [(0, example) for example in order for _ in range(self.clips_per_video)]
        else:
            draws = torch.multinomial(torch.tensor(self.ratios), self.epoch_size // self.clips_per_video + 1,
                                      replacement=True, generator=g).tolist()
            permutations = [torch.randperm(size, generator=g).tolist() for size in self.sizes]
            cursors = [0] * len(self.sizes)
            keys = []
            for source in draws:
                example = permutations[source][cursors[source] % self.sizes[source]]
                cursors[source] += 1
                keys.extend([(source, example)] * self.clips_per_video)
            keys = keys[: self.epoch_size]
        for position, (source, example) in enumerate(keys):
            yield source, example, _clip_seed(self.seed, epoch, position)


class DVOCClipDataset(torch.utils.data.Dataset):
    """Map-style clips of one or several map-style ``datasets``: indexed by the keys of a :class:`MixtureSampler`
    (``(source, example, clip_seed)``); a clip decodes only its frames. With ``augment`` (training) the clip's start
    and augmentation come from ``clip_seed``; images become pseudo-clips.

    ``clips_per_item`` (video-level captioning): an item is that many clips of one video in time order, one drawn
    from each of as many equal parts of the video (one augmentation for all of them, as for one video)."""

    def __init__(self, sources: list[ClipSource], processor, clip_length: int, augment: AugmentConfig | None = None,
                 min_objects: int = 0, clips_per_item: int | None = None):
        if clip_length < 1:
            raise ValueError(f"`clip_length` must be >= 1, got {clip_length}")
        self.sources = sources
        self.processor = processor
        self.clip_length = clip_length
        self.augment = augment
        self.min_objects = min_objects
        self.clips_per_item = clips_per_item

    def __len__(self) -> int:
        return sum(len(source.data) for source in self.sources)

    def __getitem__(self, key) -> dict:
        source, example_index, clip_seed = key
        example = self.sources[source].data[int(example_index)]
        if self.clips_per_item is not None:
            return video_clips(example, self.processor, self.clip_length, self.clips_per_item, int(clip_seed),
                               self.augment)
        generator = torch.Generator().manual_seed(int(clip_seed))
        pseudo = is_image_example(example)
        indices = [0] * self.clip_length if pseudo else clip_frame_indices(int(example["num_frames"]),
                                                                           self.clip_length, generator)
        return make_clip(example, indices, self.processor, self.augment, generator, pseudo_clip=pseudo)


class DVOCStreamingClips(torch.utils.data.IterableDataset):
    """Clips of a streaming ``datasets.IterableDataset`` (already mixed with ``interleave_datasets`` and split over
    processes with ``split_dataset_by_node``): ``clips_per_video`` clips per example, randomness from ``(seed, epoch,
    position)``; ``skip_examples`` examples are passed over without decoding (resume). ``clips_per_item``: items are
    lists of that many clips of one video in time order (see :func:`video_clips`), one item per example."""

    def __init__(self, stream, processor, clip_length: int, clips_per_video: int = 1,
                 augment: AugmentConfig | None = None, seed: int = 0, skip_examples: int = 0,
                 clips_per_item: int | None = None):
        self.stream, self.processor = stream, processor
        self.clip_length, self.clips_per_video = clip_length, clips_per_video
        self.augment, self.seed, self.skip_examples = augment, seed, skip_examples
        self.clips_per_item = clips_per_item
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.stream, "set_epoch"):
            self.stream.set_epoch(epoch)

    def __iter__(self):
        for position, example in enumerate(self.stream):
            if position < self.skip_examples:
                continue
            if self.clips_per_item is not None:
                yield video_clips(example, self.processor, self.clip_length, self.clips_per_item,
                                  _clip_seed(self.seed, self.epoch, position), self.augment)
                continue
            for k in range(self.clips_per_video):
                generator = torch.Generator().manual_seed(_clip_seed(self.seed, self.epoch, position * 1000 + k))
                pseudo = is_image_example(example)
                indices = [0] * self.clip_length if pseudo else clip_frame_indices(
                    int(example["num_frames"]), self.clip_length, generator)
                yield make_clip(example, indices, self.processor, self.augment, generator, pseudo_clip=pseudo)
        self.skip_examples = 0


__all__ = [
    "ClipSource",
    "DVOCClipDataset",
    "DVOCStreamingClips",
    "MixtureSampler",
    "clip_frame_indices",
    "collate_clips",
    "unpack_labels",
    "decode_example_frames",
    "example_to_clips",
    "make_clip",
    "video_clips",
    "read_frames",
    "read_video_frames",
]
