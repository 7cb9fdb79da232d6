"""Examples -> clip batches with per-clip targets, for training (torch DataLoader, map-style or streaming
`datasets`).

A clip is ``clip_length`` consecutive frames of a video, processed like at inference (resize, normalise, pad); its
targets are the tracks visible in it: ``class_labels (N,)``, ``mask_labels (N, T, H, W)`` at the padded input
size, ``boxes (N, T, 4)`` normalised (cx, cy, w, h) of the padded input, ``valid (N, T)`` and the tokenised
captions ``caption_ids`` / ``caption_attention_mask``.
"""

from __future__ import annotations

import io

import numpy as np
import torch


def decode_example_frames(example: dict) -> np.ndarray:
    """``uint8 (T, H, W, 3)`` frames of an example whose ``video`` is encoded bytes/path or a list of images."""
    from ..processing.video_processing_captionformer import VideoFrames

    video = example["video"]
    if isinstance(video, dict):
        source = video.get("bytes") or video.get("path")
        if source is None:
            raise ValueError(f"video {example.get('video_id')!r}: `video` has neither bytes nor path")
        frames = [frame for _, frame in VideoFrames(source)]
    elif isinstance(video, (list, tuple)):
        from PIL import Image

        frames = []
        for item in video:
            if isinstance(item, dict):
                item = Image.open(io.BytesIO(item["bytes"])) if item.get("bytes") else Image.open(item["path"])
            frames.append(np.asarray(item.convert("RGB")))
    else:
        frames = [frame for _, frame in VideoFrames(video)]
    return np.stack(frames)


def clip_targets(example: dict, frame_indices: list[int], processor, padded_size, content_size) -> dict:
    """Targets of the tracks visible in the clip made of ``frame_indices``."""
    from ..processing.trajectory_captionformer import rle_decode

    height, width = int(example["height"]), int(example["width"])
    content_h, content_w = content_size
    padded_h, padded_w = padded_size
    position = {f: t for t, f in enumerate(frame_indices)}
    labels, masks, boxes, valid, captions, track_ids = [], [], [], [], [], []
    num_frames = len(frame_indices)
    for track in example["tracks"]:
        entries = [(position[f["frame_index"]], f) for f in track["frames"] if f["frame_index"] in position]
        if not entries:
            continue
        track_masks = torch.zeros(num_frames, padded_h, padded_w)
        track_boxes = torch.zeros(num_frames, 4)
        track_valid = torch.zeros(num_frames, dtype=torch.bool)
        for t, frame in entries:
            x, y, w, h = frame["box"]
            sx, sy = content_w / width, content_h / height
            track_boxes[t] = torch.tensor(
                [(x + w / 2) * sx / padded_w, (y + h / 2) * sy / padded_h, w * sx / padded_w, h * sy / padded_h]
            )
            track_valid[t] = True
            if frame.get("mask_rle"):
                mask = rle_decode(frame["mask_rle"], height, width)
                mask = torch.from_numpy(mask)[None, None].float()
                mask = torch.nn.functional.interpolate(mask, size=(content_h, content_w), mode="nearest")[0, 0]
            else:  # boxes only: the box as a mask
                mask = torch.zeros(content_h, content_w)
                x0, y0 = int(round(x * sx)), int(round(y * sy))
                mask[y0 : int(round((y + h) * sy)), x0 : int(round((x + w) * sx))] = 1
            track_masks[t, :content_h, :content_w] = mask
        labels.append(int(track.get("category_id") or 0))
        track_ids.append(int(track["track_id"]))
        masks.append(track_masks)
        boxes.append(track_boxes)
        valid.append(track_valid)
        captions.append(track.get("caption") or "")
    targets = {
        "class_labels": torch.tensor(labels, dtype=torch.long),
        "mask_labels": torch.stack(masks) if masks else torch.zeros(0, num_frames, padded_h, padded_w),
        "boxes": torch.stack(boxes) if boxes else torch.zeros(0, num_frames, 4),
        "valid": torch.stack(valid) if valid else torch.zeros(0, num_frames, dtype=torch.bool),
        "track_ids": torch.tensor(track_ids, dtype=torch.long),
    }
    if processor is not None and getattr(processor, "tokenizer", None) is not None:
        tokens = processor.tokenize_captions(captions) if captions else {
            "caption_ids": torch.zeros(0, 1, dtype=torch.long),
            "caption_attention_mask": torch.zeros(0, 1, dtype=torch.long),
        }
        targets.update(tokens)
    return targets


