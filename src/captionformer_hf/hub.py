"""Saving and pushing CaptionFormer folders that work without this package.

Every save that can be published (the trainer's final model, a converted official checkpoint, the pipeline's
``save_pretrained`` / ``push_to_hub``) goes through :func:`save_for_hub`: model weights and config with the
``custom_pipelines`` entry, the modeling / processing / pipeline code (so ``pipeline(model=repo,
trust_remote_code=True)`` runs where ``captionformer_hf`` is not installed), the processor, and a model card with the
Hub metadata (``pipeline_tag``, ``library_name``, ``license``, ``base_model``, ``datasets``, ``tags``).
"""

from __future__ import annotations

import os

from .processing.pipeline_captionformer import model_card_text


def save_for_hub(model, processor, folder: str | os.PathLike, *, card: str | None = None, **card_kwargs) -> None:
    """Write ``model`` and ``processor`` into ``folder`` as a self-contained Hub folder (see the module docstring);
    ``card``: a model card text to use instead of :func:`model_card_text` (``card_kwargs``: ``title``,
    ``description``, ``base_model``, ``datasets``, ``license``, ``tags``, ``model_id``: the Hub repository or
    folder the card's usage example names). Write into an ``atomic_directory``."""
    from .processing import DenseVideoObjectCaptioningPipeline

    pipe = DenseVideoObjectCaptioningPipeline(model=model, processor=processor, task="dense-video-object-captioning")
    pipe.save_pretrained(folder, card=card, **card_kwargs)


def push_folder(folder: str | os.PathLike, repo_id: str, private: bool = False) -> str:
    """Upload a folder written by :func:`save_for_hub` to the Hub model repository ``repo_id`` (created if needed);
    returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    return str(api.upload_folder(folder_path=str(folder), repo_id=repo_id))


__all__ = ["model_card_text", "push_folder", "save_for_hub"]
