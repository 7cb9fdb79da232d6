"""`pipeline("dense-video-object-captioning")`: segment, track and caption every object of a video.

Remote-code safe: imports only transformers, torch and single-dot siblings (the model and processor come from the
checkpoint).
"""

from __future__ import annotations

import os

import numpy as np
from transformers import Pipeline
from transformers.utils import logging

from .inference_captionformer import predict_video
from .trajectory_captionformer import check_positive_ints

logger = logging.get_logger(__name__)

# generation arguments accepted directly by the pipeline (others go through `generate_kwargs`)
GENERATION_ARGUMENTS = (
    "num_beams", "max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "num_beam_groups", "diversity_penalty",
)  # fmt: skip


def _is_frame(item) -> bool:
    """A single image (PIL or an (H, W, C) array), as opposed to a whole video."""
    if hasattr(item, "convert") and hasattr(item, "size"):
        return True
    return isinstance(item, np.ndarray) and item.ndim == 3


def _collate_videos(items: list[dict]) -> dict:
    """Batches of videos stay lists: each video is processed on its own (its clips are batched by
    ``clip_batch_size``)."""
    return {key: [item[key] for item in items] for key in items[0]}


# the caption aggregations of the model config (``aggregation``): order-free, then order-aware
AGGREGATIONS = ("weighted", "mean", "best", "concat", "linear", "self-attention")
LICENSE = "apache-2.0"
PIPELINE_TAG = "video-text-to-text"  # the Hub's closest task; the transformers task is dense-video-object-captioning
TAGS = ("captionformer", "dense-video-object-captioning", "video", "object-tracking", "custom_code")


# what inference needs (the folder's code imports them); training also needs accelerate and datasets
REQUIREMENTS = ("torch", "torchvision", "transformers>=5.20", "av", "scipy", "numpy", "pillow")


def model_card_text(model, *, title=None, description=None, base_model=None, datasets=None, license=LICENSE,
                    tags=None, model_id: str | None = None) -> str:
    """A model card (Hub metadata: ``pipeline_tag``, ``library_name``, ``license``, ``base_model``, ``datasets``
    (Hub dataset ids), ``tags``; its requirements and how to use the model) for a CaptionFormer folder; ``model_id``
    is how the usage example names the model (the Hub repository or the folder)."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=PIPELINE_TAG,
        license=license,
        base_model=base_model,
        datasets=list(datasets) if datasets else None,
        tags=list(dict.fromkeys([*TAGS, *(tags or [])])),
    )
    config = model.config
    parameters = sum(p.numel() for p in model.parameters())
    default = "A CaptionFormer (CVPR 2026) model: it segments, detects, tracks and captions every object of a video."
    body = f"""
# {title or "CaptionFormer"}

{description or default}

- {parameters / 1e6:.1f} M parameters; clips of {config.clip_length} frame(s); {config.segmenter_config.num_queries}
  queries; {config.num_labels} classes; video level: {config.video_inference_mode} mode
- output: trajectories (track id, score, category, caption, per-frame boxes and COCO RLE masks)

```python
from transformers import pipeline

pipe = pipeline(model={model_id or "."!r}, trust_remote_code=True)  # the code comes with the model
result = pipe("video.mp4")
for trajectory in result["trajectories"]:
    print(trajectory["track_id"], trajectory["caption"])
```

