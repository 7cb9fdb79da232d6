"""Training with accelerate: two-stage or end-to-end, resumable, multi-process, with CHOTA evaluation.

    captionformer train --config recipe.json [--flag value ...]
    accelerate launch --num_processes 2 -m captionformer_hf.cli train --config recipe.json

A plain accelerate loop: ``Accelerator`` (gradient accumulation, mixed precision, trackers), ``save_state`` /
``load_state`` checkpoints under ``output_dir/checkpoints/step-N`` (written to a temporary folder, then renamed),
automatic resume from the latest one (same data order: the clip order is a function of (seed, epoch) and the
consumed batches of the current epoch are skipped), a final ``save_pretrained`` of model + processor.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

STAGES = ("segmentation", "captioning", "end_to_end", "video")


@dataclass
class TrainingConfig:
    """Everything a run needs; loadable from JSON (``--config``) and overridable by flags."""

    output_dir: str = "runs/captionformer"
    # data: "synthetic" (generated in memory), a folder of parquet shards, or a Hub dataset id
    dataset: str = "synthetic"
    synthetic_videos: int = 200
    synthetic_seed: int = 0
    synthetic_frames: int = 24
    train_split: str = "train"
    eval_split: str = "validation"
    streaming: bool = False
    clip_length: int | None = None
    clips_per_video: int = 2
    num_workers: int = 0
    # model: "tiny" (testing_utils.tiny_config), a config JSON, a pretrained path/id, or "components"
    model: str = "tiny"
    model_overrides: dict = field(default_factory=dict)
    segmenter: str | None = None
    blip2: str | None = None
    processor: str | None = None  # path/id; default: the model's, or the tiny processor for "tiny"
    input_size: int = 96
    # what to train
    stage: str = "end_to_end"
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    scheduler: str = "cosine"
    warmup_steps: int = 0
    max_steps: int = 100
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    max_grad_norm: float = 1.0
    seed: int = 0
    # bookkeeping
    log_every: int = 10
    eval_every: int = 0
    eval_videos: int = 8
    save_every: int = 50
    keep_checkpoints: int = 2
    report_to: str | None = None
    push_to_hub: str | None = None
    stop_after_steps: int | None = None  # testing: exit (as if killed) after this many steps, without final save
    write_fingerprints: bool = False  # each process writes a hash of its weights (multi-process checks)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"`stage` must be one of {STAGES}, got {self.stage!r}")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "clips_per_video", "log_every",
                     "save_every", "keep_checkpoints", "eval_videos", "input_size", "synthetic_videos"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"`mixed_precision` must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate}")
        if self.stage == "video" and self.batch_size != self.clips_per_video:
            raise ValueError("`stage='video'` trains on the clips of one video per step: set batch_size == clips_per_video")

    @classmethod
    def from_file(cls, path: str, **overrides) -> TrainingConfig:
        if not os.path.exists(path):
            raise ValueError(f"training config not found: {path}")
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"{path}: unknown training config keys {sorted(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


# ------------------------------------------------------------------------------------------------------ setup
def build_model_and_processor(config: TrainingConfig):
    from ..modeling import CaptionFormerConfig, CaptionFormerForDenseVideoObjectCaptioning
    from ..testing_utils import tiny_config, tiny_processor

    overrides = dict(config.model_overrides)
    if config.clip_length is not None:
        overrides["clip_length"] = config.clip_length
    if config.model == "tiny":
        model = CaptionFormerForDenseVideoObjectCaptioning(tiny_config(**overrides))
        processor = None
    elif config.model == "components":
        if not (config.segmenter and config.blip2):
            raise ValueError("`model='components'` needs `segmenter` and `blip2`")
        model = CaptionFormerForDenseVideoObjectCaptioning.from_pretrained_components(
            segmenter=config.segmenter, blip2=config.blip2, **overrides
        )
        processor = None
    elif config.model.endswith(".json"):
        with open(config.model, encoding="utf-8") as f:
            model_config = CaptionFormerConfig(**{**json.load(f), **overrides})
        model = CaptionFormerForDenseVideoObjectCaptioning(model_config)
        processor = None
    else:
        model = CaptionFormerForDenseVideoObjectCaptioning.from_pretrained(config.model, **overrides)
        processor = config.model
    if config.processor is not None:
        processor = config.processor
    if isinstance(processor, str):
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(processor)
    elif processor is None:
        processor = tiny_processor(clip_length=model.config.clip_length, size=config.input_size)
    processor.video_processor.clip_length = model.config.clip_length
    return model, processor


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


def load_datasets(config: TrainingConfig):
    import datasets

    from ..data.schema import load_parquet_dataset
    from ..data.synthetic import SyntheticVideoConfig, build_synthetic_dataset

    if config.dataset == "synthetic":
        return build_synthetic_dataset(
            config.synthetic_videos, seed=config.synthetic_seed, config=SyntheticVideoConfig(num_frames=config.synthetic_frames)
        )
    if os.path.isdir(config.dataset):
        return load_parquet_dataset(config.dataset, streaming=config.streaming)
    return datasets.load_dataset(config.dataset, streaming=config.streaming)


def latest_checkpoint(output_dir: str) -> tuple[str | None, int]:
    folder = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(folder):
        return None, 0
    steps = [int(m.group(1)) for name in os.listdir(folder) if (m := re.fullmatch(r"step-(\d+)", name))]
    if not steps:
        return None, 0
    step = max(steps)
    return os.path.join(folder, f"step-{step}"), step


def save_checkpoint(accelerator, output_dir: str, step: int, keep: int) -> None:
    folder = os.path.join(output_dir, "checkpoints")
    final = os.path.join(folder, f"step-{step}")
    tmp = os.path.join(folder, f".tmp-step-{step}")
    if accelerator.is_main_process and os.path.exists(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump({"step": step}, f)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        steps = sorted(int(n.split("-")[1]) for n in os.listdir(folder) if re.fullmatch(r"step-\d+", n))
        for old in steps[:-keep]:
            shutil.rmtree(os.path.join(folder, f"step-{old}"), ignore_errors=True)
    accelerator.wait_for_everyone()


def reference_video(example: dict) -> dict:
    """A dataset example as a CHOTA reference video."""
    return {
        "video_id": example["video_id"],
        "num_frames": example["num_frames"],
        "height": example["height"],
        "width": example["width"],
        "trajectories": [
            {"track_id": t["track_id"], "caption": t["caption"], "category": t.get("category"),
             "frames": [{"frame_index": f["frame_index"], "box": f["box"], "mask_rle": f.get("mask_rle")} for f in t["frames"]]}
            for t in example["tracks"]
        ],
    }


def predict_example(model, processor, example: dict, **kwargs) -> dict:
    """Run the model on one dataset example (``captionformer_hf.predict_video``, as the pipeline): the example's
    trajectories predicted on its original frames. ``kwargs`` go to ``predict_video``."""
    from ..data.loader import decode_example_frames
    from ..processing import predict_video

    frames = decode_example_frames(example)
    return predict_video(model, processor, frames, video_id=example["video_id"], video_fps=example.get("fps"), **kwargs)


def evaluate_chota(model, processor, dataset, max_videos: int, caption_metrics=("cider",), **kwargs) -> dict:
    from ..metrics import compute_chota

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


# ------------------------------------------------------------------------------------------------------- train
def train(config: TrainingConfig) -> dict:
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from ..data.loader import DVOCClipDataset, collate_clips

    # several processes on a machine without GPU (e.g. `accelerate launch --multi_gpu --num_processes 2` on CPU):
    # accelerate only sets up gloo data parallelism when told to run on the CPU
    multi_process_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=multi_process_cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true"),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=config.report_to,
        project_dir=config.output_dir,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    set_seed(config.seed)
    model, processor = build_model_and_processor(config)
    apply_stage(model, config.stage)
    data = load_datasets(config)
    if config.train_split not in data:
        raise ValueError(f"the dataset has no split {config.train_split!r} (has {list(data)})")
    train_set = DVOCClipDataset(
        data[config.train_split], processor, clip_length=model.config.clip_length,
        clips_per_video=config.clips_per_video, shuffle=True, seed=config.seed, min_objects=0,
        rank=accelerator.process_index, world_size=accelerator.num_processes,
    )
    # a private generator: creating a DataLoader iterator draws a seed from it, not from the global RNG whose state
    # the checkpoints restore (otherwise a resumed run would diverge from an uninterrupted one)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=config.batch_size, collate_fn=collate_clips, num_workers=config.num_workers,
        generator=torch.Generator().manual_seed(config.seed),
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"stage {config.stage!r} leaves no trainable parameter")
    decay = [p for p in trainable if p.ndim > 1]
    no_decay = [p for p in trainable if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
    )
    scheduler = get_scheduler(config.scheduler, optimizer, num_warmup_steps=config.warmup_steps,
                              num_training_steps=config.max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if config.report_to:
        accelerator.init_trackers("captionformer", config=dataclasses.asdict(config))

    checkpoint, step = latest_checkpoint(config.output_dir)
    if checkpoint is not None:
        accelerator.load_state(checkpoint)
        logger.info("resumed from %s (step %d)", checkpoint, step)
    raw_model = accelerator.unwrap_model(model)
    model.train()
    if config.stage in ("captioning", "video"):
        raw_model.model.segmenter.eval()
    caption_level = "video" if config.stage == "video" else "clip"

    progress = None
    if accelerator.is_main_process:
        from tqdm.auto import tqdm

        progress = tqdm(total=config.max_steps, initial=step, desc="train", disable=not logger.isEnabledFor(logging.INFO))
    history = []
    start_time = time.perf_counter()
    # resume position: the data order is a function of (seed, epoch), so replay it and skip the consumed batches
    epoch = 0
    skip = step * config.gradient_accumulation_steps
    running = {}
    while step < config.max_steps:
        train_set.set_epoch(epoch)
        batches_in_epoch = 0
        for batch in loader:
            batches_in_epoch += 1
            if skip > 0:
                skip -= 1
                continue
            with accelerator.accumulate(model):
                out = model(batch["pixel_values_videos"].to(accelerator.device), labels=[
                    {k: v.to(accelerator.device) for k, v in t.items()} for t in batch["labels"]
                ], caption_level=caption_level)
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
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
            if progress is not None:
                progress.update(1)
            if step % config.log_every == 0 or step == config.max_steps:
                n = running.pop("_n")
                logs = {k: v / n for k, v in running.items()}
                logs = {k: float(accelerator.gather(torch.tensor(v, device=accelerator.device)).mean()) for k, v in logs.items()}
                logs["lr"] = scheduler.get_last_lr()[0]
                logs["step"] = step
                history.append(logs)
                running = {}
                if accelerator.is_main_process:
                    logger.info("step %d: %s", step, {k: round(v, 4) for k, v in logs.items() if k != "step"})
                if config.report_to:
                    accelerator.log(logs, step=step)
            if config.eval_every and step % config.eval_every == 0 and config.eval_split in data:
                if accelerator.is_main_process:
                    metrics = evaluate_chota(raw_model, processor, data[config.eval_split], config.eval_videos)
                    summary = {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, float)}
                    logger.info("step %d eval: CHOTA %.4f DetA %.4f AssA %.4f CapA %.4f", step, metrics["CHOTA"],
                                metrics["DetA"], metrics["AssA"], metrics["CapA"])
                    history.append({"step": step, **summary})
                    if config.report_to:
                        accelerator.log(summary, step=step)
                accelerator.wait_for_everyone()
                model.train()
                if config.stage in ("captioning", "video"):
                    raw_model.model.segmenter.eval()
            if step % config.save_every == 0 or step == config.max_steps:
                save_checkpoint(accelerator, config.output_dir, step, config.keep_checkpoints)
            if config.stop_after_steps is not None and step >= config.stop_after_steps:
                raise SystemExit(17)  # simulated interruption (tests)
            if step >= config.max_steps:
                break
        epoch += 1
        if batches_in_epoch == 0:
            raise ValueError("the training data produced no clip")
    if progress is not None:
        progress.close()
    accelerator.wait_for_everyone()
    elapsed = time.perf_counter() - start_time
    if config.write_fingerprints:
        os.makedirs(config.output_dir, exist_ok=True)
        with open(os.path.join(config.output_dir, f"fingerprint-rank{accelerator.process_index}.txt"), "w") as f:
            f.write(state_fingerprint(raw_model, parameters_only=True))
    if accelerator.is_main_process:
        from ..hub import push_folder, save_for_hub
        from ..utils import atomic_directory

        final = os.path.join(config.output_dir, "final")
        with atomic_directory(final, overwrite=True, argument="output_dir") as tmp:
            save_for_hub(raw_model, processor, tmp, title="CaptionFormer (trained with captionformer_hf)",
                         datasets=None if config.dataset == "synthetic" or os.path.isdir(config.dataset)
                         else [config.dataset], tags=[config.stage])
            with open(os.path.join(tmp, "training_history.json"), "w") as f:
                json.dump({"config": dataclasses.asdict(config), "history": history, "seconds": elapsed}, f, indent=1)
        if config.push_to_hub:
            push_folder(final, config.push_to_hub)
    if config.report_to:
        accelerator.end_training()
    return {"history": history, "steps": step, "seconds": elapsed, "model": raw_model, "processor": processor}


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
