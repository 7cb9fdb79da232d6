"""VLM backends for caption synthesis: Gemini (google-genai), any local transformers image-text-to-text model, a
deterministic template backend (tests, offline runs), and multi-VLM voting."""

from __future__ import annotations

import io
import logging
import os

import numpy as np

from .prompting import ObjectPrompt, parse_caption

logger = logging.getLogger(__name__)


class Backend:
    """``caption(prompt) -> raw answer text``. ``name`` identifies it in caches."""

    name = "backend"

    def answer(self, prompt: ObjectPrompt) -> str:
        raise NotImplementedError

    def usage(self) -> dict:
        return {}


class TemplateBackend(Backend):
    """Deterministic captions from the category and the box motion (no model): for tests and offline runs."""

    name = "template"

    def answer(self, prompt: ObjectPrompt) -> str:
        category = "object"
        for line in prompt.user.splitlines():
            if line.startswith("Category of the marked object:"):
                category = line.split(":", 1)[1].strip().rstrip(".") or "object"
        boxes = []
        for line in prompt.user.splitlines():
            if line.startswith("Frame ") and "x_min=" in line:
                values = dict(part.split("=") for part in line[line.find("(") + 1 : line.find(")")].split(", "))
                boxes.append(((float(values["x_min"]) + float(values["x_max"])) / 2, (float(values["y_min"]) + float(values["y_max"])) / 2))
        motion = "standing still"
        if len(boxes) > 1:
            dx, dy = boxes[-1][0] - boxes[0][0], boxes[-1][1] - boxes[0][1]
            if max(abs(dx), abs(dy)) > 4:
                motion = ("moving to the right" if dx > 0 else "moving to the left") if abs(dx) >= abs(dy) else ("moving down" if dy > 0 else "moving up")
        article = "an" if category[:1].lower() in "aeiou" else "a"
        return '{"caption": "%s %s %s"}' % (article, category, motion)


def grid_image(frames: list[np.ndarray]):
    """The sampled frames tiled into one image (2 columns), for VLMs that take a single image."""
    from PIL import Image

    height = max(f.shape[0] for f in frames)
    width = max(f.shape[1] for f in frames)
    columns = 2 if len(frames) > 1 else 1
    rows = (len(frames) + columns - 1) // columns
    canvas = np.zeros((rows * height, columns * width, 3), np.uint8)
    for i, frame in enumerate(frames):
        r, c = divmod(i, columns)
        canvas[r * height : r * height + frame.shape[0], c * width : c * width + frame.shape[1]] = frame
    return Image.fromarray(canvas)


class TransformersBackend(Backend):
    """Any local ``AutoModelForImageTextToText`` + ``AutoProcessor``: the frames are tiled into one image and the
    system and user prompts concatenated into the text prompt."""

    def __init__(self, model, processor=None, max_new_tokens: int = 48, prompt_template: str = "{system}\n\n{user}\n"):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if isinstance(model, str):
            processor = processor or AutoProcessor.from_pretrained(model)
            model = AutoModelForImageTextToText.from_pretrained(model)
        if processor is None:
            raise ValueError("`processor` is needed with a model object")
        self.model = model.eval()
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.prompt_template = prompt_template
        self.name = f"transformers:{getattr(model.config, '_name_or_path', '') or type(model).__name__}"
        self.tokens = 0

    def answer(self, prompt: ObjectPrompt) -> str:
        import torch

        text = self.prompt_template.format(system=prompt.system, user=prompt.user)
        inputs = self.processor(images=grid_image(prompt.frames), text=text, return_tensors="pt")
        with torch.no_grad():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        prompt_length = inputs["input_ids"].shape[1] if "input_ids" in inputs else 0
        new_tokens = output[0, prompt_length:] if output.shape[1] > prompt_length else output[0]
        self.tokens += int(new_tokens.numel())
        decoder = getattr(self.processor, "tokenizer", self.processor)
        return decoder.decode(new_tokens, skip_special_tokens=True)

    def usage(self) -> dict:
        return {"generated_tokens": self.tokens}


class GeminiBackend(Backend):
    """Gemini through the google-genai SDK (``pip install 'captionformer_hf[annotate]'``); the API key comes from
    ``GEMINI_API_KEY`` / ``GOOGLE_API_KEY``. ``client`` may be given (tests use a fake transport)."""

    def __init__(self, model: str = "gemini-2.0-flash", client=None, temperature: float = 0.2):
        self.model = model
        self.temperature = temperature
        self.name = f"gemini:{model}"
        self.input_tokens = 0
        self.output_tokens = 0
        if client is None:
            key = os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")
            if not key:
                raise ValueError("GeminiBackend needs an API key in GEMINI_API_KEY or GOOGLE_API_KEY")
            try:
                from google import genai
            except ImportError as error:
                raise ValueError("GeminiBackend needs google-genai: pip install 'captionformer_hf[annotate]'") from error
            client = genai.Client(api_key=key)
        self.client = client

    def request(self, prompt: ObjectPrompt) -> dict:
        """The request: one JPEG part per drawn frame, then the user prompt; the system prompt as instruction."""
        from PIL import Image

        parts = []
        for frame in prompt.frames:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
            parts.append({"inline_data": {"mime_type": "image/jpeg", "data": buffer.getvalue()}})
        parts.append({"text": prompt.user})
        return {
            "model": self.model,
            "contents": [{"role": "user", "parts": parts}],
            "config": {"system_instruction": prompt.system, "temperature": self.temperature,
                       "response_mime_type": "application/json"},
        }

    def answer(self, prompt: ObjectPrompt) -> str:
        response = self.client.models.generate_content(**self.request(prompt))
        usage = getattr(response, "usage_metadata", None)
        if usage is not None:
            self.input_tokens += int(getattr(usage, "prompt_token_count", 0) or 0)
            self.output_tokens += int(getattr(usage, "candidates_token_count", 0) or 0)
        return response.text

    def usage(self) -> dict:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}


def _token_f1(a: str, b: str) -> float:
    ta, tb = a.lower().split(), b.lower().split()
    if not ta or not tb:
        return 0.0
    common = sum(min(ta.count(w), tb.count(w)) for w in set(ta))
    if common == 0:
        return 0.0
    precision, recall = common / len(tb), common / len(ta)
    return 2 * precision * recall / (precision + recall)


class VotingBackend(Backend):
    """Multi-VLM consensus: every backend answers; malformed answers are dropped; the caption with the highest mean
    token-F1 agreement with the others (the medoid) wins, ties going to the earlier backend."""

    def __init__(self, backends: list[Backend]):
        if len(backends) < 2:
            raise ValueError("voting needs at least two backends")
        self.backends = backends
        self.name = "vote:" + "+".join(b.name for b in backends)

    def answer(self, prompt: ObjectPrompt) -> str:
        captions = []
        for backend in self.backends:
            try:
                captions.append(parse_caption(backend.answer(prompt)))
            except ValueError as error:
                logger.info("%s: %s", backend.name, error)
        if not captions:
            raise ValueError("no backend gave a well-formed caption")
        scores = [sum(_token_f1(c, o) for j, o in enumerate(captions) if j != i) for i, c in enumerate(captions)]
        best = int(np.argmax(scores))
        return '{"caption": "%s"}' % captions[best].replace('"', "'")

    def usage(self) -> dict:
        return {b.name: b.usage() for b in self.backends}
