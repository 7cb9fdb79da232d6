"""Training with accelerate: two-stage or end-to-end, several datasets, resumable, data-parallel, with CHOTA evaluation.

    captionformer train --config recipe.json [--flag value ...]
    accelerate launch [--mixed_precision bf16] [--num_processes 8] -m captionformer_hf.cli train --config recipe.json

A plain accelerate loop. Accelerate's own settings (mixed precision, gradient accumulation: from `accelerate launch`,
its config file or the environment) apply unless the recipe sets them. The learning-rate schedule counts optimizer
steps whatever the number of processes. Data: map-style sources are mixed by a sampler whose keys carry each clip's
randomness (a resumed run skips the consumed batches without loading them); streaming sources are mixed with
``interleave_datasets`` and split over processes with ``split_dataset_by_node``. Checkpoints
(``output_dir/checkpoints/step-N``: the accelerate state in ``state/``, and model + processor saved with
``save_pretrained``, so ``from_pretrained`` loads any of them) are written to a temporary folder and renamed; resume
takes the newest checkpoint that loads. The final model goes to ``output_dir/final`` (atomic, self-contained for the
Hub: see :mod:`captionformer_hf.hub`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

STAGES = ("segmentation", "captioning", "end_to_end", "video")
DATASET_KEYS = {"path", "split", "ratio", "streaming", "name"}


def _help(text: str, default=None, factory=None):
    """A dataclass field whose help text is shown by ``captionformer train --help``."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class TrainingConfig:
    """Everything a run needs; loadable from JSON (``--config``) and overridable by flags (each field's help is the
    flag's help)."""

    output_dir: str = _help("folder of the run: checkpoints/, final/, logs", "runs/captionformer")
    # data
    dataset: str = _help("one dataset: 'synthetic' (generated in memory), a folder of parquet shards (captionformer "
                         "data convert / synthetic) or a Hub dataset id", "synthetic")
    datasets: list = _help("a mixture instead of `dataset`, as JSON: [{\"path\": ..., \"split\": \"train\", "
                           "\"ratio\": 0.5, \"streaming\": false, \"name\": ...}, ...]", factory=list)
    synthetic_videos: int = _help("dataset 'synthetic': number of videos", 200)
    synthetic_seed: int = _help("dataset 'synthetic': seed of the generator", 0)
    synthetic_frames: int = _help("dataset 'synthetic': frames per video", 24)
    synthetic_height: int = _help("dataset 'synthetic': frame height (objects scale with the frame)", 96)
    synthetic_width: int = _help("dataset 'synthetic': frame width", 128)
    train_split: str = _help("split trained on", "train")
    eval_split: str = _help("split of the first dataset evaluated with `eval_every`", "validation")
    streaming: bool = _help("read the datasets as streams (datasets' streaming mode)", False)
    clip_length: int | None = _help("frames per clip (default: the model's)", None)
    clips_per_video: int = _help("clips drawn from each video per epoch; stage 'video': the clips of each video in a "
                                 "batch, in time order (its t_agg)", 2)
    epoch_size: int | None = _help("clips per epoch of a mixture (default: every example, clips_per_video each)", None)
    augment: dict | None = _help("augmentation, as JSON of captionformer_hf.data.augment.AugmentConfig fields "
                                 "(default: none)", None)
    num_workers: int | None = _help("data-loader workers per process (default: fit the machine)", None)
    prefetch_factor: int = _help("batches each worker prepares ahead", 4)
    # model
    model: str = _help("'toy' (captionformer_hf.toy.toy_config), a config JSON, a pretrained folder / Hub id, or "
                       "'components' (`segmenter` + `blip2`)", "toy")
    model_overrides: dict = _help("config fields to override, as JSON (e.g. {\"clip_length\": 2})", factory=dict)
    segmenter: str | None = _help("model 'components': the Mask2Former checkpoint (Hub id or folder)", None)
    blip2: str | None = _help("model 'components': the BLIP-2 checkpoint (Hub id or folder)", None)
    processor: str | None = _help("processor folder / Hub id (default: the model's, or the toy processor)", None)
    input_size: int = _help("shortest side of the model input, pixels (processors made here)", 96)
    # what to train
    stage: str = _help("'segmentation', 'captioning' (segmenter frozen), 'end_to_end' or 'video' (video-level "
                       "captions, segmenter frozen)", "end_to_end")
    learning_rate: float = _help("AdamW learning rate", 1e-3)
    backbone_lr_multiplier: float = _help("learning rate of the backbone, relative", 1.0)
    weight_decay: float = _help("AdamW weight decay (not on biases and norms)", 0.05)
    scheduler: str = _help("transformers scheduler name (cosine, linear, constant...)", "cosine")
    warmup_steps: int = _help("warm-up optimizer steps", 0)
    max_steps: int = _help("optimizer steps of the run", 100)
    batch_size: int = _help("clips per step and process; stage 'video': videos per step and process", 4)
    gradient_accumulation_steps: int | None = _help("batches per optimizer step (default: accelerate's)", None)
    mixed_precision: str | None = _help("'no', 'bf16' or 'fp16' (default: accelerate's)", None)
    gradient_checkpointing: bool = _help("recompute activations in the backward pass (less memory)", False)
    max_grad_norm: float = _help("gradient clipping norm (0: none)", 1.0)
    seed: int = _help("seed of the model initialisation and the data order", 0)
    # bookkeeping
    log_every: int = _help("steps between logged loss averages", 10)
    eval_every: int = _help("steps between CHOTA evaluations on `eval_split` (0: none)", 0)
    eval_videos: int = _help("videos of each evaluation", 8)
    save_every: int = _help("steps between checkpoints (a run resumes from the newest)", 50)
    keep_checkpoints: int = _help("checkpoints kept", 2)
    report_to: str | None = _help("experiment tracker: tensorboard, wandb, ... (default: none)", None)
    push_to_hub: str | None = _help("Hub repository the final model is uploaded to", None)
    profile: bool = _help("time each step's phases (data wait, forward, matcher, backward, optimizer)", False)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"`stage` must be one of {STAGES}, got {self.stage!r}")
        from ..processing.trajectory_captionformer import check_positive_ints

        check_positive_ints(**{name: getattr(self, name) for name in (
            "max_steps", "batch_size", "clips_per_video", "log_every", "save_every", "keep_checkpoints", "eval_videos",
            "input_size", "synthetic_videos", "prefetch_factor", "synthetic_height", "synthetic_width",
            "synthetic_frames")})
        check_positive_ints(True, gradient_accumulation_steps=self.gradient_accumulation_steps,
                            epoch_size=self.epoch_size)
        if self.num_workers is not None and (not isinstance(self.num_workers, int) or self.num_workers < 0):
            raise ValueError(f"`num_workers` must be an integer >= 0, got {self.num_workers!r}")
        if self.mixed_precision not in (None, "no", "bf16", "fp16"):
            raise ValueError(f"`mixed_precision` must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate}")
        if self.backbone_lr_multiplier < 0:
            raise ValueError(f"`backbone_lr_multiplier` must be >= 0, got {self.backbone_lr_multiplier}")
        if not isinstance(self.datasets, list):
            raise ValueError(f"`datasets` must be a list of dataset specs, got {type(self.datasets).__name__}")
        for i, spec in enumerate(self.datasets):
            if not isinstance(spec, dict) or "path" not in spec:
                raise ValueError(f"`datasets[{i}]` must be a dict with at least `path`, got {spec!r}")
            unknown = set(spec) - DATASET_KEYS
            if unknown:
                raise ValueError(f"`datasets[{i}]`: unknown keys {sorted(unknown)} (known: {sorted(DATASET_KEYS)})")
            ratio = spec.get("ratio", 1.0)
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio < 0:
                raise ValueError(f"`datasets[{i}].ratio` must be a number >= 0, got {ratio!r}")
        if self.datasets and sum(spec.get("ratio", 1.0) for spec in self.datasets) <= 0:
            raise ValueError("the sampling ratios of `datasets` must sum to a positive number")
        if self.augment is not None:
            from ..data.augment import AugmentConfig

            known = {f.name for f in dataclasses.fields(AugmentConfig)}
            unknown = set(self.augment) - known
            if unknown:
                raise ValueError(f"`augment`: unknown keys {sorted(unknown)} (known: {sorted(known)})")
            AugmentConfig(**self.augment)  # validates the values

    @classmethod
    def from_file(cls, path: str, **overrides) -> TrainingConfig:
        if not os.path.exists(path):
            raise ValueError(f"training config not found: {path}")
        with open(path, encoding="utf-8") as f:
            try:
                values = json.load(f)
            except ValueError as error:
                raise ValueError(f"{path} is not valid JSON ({error})") from error
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a training recipe is a JSON object of TrainingConfig fields")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"{path}: unknown training config keys {sorted(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def dataset_specs(self) -> list[dict]:
        if self.datasets:
            return [{"split": self.train_split, "ratio": 1.0, "streaming": self.streaming, **spec} for spec in self.datasets]
        return [{"path": self.dataset, "split": self.train_split, "ratio": 1.0, "streaming": self.streaming}]


# ------------------------------------------------------------------------------------------------------ setup
def build_model_and_processor(config: TrainingConfig):
    from ..modeling import CaptionFormerConfig, CaptionFormerForDenseVideoObjectCaptioning
    from ..toy import toy_config, toy_processor

    overrides = dict(config.model_overrides)
    if config.clip_length is not None:
        overrides["clip_length"] = config.clip_length
    processor = None
    if config.model == "toy":
        model = CaptionFormerForDenseVideoObjectCaptioning(toy_config(**overrides))
    elif config.model == "components":
        if not (config.segmenter and config.blip2):
            raise ValueError("`model='components'` needs `segmenter` and `blip2`")
        model = CaptionFormerForDenseVideoObjectCaptioning.from_pretrained_components(
            segmenter=config.segmenter, blip2=config.blip2, **overrides
        )
        processor = config.processor or config.blip2
    elif config.model.endswith(".json"):
        with open(config.model, encoding="utf-8") as f:
            model_config = CaptionFormerConfig(**{**json.load(f), **overrides})
        model = CaptionFormerForDenseVideoObjectCaptioning(model_config)
    else:
        clip_length = overrides.pop("clip_length", None)
        # overrides may add layers (a new aggregation): their weights start from the initialisation
        model = CaptionFormerForDenseVideoObjectCaptioning.from_pretrained(config.model, strict_weights=not overrides,
                                                                           **overrides)
        if clip_length is not None:  # e.g. continue a model of 2-frame clips with 5-frame clips
            model.set_clip_length(clip_length)
        processor = config.model
    if config.processor is not None:
        processor = config.processor
    if isinstance(processor, str):
        processor = _load_processor(processor, model, config)
    elif processor is None:
        processor = toy_processor(clip_length=model.config.clip_length, size=config.input_size)
    processor.video_processor.clip_length = model.config.clip_length
    return model, processor


def _load_processor(name: str, model, config: TrainingConfig):
    """A CaptionFormer processor from a folder / Hub id that has one, else one made from the tokenizer of ``name``
    (e.g. a BLIP-2 checkpoint) with the segmenter's normalisation and ``input_size``."""
    from transformers import AutoProcessor, AutoTokenizer

    from ..processing import CaptionFormerProcessor, CaptionFormerVideoProcessor

    try:
        processor = AutoProcessor.from_pretrained(name)
    except (OSError, ValueError, KeyError):
        processor = None
    if isinstance(processor, CaptionFormerProcessor):
        return processor
    video_processor = CaptionFormerVideoProcessor(
        size={"shortest_edge": config.input_size, "longest_edge": config.input_size * 5 // 3},
        image_mean=list(model.config.segmenter_image_mean), image_std=list(model.config.segmenter_image_std),
        clip_length=model.config.clip_length,
    )
    return CaptionFormerProcessor(video_processor, AutoTokenizer.from_pretrained(name),
                                  max_caption_length=model.config.max_caption_length)


def apply_stage(model, stage: str) -> None:
    """Freeze/unfreeze for the stage: segmentation (caption head frozen, no caption loss), captioning and video
    (segmenter frozen: the paper's second stage), end_to_end (all but the release's frozen ViT and LM)."""
    model.apply_freezing()
    if stage == "segmentation":
        model.config.caption_weight = 0.0
        model.model.caption_head.requires_grad_(False)
        model.language_model.requires_grad_(False)
    elif stage in ("captioning", "video"):
        model.freeze_segmenter(True)


def load_dataset_dict(spec: dict, config: TrainingConfig):
    """The ``DatasetDict`` (or ``IterableDatasetDict``) of a dataset spec."""
    import datasets

    from ..data.schema import load_parquet_dataset, rename_legacy_columns
    from ..data.synthetic import build_synthetic_dataset, sample_video_config

    path, streaming = spec["path"], bool(spec.get("streaming"))
    if path == "synthetic":
        data = build_synthetic_dataset(
            config.synthetic_videos, seed=config.synthetic_seed,
            config=sample_video_config(config.synthetic_height, config.synthetic_width, config.synthetic_frames),
        )
        return datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in data.items()}) if streaming else data
    if os.path.isdir(path):
        return load_parquet_dataset(path, streaming=streaming)
    if os.path.exists(path):
        raise ValueError(f"dataset {path!r} is a file; give a dataset folder, a Hub dataset id or 'synthetic'")
    return rename_legacy_columns(datasets.load_dataset(path, streaming=streaming))


def check_features(split, name: str, stage: str) -> None:
    """The features a stage needs: frames and tracks (boxes or masks), and captions for the caption stages."""
    features = getattr(split, "features", None)
    if not features:
        return
    missing = [key for key in ("video", "num_frames", "height", "width", "trajectories") if key not in features]
    tracks = features.get("trajectories")
    track_features = getattr(tracks, "feature", tracks) if tracks is not None else None
    if isinstance(track_features, dict):
        for key in ("track_id", "frames"):
            if key not in track_features:
                missing.append(f"trajectories.{key}")
        if stage != "segmentation" and "caption" not in track_features:
            missing.append("trajectories.caption")
    if missing:
        raise ValueError(f"dataset {name!r} lacks what stage {stage!r} needs: {missing}")


def _default_workers(local_processes: int) -> int:
    return max(0, min(4, (os.cpu_count() or 1) // max(1, local_processes) - 1))


# --------------------------------------------------------------------------------------------------- checkpoints
def checkpoint_steps(output_dir: str) -> list[int]:
    folder = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    return sorted(int(m.group(1)) for name in os.listdir(folder) if (m := re.fullmatch(r"step-(\d+)", name)))


def latest_checkpoint(output_dir: str) -> tuple[str | None, int]:
    steps = checkpoint_steps(output_dir)
    if not steps:
        return None, 0
    return os.path.join(output_dir, "checkpoints", f"step-{steps[-1]}"), steps[-1]


@contextmanager
def _tied_weights_quiet():
    """accelerate's safetensors save warns that it "removed shared tensor language_model.lm_head.weight" at every
    checkpoint: the LM head is tied to the input embeddings by design and re-tied on load, so that one record is
    filtered out (any other warning passes)."""
    target = logging.getLogger("accelerate.utils.other")

    class _Filter(logging.Filter):
        def filter(self, record):
            return "Removed shared tensor" not in record.getMessage()

    quiet = _Filter()
    target.addFilter(quiet)
    try:
        yield
    finally:
        target.removeFilter(quiet)


def save_checkpoint(accelerator, model, processor, output_dir: str, state: dict, keep: int) -> None:
    """``checkpoints/step-N``: the accelerate state (``state/``), the trainer state, and the model + processor as
    ``save_pretrained`` writes them (so ``from_pretrained`` loads the checkpoint); written to a temporary folder and
    renamed once complete."""
    step = state["step"]
    folder = os.path.join(output_dir, "checkpoints")
    final = os.path.join(folder, f"step-{step}")
    tmp = os.path.join(folder, f".tmp-step-{step}")
    if accelerator.is_main_process and os.path.exists(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    with _tied_weights_quiet():
        accelerator.save_state(os.path.join(tmp, "state"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_steps(output_dir)[:-keep]:
            shutil.rmtree(os.path.join(folder, f"step-{old}"), ignore_errors=True)
    accelerator.wait_for_everyone()


def _check_checkpoint(path: str) -> dict:
    """The trainer state of a checkpoint; ``ValueError`` naming what is wrong if it cannot be resumed from."""
    state_file = os.path.join(path, "trainer_state.json")
    if not os.path.isfile(state_file):
        raise ValueError(f"{path}: no trainer_state.json")
    try:
        with open(state_file) as f:
            state = json.load(f)
    except ValueError as error:
        raise ValueError(f"{path}: trainer_state.json is not valid JSON ({error})") from error
    if not isinstance(state, dict) or not all(isinstance(state.get(k), int) for k in ("step", "epoch", "batches_in_epoch")):
        raise ValueError(f"{path}: trainer_state.json lacks step / epoch / batches_in_epoch")
    state_dir = os.path.join(path, "state")
    if not os.path.isdir(state_dir):
        raise ValueError(f"{path}: no accelerate state folder")
    for name in os.listdir(state_dir):
        if os.path.getsize(os.path.join(state_dir, name)) == 0:
            raise ValueError(f"{path}: {name} is empty")
    return state


def _capture(objects: list) -> dict:
    """Copies of what a checkpoint restores: the objects' state dicts and the random number generators."""
    import copy
    import random

    import numpy as np

    return {
        "objects": [copy.deepcopy(o.state_dict()) for o in objects],
        "rng": (random.getstate(), np.random.get_state(), torch.get_rng_state(),
                torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None),
    }


def _restore(objects: list, captured: dict) -> None:
    import random

    import numpy as np

    for obj, state in zip(objects, captured["objects"]):
        obj.load_state_dict(state)
    python_state, numpy_state, torch_state, cuda_state = captured["rng"]
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    torch.set_rng_state(torch_state)
    if cuda_state is not None:
        torch.cuda.set_rng_state_all(cuda_state)


def resume(accelerator, output_dir: str, objects: list = ()) -> dict | None:
    """Load the newest checkpoint that loads (a damaged one, e.g. a truncated file or an unreadable trainer state,
    is reported and the next older one is tried); returns its trainer state, or ``None`` for a fresh start. A
    checkpoint that fails half way may have loaded part of its state: ``objects`` (the model, optimizer and
    scheduler) and the random generators are put back as they were, so a fresh start after damaged checkpoints is
    the same as a fresh run."""
    steps = checkpoint_steps(output_dir)
    captured = _capture(list(objects)) if steps else None
    for step in reversed(steps):
        path = os.path.join(output_dir, "checkpoints", f"step-{step}")
        try:
            state = _check_checkpoint(path)
            accelerator.load_state(os.path.join(path, "state"))
        except Exception as error:  # noqa: BLE001 - any unreadable checkpoint: fall back to the previous one
            logger.warning("checkpoint %s cannot be resumed from (%s); trying an older one", path, error)
            _restore(list(objects), captured)
            continue
        logger.info("resumed from %s (step %d)", path, state["step"])
        return state
    if steps:
        logger.warning("no checkpoint of %s could be resumed from: starting afresh", output_dir)
    return None


def _newest_trainer_state(output_dir: str) -> dict | None:
    """The trainer state of the newest checkpoint whose trainer_state.json reads (the data position to resume at;
    :func:`resume` then loads that checkpoint, or an older one)."""
    for step in reversed(checkpoint_steps(output_dir)):
        try:
            return _check_checkpoint(os.path.join(output_dir, "checkpoints", f"step-{step}"))
        except (OSError, ValueError) as error:
            logger.warning("checkpoint step-%d cannot be resumed from (%s)", step, error)
    return None


# ------------------------------------------------------------------------------------------------------ evaluation
def evaluate_chota(model, processor, dataset, max_videos: int, caption_metrics=("cider",), **kwargs) -> dict:
    from ..data.schema import reference_video
    from ..metrics import compute_chota
    from ..prediction import predict_example

    was_training = model.training
    model.eval()
    predictions, references = [], []
    for i, example in enumerate(dataset):
        if i >= max_videos:
            break
        predictions.append(predict_example(model, processor, example, **kwargs))
        references.append(reference_video(example))
    model.train(was_training)
    return compute_chota(predictions, references, caption_metrics=caption_metrics, score_threshold=0.0)


# -------------------------------------------------------------------------------------------------------- timing
class PhaseTimer:
    """Seconds spent per phase of each step (synchronising CUDA at phase boundaries, so only when profiling)."""

    def __init__(self, enabled: bool, device):
        self.enabled = enabled
        self.cuda = torch.device(device).type == "cuda"
        self.totals: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []  # per optimizer step

    @contextmanager
    def phase(self, name: str):
        if not self.enabled:
            yield
            return
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start

    def end_step(self) -> None:
        self.steps.append(self.totals)
        self.totals = {}


def _timed_matcher(matcher, timer: PhaseTimer):
    forward = matcher.forward

    def timed(*args, **kwargs):
        with timer.phase("matcher"):
            return forward(*args, **kwargs)

    return timed


# ------------------------------------------------------------------------------------------------------- train
def _build_data(config: TrainingConfig, accelerator, processor, clip_length: int, resume_state: dict | None):
    """The training DataLoader (prepared for map-style data), whether it is streaming, the eval split and the
    map-style sampler (``None`` when streaming)."""
    from ..data.augment import AugmentConfig
    from ..data.loader import ClipSource, DVOCClipDataset, DVOCStreamingClips, MixtureSampler, collate_clips

    specs = config.dataset_specs()
    dicts = [load_dataset_dict(spec, config) for spec in specs]
    sources = []
    for spec, data in zip(specs, dicts):
        name = spec.get("name") or spec["path"]
        if spec["split"] not in data:
            raise ValueError(f"dataset {name!r} has no split {spec['split']!r} (has {list(data)})")
        check_features(data[spec["split"]], name, config.stage)
        sources.append(ClipSource(data[spec["split"]], float(spec.get("ratio", 1.0)), name))
    eval_data = dicts[0][config.eval_split] if config.eval_split in dicts[0] else None
    augment = AugmentConfig(**config.augment) if config.augment is not None else None
    # video-level captioning: an item is the clips_per_video clips of one video, in time order
    clips_per_item = config.clips_per_video if config.stage == "video" else None
    streaming = any(bool(spec.get("streaming")) for spec in specs)
    workers = config.num_workers if config.num_workers is not None else _default_workers(
        accelerator.state.num_processes if accelerator.device.type != "cpu" else 1)
    # a private generator: creating a DataLoader iterator draws a seed from it, not from the global RNG whose state
    # the checkpoints restore (the clips' own randomness comes from the sampler's keys)
    common = {"collate_fn": collate_clips, "batch_size": config.batch_size,
              "pin_memory": accelerator.device.type == "cuda", "generator": torch.Generator().manual_seed(config.seed)}
    if streaming:
        import datasets
        from datasets.distributed import split_dataset_by_node

        streams = [s.data if isinstance(s.data, datasets.IterableDataset) else s.data.to_iterable_dataset()
                   for s in sources]
        ratios = [s.ratio for s in sources]
        if len(streams) > 1:
            total = sum(ratios)
            stream = datasets.interleave_datasets(streams, probabilities=[r / total for r in ratios],
                                                  seed=config.seed, stopping_strategy="all_exhausted")
        else:
            stream = streams[0]
        stream = split_dataset_by_node(stream, rank=accelerator.process_index, world_size=accelerator.num_processes)
        skip = (resume_state or {}).get("examples_in_epoch", 0)
        dataset = DVOCStreamingClips(stream, processor, clip_length, config.clips_per_video, augment, config.seed,
                                     skip_examples=skip, clips_per_item=clips_per_item)
        workers = min(workers, 1)  # one worker keeps the stream's order (exact resume)
        extra = {"num_workers": workers, "persistent_workers": False}
        if workers:
            extra["prefetch_factor"] = config.prefetch_factor
        return torch.utils.data.DataLoader(dataset, **common, **extra), True, eval_data, None
    sampler = MixtureSampler([len(s.data) for s in sources], [s.ratio for s in sources],
                             1 if clips_per_item else config.clips_per_video, seed=config.seed,
                             epoch_size=config.epoch_size)
    dataset = DVOCClipDataset(sources, processor, clip_length, augment, clips_per_item=clips_per_item)
    extra = {"num_workers": workers, "persistent_workers": workers > 0}
    if workers:
        extra["prefetch_factor"] = config.prefetch_factor
    loader = torch.utils.data.DataLoader(dataset, sampler=sampler, **common, **extra)
    return accelerator.prepare_data_loader(loader), False, eval_data, sampler


def _param_groups(model, config: TrainingConfig, trainable):
    backbone = {id(p) for p in model.model.segmenter.pixel_level_module.encoder.parameters()}
    groups = []
    for is_backbone in (False, True):
        lr = config.learning_rate * (config.backbone_lr_multiplier if is_backbone else 1.0)
        params = [p for p in trainable if (id(p) in backbone) == is_backbone]
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups += [{"params": decay, "weight_decay": config.weight_decay, "lr": lr},
                   {"params": no_decay, "weight_decay": 0.0, "lr": lr}]
    return [g for g in groups if g["params"]]


def train(config: TrainingConfig, model=None, processor=None, callbacks=()) -> dict:
    """Train as ``config`` says. ``model`` / ``processor``: use these instead of building them from the config.
    ``callbacks``: callables ``(event, state)`` called with ``"step_end"`` (after every optimizer step) and
    ``"train_end"``; ``state`` holds ``step``, ``logs`` (the last logged values), ``model`` and ``accelerator``."""
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed
    from transformers import get_scheduler
    from ..data.loader import unpack_labels

    if config.report_to:
        _check_tracker(config.report_to)
    AcceleratorState._reset_state()  # a fresh accelerator (settings from this config and accelerate's environment)
    # several processes on a machine without GPU (e.g. `accelerate launch --multi_gpu --num_processes 2` on CPU):
    # accelerate only sets up gloo data parallelism when told to run on the CPU
    multi_process_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator_kwargs = {}
    if config.mixed_precision is not None:
        accelerator_kwargs["mixed_precision"] = config.mixed_precision
    if config.gradient_accumulation_steps is not None:  # (a plugin: accelerate's environment would override a plain int)
        from accelerate.utils import GradientAccumulationPlugin

        accelerator_kwargs["gradient_accumulation_plugin"] = GradientAccumulationPlugin(
            num_steps=config.gradient_accumulation_steps)
    accelerator = Accelerator(
        cpu=multi_process_cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true"),
        log_with=config.report_to,
        project_dir=config.output_dir,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        **accelerator_kwargs,
    )
    set_seed(config.seed)
    if model is None:
        model, built_processor = build_model_and_processor(config)
        processor = processor or built_processor
    elif processor is None:
        raise ValueError("`train(model=...)` needs the model's `processor` too")
    apply_stage(model, config.stage)
    if config.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    resume_state = _newest_trainer_state(config.output_dir)  # the data position; states load (with fallback) below
    loader, streaming, eval_data, sampler = _build_data(config, accelerator, processor, model.config.clip_length, resume_state)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"stage {config.stage!r} leaves no trainable parameter")
    optimizer = torch.optim.AdamW(_param_groups(model, config, trainable), lr=config.learning_rate)
    # one scheduler step per optimizer step, whatever the number of processes (not prepared: accelerate's wrapper
    # steps it once per process)
    scheduler = get_scheduler(config.scheduler, optimizer, num_warmup_steps=config.warmup_steps,
                              num_training_steps=config.max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if config.report_to:
        accelerator.init_trackers("captionformer", config=_tracker_config(config))
    state = resume(accelerator, config.output_dir, [model, optimizer, scheduler])
    if state is not None and resume_state is not None and state["step"] != resume_state["step"]:
        # the newest checkpoint was damaged: the data position is the one of the checkpoint that loaded
        resume_state = state
        if streaming:
            loader.dataset.skip_examples = state.get("examples_in_epoch", 0)
    step = state["step"] if state else 0
    # the data position: the epoch the data iterator starts at and the batches taken from it. A map-style iterator
    # spans as many epochs as the run needs (no restart, and no drained prefetch queue, at every epoch end)
    epoch = state["epoch"] if state else 0
    batches_done = state["batches_in_epoch"] if state else 0
    span = 1
    if sampler is not None:
        clips_needed = (config.max_steps * accelerator.gradient_accumulation_steps * accelerator.num_processes
                        * config.batch_size)
        span = sampler.num_epochs = max(1, math.ceil(clips_needed / sampler.clips_per_epoch))
    raw_model = accelerator.unwrap_model(model)
    criterion = raw_model.criterion
    timer = PhaseTimer(config.profile, accelerator.device)
    if config.profile:
        criterion.matcher.forward = _timed_matcher(criterion.matcher, timer)

    def set_train_mode():
        model.train()
        if config.stage in ("captioning", "video"):
            raw_model.model.segmenter.eval()

    set_train_mode()
    caption_level = "video" if config.stage == "video" else "clip"
    progress = None
    if accelerator.is_main_process:
        from transformers.utils.logging import tqdm  # honours disable_progress_bar / HF_HUB_DISABLE_PROGRESS_BARS

        progress = tqdm(total=config.max_steps, initial=step, desc="train", disable=not logger.isEnabledFor(logging.INFO))
    # log lines go through the bar (tqdm.write) instead of breaking it
    from tqdm.contrib.logging import logging_redirect_tqdm

    redirect = logging_redirect_tqdm(loggers=[logging.getLogger("captionformer_hf")])
    redirect.__enter__()
    first_step = step
    history, running, last_logs = [], {}, {}
    start_time = time.perf_counter()
    while step < config.max_steps:
        if streaming:
            loader.dataset.set_epoch(epoch)
            batches = loader
        else:
            loader.set_epoch(epoch)
            batches = accelerator.skip_first_batches(loader, batches_done) if batches_done else loader
        batch_iter = iter(batches)
        consumed_any = False
        while step < config.max_steps:
            with timer.phase("data"):
                batch = next(batch_iter, None)
            if batch is None:
                break
            consumed_any = True
            batches_done += 1
            with accelerator.accumulate(model):
                with timer.phase("forward"):
                    labels = unpack_labels(batch["packed_labels"], accelerator.device)
                    out = model(batch["pixel_values_videos"].to(accelerator.device), labels=labels,
                                caption_level=caption_level)
                with timer.phase("backward"):
                    accelerator.backward(out.loss)
                with timer.phase("optimizer"):
                    if accelerator.sync_gradients and config.max_grad_norm:
                        accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                    optimizer.step()
                    if accelerator.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad()
            for key, value in out.loss_dict.items():
                if "_" in key[5:] and key[-1].isdigit():
                    continue  # auxiliary layers: logged in total only
                running[key] = running.get(key, 0.0) + float(value.detach())
            running["loss"] = running.get("loss", 0.0) + float(out.loss.detach())
            running["_n"] = running.get("_n", 0) + 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            timer.end_step()
            if progress is not None:
                progress.update(1)
            if step % config.log_every == 0 or step == config.max_steps:
                n = running.pop("_n")
                logs = {k: v / n for k, v in running.items()}
                logs = {k: float(accelerator.gather(torch.tensor(v, device=accelerator.device)).mean()) for k, v in logs.items()}
                logs["lr"] = scheduler.get_last_lr()[0]
                logs["step"] = step
                history.append(logs)
                last_logs = logs
                running = {}
                if accelerator.is_main_process:
                    logger.info("step %d: %s", step, {k: round(v, 4) for k, v in logs.items() if k != "step"})
                if config.report_to:
                    accelerator.log(logs, step=step)
            if config.eval_every and step % config.eval_every == 0 and eval_data is not None:
                if accelerator.is_main_process:
                    metrics = evaluate_chota(raw_model, processor, eval_data, config.eval_videos)
                    summary = {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, float)}
                    logger.info("step %d eval: CHOTA %.4f DetA %.4f AssA %.4f CapA %.4f", step, metrics["CHOTA"],
                                metrics["DetA"], metrics["AssA"], metrics["CapA"])
                    history.append({"step": step, **summary})
                    if config.report_to:
                        accelerator.log(summary, step=step)
                accelerator.wait_for_everyone()
                set_train_mode()
            if step % config.save_every == 0 or step == config.max_steps:
                trainer_state = {"step": step, "epoch": epoch, "batches_in_epoch": batches_done}
                if streaming:
                    items = batches_done * config.batch_size  # clips, or videos in the video stage
                    per_example = 1 if config.stage == "video" else config.clips_per_video
                    trainer_state["examples_in_epoch"] = loader.dataset.skip_examples + items // per_example
                save_checkpoint(accelerator, raw_model, processor, config.output_dir, trainer_state,
                                config.keep_checkpoints)
            for callback in callbacks:
                callback("step_end", {"step": step, "logs": last_logs, "model": raw_model, "accelerator": accelerator})
        if step >= config.max_steps:
            break
        if not consumed_any and batches_done == 0:
            raise ValueError("the training data produced no clip")
        epoch += span
        batches_done = 0
        if streaming:
            loader.dataset.skip_examples = 0
    if progress is not None:
        progress.close()
    redirect.__exit__(None, None, None)
    accelerator.wait_for_everyone()
    elapsed = time.perf_counter() - start_time
    for callback in callbacks:
        callback("train_end", {"step": step, "logs": last_logs, "model": raw_model, "accelerator": accelerator})
    if accelerator.is_main_process:
        from ..hub import push_folder, save_for_hub
        from ..utils import atomic_directory

        final = os.path.join(config.output_dir, "final")
        with atomic_directory(final, overwrite=True, argument="output_dir") as tmp:
            save_for_hub(raw_model, processor, tmp, title="CaptionFormer (trained with captionformer_hf)",
                         datasets=[s["path"] for s in config.dataset_specs()
                                   if s["path"] != "synthetic" and not os.path.isdir(s["path"])] or None,
                         tags=[config.stage], model_id=config.push_to_hub or final)
            with open(os.path.join(tmp, "training_history.json"), "w") as f:
                json.dump({"config": dataclasses.asdict(config), "history": history, "seconds": elapsed,
                           "mixed_precision": accelerator.mixed_precision,
                           "gradient_accumulation_steps": accelerator.gradient_accumulation_steps}, f, indent=1)
        if config.push_to_hub:
            push_folder(final, config.push_to_hub)
    if config.report_to:
        accelerator.end_training()
    return {"history": history, "steps": step, "steps_this_run": step - first_step, "resumed_at": first_step,
            "seconds": elapsed, "model": raw_model, "processor": processor,
            "profile": timer.steps if config.profile else None, "accelerator": accelerator}


def _tracker_config(config: TrainingConfig) -> dict:
    """Hyperparameters as trackers accept them (scalars and strings)."""
    values = {}
    for key, value in dataclasses.asdict(config).items():
        values[key] = value if isinstance(value, (int, float, str, bool)) or value is None else json.dumps(value)
    return {k: ("" if v is None else v) for k, v in values.items()}


def _check_tracker(report_to: str) -> None:
    """Fail before training when the tracker's package is missing (accelerate would only warn and log nothing)."""
    import importlib.util

    packages = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
                "comet_ml": ("comet_ml",), "aim": ("aim",), "clearml": ("clearml",), "dvclive": ("dvclive",)}
    for tracker in [t.strip() for t in report_to.split(",")]:
        if tracker == "all":
            continue
        if tracker not in packages:
            raise ValueError(f"`report_to`: unknown tracker {tracker!r} (known: {sorted(packages)})")
        if not any(importlib.util.find_spec(name) for name in packages[tracker]):
            raise ValueError(f"`report_to={tracker!r}` needs the {packages[tracker][0]} package: pip install "
                             f"{packages[tracker][0]}")


def state_fingerprint(model, parameters_only: bool = False) -> str:
    """SHA-256 of every parameter and buffer (to compare runs), or of the parameters only (to compare the ranks
    of a data-parallel run: batch-norm running statistics are per-process buffers)."""
    import hashlib

    digest = hashlib.sha256()
    items = model.named_parameters() if parameters_only else model.state_dict().items()
    for name, tensor in sorted(items):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()
