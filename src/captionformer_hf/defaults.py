"""The embedded default model and a one-call pipeline helper."""

from __future__ import annotations

import os

DEFAULT_MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints", "default")


def default_model_path() -> str:
    """Path of the tiny CaptionFormer shipped with the package (trained on the synthetic shapes domain)."""
    if not os.path.exists(os.path.join(DEFAULT_MODEL_DIR, "config.json")):
        raise ValueError(
            f"the embedded default model is missing from {DEFAULT_MODEL_DIR}; pass a model path or Hub id instead"
        )
    return DEFAULT_MODEL_DIR


def load_pipeline(model: str | None = None, device=None, **kwargs):
    """``pipeline("dense-video-object-captioning")`` for ``model`` (a local path or Hub id; default: the embedded
    model) with this package's code: folders saved for the Hub carry their own copy of the code (for users without
    the package), which is not run here. Extra keyword arguments go to ``transformers.pipeline``."""
    from transformers import pipeline

    from . import _HAS_TORCH

    if not _HAS_TORCH:
        raise ValueError("the captioning pipeline needs torch: pip install torch torchvision")
    from .processing import DenseVideoObjectCaptioningPipeline

    model = model or default_model_path()
    if isinstance(model, str) and not os.path.exists(model) and model.startswith((".", "/")):
        raise ValueError(f"`model`: no such directory: {model}")
    if isinstance(model, str) and "processor" not in kwargs:
        # loaded here rather than by `pipeline`, which wraps any loading error into a multi-kilobyte message with
        # tracebacks: a damaged checkpoint is refused with its own one-line error
        from transformers import AutoModel, AutoProcessor

        model_kwargs = {k: kwargs.pop(k) for k in ("dtype", "revision", "token") if k in kwargs}
        kwargs["processor"] = AutoProcessor.from_pretrained(model, **{k: v for k, v in model_kwargs.items()
                                                                      if k != "dtype"})
        model = AutoModel.from_pretrained(model, **model_kwargs)
    return pipeline("dense-video-object-captioning", model=model, device=device,
                    pipeline_class=DenseVideoObjectCaptioningPipeline, **kwargs)