Requirements: `pip install {" ".join(repr(r) if ">" in r else r for r in REQUIREMENTS)}` (av decodes video files, scipy
links detections into tracks; inference needs nothing else: the training losses load only when training, and
`pycocotools`, when installed, speeds up mask encoding on the CPU). Where the `captionformer_hf` package is
installed, the model also runs with the package's own code: `pipeline("dense-video-object-captioning", model=...)` after `import captionformer_hf`.
"""
    return str(ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body))


def _first(items: list[dict]) -> dict:
    return items[0]


class DenseVideoObjectCaptioningPipeline(Pipeline):
    """Dense video object captioning with CaptionFormer.

    Input: a path, URL, bytes or file-like video (PyAV: mp4, avi, webm...), a ``(T, H, W, 3)`` array, a list of PIL
    images (one video), or a list of such videos (with ``batch_size``, videos are decoded ahead in DataLoader
    workers; results equal one-by-one calls). Output per video (the trajectory format, ``docs/format.md``)::

        {"num_frames", "height", "width", "fps", "trajectories": [
            {"track_id", "score", "category", "category_id", "caption",
             "frames": [{"frame_index", "box": [x, y, w, h], "mask_rle", "score"}]}]}

    Parameters: ``threshold`` (the paper mode's per-clip score pruning), ``presence_threshold`` (release mode, box
    models), ``return_masks``, ``fps`` / ``num_frames`` (frame sampling),
    ``max_frames``, ``video_fps`` (of array inputs); decoding bounds ``max_side`` (downscale larger frames),
    ``allow_truncated`` (caption the readable part of a truncated file, with a ``warnings`` entry in the result),
    ``max_download_bytes`` (URLs); ``clip_batch_size``, ``aggregation``, ``progress``; generation:
    ``generate_kwargs`` (a dict) and the common generation arguments directly (``num_beams``, ``max_new_tokens``,
    ``do_sample``, ``temperature``, ``top_k``, ``top_p``...).
    """

    _load_processor = True
    _load_tokenizer = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError("the dense-video-object-captioning pipeline needs a CaptionFormerProcessor")

    def _sanitize_parameters(
        self,
        threshold=None,
        presence_threshold=None,
        return_masks=None,
        fps=None,
        num_frames=None,
        max_frames=None,
        video_fps=None,
        clip_batch_size=None,
        aggregation=None,
        progress=None,
        generate_kwargs=None,
        max_side=None,
        allow_truncated=None,
        max_download_bytes=None,
        **kwargs,
    ):
        if generate_kwargs is not None and not isinstance(generate_kwargs, dict):
            raise TypeError(f"`generate_kwargs` must be a dict, got {type(generate_kwargs).__name__}")
        generation = dict(generate_kwargs or {})
        unknown = sorted(k for k in kwargs if k not in GENERATION_ARGUMENTS)
        if unknown:
            raise TypeError(
                f"unexpected pipeline arguments: {', '.join(unknown)} (other generation arguments go in "
                "`generate_kwargs={...}`)"
            )
        for name, value in kwargs.items():
            if name in generation and generation[name] != value:
                raise ValueError(f"`{name}` is given twice, directly and in `generate_kwargs`, with different values")
            generation[name] = value
        check_positive_ints(True, num_beams=generation.get("num_beams"), max_new_tokens=generation.get("max_new_tokens"),
                            clip_batch_size=clip_batch_size)
        preprocess = {
            k: v for k, v in dict(fps=fps, num_frames=num_frames, max_frames=max_frames, video_fps=video_fps,
                                  max_side=max_side, allow_truncated=allow_truncated,
                                  max_download_bytes=max_download_bytes).items()
            if v is not None
        }
        forward = {"generate_kwargs": generation}
        for name, value in (("threshold", threshold), ("presence_threshold", presence_threshold)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}")
            forward[name] = float(value)
        if clip_batch_size is not None:
            forward["clip_batch_size"] = clip_batch_size
        if aggregation is not None:
            if aggregation not in AGGREGATIONS:
                raise ValueError(f"`aggregation` must be one of {AGGREGATIONS}, got {aggregation!r}")
            forward["aggregation"] = aggregation
        if progress is not None:
            forward["progress"] = bool(progress)
        if return_masks is not None:
            if not isinstance(return_masks, bool):  # "no" would be truthy
                raise TypeError(f"`return_masks` must be True or False, got {return_masks!r}")
            forward["return_masks"] = return_masks
        return preprocess, forward, {}

    def __call__(self, inputs, video_id=None, **kwargs):
        """``video_id``: the result's ``video_id`` (a list of ids for a list of videos), so that the output is the
        trajectory format that ``compute_chota`` and ``captionformer evaluate`` take as it is."""
        # a list of frames is one video, not a batch of images
        single = not isinstance(inputs, (list, tuple)) or (bool(inputs) and _is_frame(inputs[0]))
        if video_id is not None:
            ids = [video_id] if single else video_id
            if isinstance(ids, (str, bytes)) or not isinstance(ids, (list, tuple)) or (not single and len(ids) != len(inputs)):
                raise ValueError(f"`video_id` must be one id for one video, or a list of one id per video "
                                 f"({'1' if single else len(inputs)}), got {video_id!r}")
        if isinstance(inputs, (list, tuple)) and inputs and _is_frame(inputs[0]):
            results = [super().__call__([list(inputs)], **kwargs)[0]]
        else:
            results = super().__call__(inputs, **kwargs)
            results = [results] if single else results
        if video_id is not None:
            results = [{"video_id": identifier, **result} for identifier, result in zip(ids, results)]
        return results[0] if single else results

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator
        from torch.utils.data import DataLoader

        if not hasattr(inputs, "__len__"):
            return super().get_iterator(inputs, num_workers, 1, preprocess_params, forward_params, postprocess_params)
        dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        collate = _collate_videos if batch_size > 1 else _first
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=collate)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def preprocess(self, video, fps=None, num_frames=None, max_frames=None, video_fps=None, **decoding):
        if getattr(video, "is_video_frames", False) is True:  # opened already, with its own sampling and bounds
            return {"frames": video}
        frames = self.processor.video_processor.open_video(
            video, num_frames=num_frames, fps=fps, max_frames=max_frames, video_fps=video_fps, **decoding
        )
        return {"frames": frames}

    def _forward(self, model_inputs, threshold=None, presence_threshold=None, clip_batch_size=1, aggregation=None,
                 return_masks=True, progress=False, generate_kwargs=None):
        frames = model_inputs["frames"]
        batch = frames if isinstance(frames, list) else [frames]
        results = [
            predict_video(
                self.model, self.processor, video, threshold=threshold, presence_threshold=presence_threshold,
                clip_batch_size=clip_batch_size, return_masks=return_masks, aggregation=aggregation, progress=progress,
                **(generate_kwargs or {}),
            )
            for video in batch
        ]
        return {"results": results} if isinstance(frames, list) else {"results": results[0]}

    def postprocess(self, model_outputs):
        return model_outputs["results"]

    def save_pretrained(self, save_directory, card: str | None = None, title=None, description=None,
                        base_model=None, datasets=None, license=LICENSE, tags=None, **kwargs):
        """Save the model, the pipeline code (``custom_pipelines``), the processor and a model card (``card``, or
        one made by :func:`model_card_text` from the other arguments), so that ``pipeline(model=path_or_repo,
        trust_remote_code=True)`` works without this package. ``push_to_hub`` saves through here too."""
        model_id = kwargs.pop("model_id", None) or os.fspath(save_directory)
        super().save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)
        if card is None and not any((title, description, base_model, datasets, tags)):
            card = self._own_card()
        if card is None:
            card = model_card_text(self.model, title=title, description=description, base_model=base_model,
                                   datasets=datasets, license=license, tags=tags, model_id=model_id)
        with open(os.path.join(save_directory, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)

    def _own_card(self) -> str | None:
        """The card of the folder the model was loaded from (e.g. the embedded default's, which says what its toy
        domain is), if it has one: a model keeps its card when it is saved again."""
        folder = getattr(self.model, "name_or_path", None) or getattr(self.model.config, "_name_or_path", None)
        path = os.path.join(folder, "README.md") if isinstance(folder, str) and os.path.isdir(folder) else None
        if path is None or not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            return f.read()

    def push_to_hub(self, repo_id: str, private: bool | None = None, token=None, commit_message: str | None = None,
                    **card_kwargs):
        """Upload what :meth:`save_pretrained` writes (model, code, processor, this package's model card: transformers'
        own push would replace the card) to the Hub model repository ``repo_id``."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, model_id=repo_id, **card_kwargs)
            return api.upload_folder(folder_path=folder, repo_id=repo_id,
                                     commit_message=commit_message or "Upload CaptionFormer")


__all__ = ["DenseVideoObjectCaptioningPipeline"]
