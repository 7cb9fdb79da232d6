"""VLM caption synthesis (the paper's data engine): box drawing + multi-channel prompting, pluggable VLMs (Gemini,
local transformers models, a template backend), multi-VLM voting, resumable batch runs. Prompts: :mod:`.prompting`."""

from .backends import Backend, GeminiBackend, TemplateBackend, TransformersBackend, VotingBackend, grid_image
from .prompting import SYSTEM_PROMPT, ObjectPrompt, build_object_prompts, draw_box, draw_contour, parse_caption, user_prompt
from .runner import CaptionCache, annotate_dataset, caption_one, merge_captions

__all__ = [
    "SYSTEM_PROMPT", "Backend", "CaptionCache", "GeminiBackend", "ObjectPrompt", "TemplateBackend",
    "TransformersBackend", "VotingBackend", "annotate_dataset", "build_object_prompts", "caption_one", "draw_box",
    "draw_contour", "grid_image", "merge_captions", "parse_caption", "user_prompt",
]
