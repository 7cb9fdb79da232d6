"""Dataset-scale prediction: a whole split through ``predict_video``, sharded over processes, resumable.

    captionformer predict --model M --dataset DIR_or_Hub_id --split validation --out preds.json
    accelerate launch --num_processes 8 -m captionformer_hf.cli predict --model M --dataset ... --out preds.json

Each process takes every ``num_processes``-th video. Every finished video is written at once, atomically, to
``<out>.parts/<index>.json``; a rerun (any number of processes) skips the videos already there, so a killed run
loses at most the videos in flight. When all are done, the first process writes ``<out>`` (the videos in dataset
order, the trajectory format of ``docs/format.md``) and ``<out stem>.results.json`` (the released code's per-track
format), both atomically, then removes the parts. The result does not depend on the number of processes.
"""

from __future__ import annotations

import json
import logging
import os

from .utils import atomic_write_json

logger = logging.getLogger(__name__)

REQUIRED_FEATURES = ("video", "video_id", "num_frames", "height", "width")


def predict_example(model, processor, example: dict, **kwargs) -> dict:
    """Run the model on one dataset example (``captionformer_hf.predict_video``, as the pipeline): the example's
    trajectories predicted on its original frames. ``kwargs`` go to ``predict_video``."""
    from .data.loader import decode_example_frames
    from .processing import predict_video

    frames = decode_example_frames(example)
    return predict_video(model, processor, frames, video_id=example["video_id"], video_fps=example.get("fps"), **kwargs)


def dataset_references(dataset: str, split: str) -> list[dict]:
    """The ground truth of a dataset split (a local parquet folder or a Hub dataset id) as reference videos of the
    trajectory format (``docs/format.md``): what ``captionformer evaluate`` compares predictions with. The videos are
    not decoded."""
    from .data.schema import reference_video

    data = load_split(dataset, split)
    if hasattr(data, "remove_columns") and "video" in getattr(data, "column_names", ()):
        data = data.remove_columns("video")  # only the annotations: the encoded videos are not read
    return [reference_video(example) for example in data]


def load_split(dataset: str, split: str, streaming: bool = False):
    """A split of a local parquet folder (``captionformer data``) or of a Hub dataset."""
    import datasets

    from .data.schema import load_parquet_dataset

    if os.path.isdir(dataset):
        data = load_parquet_dataset(dataset, streaming=streaming)
    elif os.path.exists(dataset):
        raise ValueError(f"`dataset` {dataset!r} is a file; give a dataset folder or a Hub dataset id")
    else:
        data = datasets.load_dataset(dataset, streaming=streaming)
    if split not in data:
        raise ValueError(f"`split`: the dataset has no split {split!r} (it has {sorted(data)})")
    part = data[split]
    features = getattr(part, "features", None) or {}
    missing = [name for name in REQUIRED_FEATURES if features and name not in features]
    if missing:
        raise ValueError(f"`dataset`: split {split!r} lacks the features {missing} that prediction needs")
    return part


def output_paths(out: str) -> tuple[str, str, str]:
    """``(trajectories JSON, official per-track results JSON, parts folder)`` of an output path."""
    out = os.path.abspath(out)
    stem = out[: -len(".json")] if out.endswith(".json") else out
    return out, stem + ".results.json", out + ".parts"


def check_output(out: str) -> None:
    """Fail before any work when the outputs cannot be written (nothing is created)."""
    from .utils import check_writable_file

    out, official, parts = output_paths(out)
    for path in (out, official):
        check_writable_file(path, "out")
    if os.path.exists(parts) and not os.path.isdir(parts):
        raise ValueError(f"`out`: {parts} (the folder of finished videos) exists and is not a folder")


def _process_state():
    try:
        from accelerate import PartialState
    except ImportError:  # single process
        return None
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    return PartialState(cpu=world > 1 and not torch.cuda.is_available())