def example_to_clips(example: dict, processor, clip_length: int, clips_per_video: int = 1,
                     rng: np.random.Generator | None = None, min_objects: int = 0) -> list[dict]:
    """``clips_per_video`` clips of an example (random start frames with ``rng``, else evenly spaced), each
    ``{"pixel_values": (T, 3, H, W), "labels": targets, "video_id", "frame_indices"}``."""
    frames = decode_example_frames(example)
    num_frames = len(frames)
    video_processor = processor.video_processor
    height, width = frames.shape[1:3]
    content = video_processor.content_size(height, width)
    padded = video_processor.padded_size(*content)
    last_start = max(0, num_frames - clip_length)
    if rng is not None:
        starts = rng.integers(0, last_start + 1, size=clips_per_video).tolist()
    else:
        starts = np.linspace(0, last_start, clips_per_video).round().astype(int).tolist()
    clips = []
    for start in starts:
        indices = list(range(start, min(start + clip_length, num_frames)))
        while len(indices) < clip_length:  # short video: repeat the last frame
            indices.append(indices[-1])
        pixel = torch.from_numpy(np.ascontiguousarray(frames[indices])).permute(0, 3, 1, 2)
        pixel_values = video_processor.transform_frames(pixel, padded)
        targets = clip_targets(example, indices, processor, padded, content)
        if len(targets["class_labels"]) < min_objects:
            continue
        clips.append({"pixel_values": pixel_values, "labels": targets, "video_id": example["video_id"], "frame_indices": indices})
    return clips


def collate_clips(items: list[dict]) -> dict:
    """Stack clips into ``pixel_values_videos (B, T, 3, H, W)`` (zero-padded to the largest) and a list of targets
    (masks padded the same way)."""
    height = max(item["pixel_values"].shape[-2] for item in items)
    width = max(item["pixel_values"].shape[-1] for item in items)
    num_frames = items[0]["pixel_values"].shape[0]
    pixel = torch.zeros(len(items), num_frames, 3, height, width)
    labels = []
    for i, item in enumerate(items):
        h, w = item["pixel_values"].shape[-2:]
        pixel[i, :, :, :h, :w] = item["pixel_values"]
        target = dict(item["labels"])
        if (h, w) != (height, width):
            masks = torch.zeros(*target["mask_labels"].shape[:2], height, width)
            masks[..., :h, :w] = target["mask_labels"]
            target["mask_labels"] = masks
            target["boxes"] = target["boxes"] * torch.tensor([w / width, h / height, w / width, h / height])
        labels.append(target)
    return {"pixel_values_videos": pixel, "labels": labels, "video_ids": [item["video_id"] for item in items]}


class DVOCClipDataset(torch.utils.data.IterableDataset):
    """Clips of a `datasets` dataset (map-style or streaming), for a torch ``DataLoader`` with
    :func:`collate_clips`. With ``shuffle``, the example order (per epoch) and clip starts are random from
    ``seed``; each of the ``world_size`` processes (and each DataLoader worker) takes its own share of examples."""

    def __init__(self, dataset, processor, clip_length: int, clips_per_video: int = 1, shuffle: bool = True,
                 seed: int = 0, min_objects: int = 0, rank: int = 0, world_size: int = 1):
        if clip_length < 1:
            raise ValueError(f"`clip_length` must be >= 1, got {clip_length}")
        self.dataset = dataset
        self.processor = processor
        self.clip_length = clip_length
        self.clips_per_video = clips_per_video
        self.shuffle = shuffle
        self.seed = seed
        self.min_objects = min_objects
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        # shard over processes (data parallelism) and DataLoader workers
        shard, num_shards = self.rank * num_workers + worker_id, self.world_size * num_workers
        rng = np.random.default_rng([self.seed, self.epoch, shard]) if self.shuffle else None
        dataset = self.dataset
        if hasattr(dataset, "__len__") and hasattr(dataset, "select"):
            order = np.arange(len(dataset))
            if self.shuffle:
                order = np.random.default_rng([self.seed, self.epoch]).permutation(len(dataset))
            examples = (dataset[int(i)] for i in order[shard::num_shards])
        else:  # streaming
            if self.shuffle and hasattr(dataset, "shuffle"):
                dataset = dataset.shuffle(seed=self.seed + self.epoch, buffer_size=256)
            examples = (ex for i, ex in enumerate(dataset) if i % num_shards == shard)
        for example in examples:
            yield from example_to_clips(example, self.processor, self.clip_length, self.clips_per_video, rng,
                                        self.min_objects)