def predict_dataset(model, processor, dataset, out: str, *, max_videos: int | None = None, progress: bool = True,
                    keep_parts: bool = False, settings: dict | None = None, **predict_kwargs) -> list[dict] | None:
    """Predict every video of ``dataset`` (a ``datasets`` split, map-style or streaming) into ``out``.

    ``predict_kwargs`` go to ``predict_video`` (``threshold``, ``clip_batch_size``, ``return_masks``,
    ``num_beams``...). A run is resumable: finished videos wait in ``<out>.parts``, with the run's ``settings``
    (default: ``predict_kwargs`` and ``max_videos``); a run with other settings is refused rather than mixed in, and a
    second run writing the same ``out`` at the same time is refused (a lock file). Returns the predictions on the
    first process (``None`` on the others)."""
    from .utils import OutputLock

    if settings is None:
        settings = {"predict": predict_kwargs, "max_videos": max_videos}

    out, official, parts = output_paths(out)
    check_output(out)
    state = _process_state()
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    # one writer of an output at a time (a second `predict --out` to the same file is refused), and a resumed run
    # continues only with the settings of the partial results
    lock = OutputLock(out, "out")
    problem = None
    if rank == 0:
        try:
            lock.acquire()
            os.makedirs(parts, exist_ok=True)
            _check_settings(parts, settings)
        except ValueError as error:
            lock.release()
            problem = str(error)
    if world > 1:
        from accelerate.utils import broadcast_object_list

        problem = broadcast_object_list([problem])[0]
    if problem is not None:
        raise ValueError(problem)
    try:
        return _predict_parts(model, processor, dataset, out, official, parts, state, rank, world, max_videos,
                              progress, keep_parts, predict_kwargs)
    finally:
        lock.release()


def _check_settings(parts: str, settings: dict) -> None:
    """Record the settings of a run in its folder of finished videos; refuse to continue one made with others."""
    path = os.path.join(parts, "settings.json")
    settings = json.loads(json.dumps(settings, sort_keys=True, default=str))
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                previous = json.load(f)
        except (OSError, ValueError):
            previous = None
        if previous != settings:
            changed = sorted(k for k in set(settings) | set(previous or {})
                             if (previous or {}).get(k) != settings.get(k))
            raise ValueError(f"`out`: the partial results in {parts} were made with other settings ({', '.join(changed)}"
                             "); resume with the same settings, or remove that folder to start again")
    elif any(name.endswith(".json") for name in os.listdir(parts)):
        raise ValueError(f"`out`: {parts} holds partial results whose settings are unknown; remove that folder to "
                         "start again")
    else:
        atomic_write_json(path, settings)


def _predict_parts(model, processor, dataset, out, official, parts, state, rank, world, max_videos, progress,
                   keep_parts, predict_kwargs):
    if state is not None and world > 1:
        model = model.to(state.device)
    from transformers.utils.logging import tqdm  # honours disable_progress_bar / HF_HUB_DISABLE_PROGRESS_BARS

    sized = hasattr(dataset, "__len__")
    total = len(dataset) if sized else None
    if max_videos is not None:
        total = max_videos if total is None else min(total, max_videos)

    def examples():
        if sized:
            for index in range(rank, total, world):
                yield index, lambda index=index: dataset[index]
            return
        for index, example in enumerate(dataset):
            if total is not None and index >= total:
                return
            if index % world == rank:
                yield index, lambda example=example: example

    done = skipped = 0
    bar = tqdm(total=None if total is None else len(range(rank, total, world)), desc=f"predict (process {rank})",
               disable=not progress)
    for index, get in examples():
        path = os.path.join(parts, f"{index:08d}.json")
        if os.path.exists(path):
            skipped += 1
        else:
            prediction = predict_example(model, processor, get(), **predict_kwargs)
            atomic_write_json(path, prediction, indent=None)
            done += 1
        bar.update(1)
    bar.close()
    logger.info("process %d: %d videos predicted, %d already done", rank, done, skipped)
    if state is not None:
        state.wait_for_everyone()
    if rank != 0:
        return None
    names = sorted(name for name in os.listdir(parts) if name.endswith(".json") and name[:-5].isdigit()
                   and (total is None or int(name[:-5]) < total))
    videos = []
    for name in names:
        with open(os.path.join(parts, name), encoding="utf-8") as f:
            videos.append(json.load(f))
    from .metrics.formats import videos_to_track_results

    atomic_write_json(out, videos, indent=None)
    atomic_write_json(official, videos_to_track_results(videos), indent=None)
    if not keep_parts:
        for name in os.listdir(parts):
            os.unlink(os.path.join(parts, name))
        os.rmdir(parts)
    logger.info("wrote %d videos to %s and %s", len(videos), out, official)
    return videos


__all__ = ["check_output", "load_split", "output_paths", "predict_dataset"]
