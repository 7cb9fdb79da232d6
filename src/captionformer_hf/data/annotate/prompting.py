"""The paper's data engine, prompt side: boxes drawn on uniformly sampled frames (visual prompt), a static system
prompt (instructions, rules, format, few-shot examples) and a per-object user prompt (box coordinates, area,
category, the other categories in the frame)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

SYSTEM_PROMPT = """You write one caption for one object in a short video.
The object is marked with a red rectangle on each of the frames you are given (frames sampled uniformly over the
object's life, in temporal order).

Rules:
- Describe only the marked object: what it is, its appearance, and what it does over time (its motion or action).
- Never mention the rectangle, the box, the marking, the frames or the video itself.
- One sentence, 6 to 20 words, present tense, no speculation, starting with "a" or "an".
- Use the category name given in the text when it fits what you see.
- Answer with JSON only: {"caption": "<the caption>"}

Examples:
{"caption": "a brown dog running across the lawn toward a thrown ball"}
{"caption": "a woman in a red coat walking to the left while holding an umbrella"}
{"caption": "a small white car parked at the side of the road"}"""


@dataclass
class ObjectPrompt:
    """Everything sent to a VLM for one object: the frames with the box drawn, and the two text prompts."""

    video_id: str
    track_id: int
    frames: list = field(default_factory=list)  # uint8 (H, W, 3) arrays with the box drawn
    frame_indices: list = field(default_factory=list)
    system: str = SYSTEM_PROMPT
    user: str = ""


def sample_indices(frame_indices: list[int], count: int) -> list[int]:
    """``count`` entries of ``frame_indices`` spread uniformly (all of them if there are fewer)."""
    if len(frame_indices) <= count:
        return list(frame_indices)
    positions = np.linspace(0, len(frame_indices) - 1, count).round().astype(int)
    return [frame_indices[i] for i in positions]


def user_prompt(track: dict, frame_entries: list[dict], other_categories: list[str], height: int, width: int) -> str:
    """Textual channel: box coordinates (pixels, x_min y_min x_max y_max) per sampled frame, area as a share of the
    frame, the category and the categories of the other objects."""
    lines = [f"Category of the marked object: {track.get('category') or 'unknown'}."]
    for entry in frame_entries:
        x, y, w, h = entry["box"]
        area = 100.0 * w * h / float(height * width)
        lines.append(
            f"Frame {entry['frame_index']}: box (x_min={x:.0f}, y_min={y:.0f}, x_max={x + w:.0f}, y_max={y + h:.0f}) "
            f"in a {width}x{height} frame, area {area:.1f}% of the frame."
        )
    others = sorted(set(c for c in other_categories if c))
    lines.append("Other objects in the video: " + (", ".join(others) if others else "none") + ".")
    lines.append("Write the caption of the marked object.")
    return "\n".join(lines)


def draw_box(frame: np.ndarray, box, color=(255, 0, 0), thickness: int = 2) -> np.ndarray:
    """A copy of ``frame`` with ``box`` ``[x, y, w, h]`` drawn (clipped to the frame)."""
    out = frame.copy()
    height, width = out.shape[:2]
    x, y, w, h = box
    x0, y0 = int(round(max(0, x))), int(round(max(0, y)))
    x1, y1 = int(round(min(width - 1, x + w - 1))), int(round(min(height - 1, y + h - 1)))
    if x1 < x0 or y1 < y0:
        return out
    t = thickness
    out[y0 : min(y0 + t, y1 + 1), x0 : x1 + 1] = color
    out[max(y1 - t + 1, y0) : y1 + 1, x0 : x1 + 1] = color
    out[y0 : y1 + 1, x0 : min(x0 + t, x1 + 1)] = color
    out[y0 : y1 + 1, max(x1 - t + 1, x0) : x1 + 1] = color
    return out


def draw_contour(frame: np.ndarray, mask: np.ndarray, color=(255, 0, 0)) -> np.ndarray:
    """A copy of ``frame`` with the outline of ``mask`` drawn (the paper's weaker mask-contour visual prompt)."""
    out = frame.copy()
    mask = mask.astype(bool)
    interior = mask.copy()
    interior[1:, :] &= mask[:-1, :]
    interior[:-1, :] &= mask[1:, :]
    interior[:, 1:] &= mask[:, :-1]
    interior[:, :-1] &= mask[:, 1:]
    out[mask & ~interior] = color
    return out


def build_object_prompts(example: dict, frames: np.ndarray, num_frames: int = 4, visual: str = "box") -> list[ObjectPrompt]:
    """One :class:`ObjectPrompt` per track of a DVOC example (frames decoded: ``uint8 (T, H, W, 3)``)."""
    if visual not in ("box", "contour"):
        raise ValueError(f"`visual` must be 'box' or 'contour', got {visual!r}")
    height, width = frames.shape[1:3]
    prompts = []
    for track in example["trajectories"]:
        by_index = {f["frame_index"]: f for f in track["frames"]}
        chosen = sample_indices(sorted(by_index), num_frames)
        if not chosen:
            continue
        drawn = []
        for index in chosen:
            entry = by_index[index]
            if visual == "contour" and entry.get("mask_rle"):
                from ...processing.trajectory_captionformer import rle_decode

                mask = rle_decode(entry["mask_rle"], height, width)
                drawn.append(draw_contour(frames[index], mask))
            else:
                drawn.append(draw_box(frames[index], entry["box"]))
        others = [t.get("category") for t in example["trajectories"] if t is not track]
        prompts.append(ObjectPrompt(
            video_id=str(example["video_id"]), track_id=int(track["track_id"]), frames=drawn, frame_indices=chosen,
            user=user_prompt(track, [by_index[i] for i in chosen], others, height, width),
        ))
    return prompts


def parse_caption(answer: str) -> str:
    """The caption in a VLM answer (JSON ``{"caption": ...}``, possibly in a code fence, or plain text); raises
    ``ValueError`` for a malformed answer (empty, too short/long, or mentioning the drawn box)."""
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError("empty answer")
    text = answer.strip()
    if text.startswith("```"):
        text = text.strip("`")
        text = text[text.find("{") :] if "{" in text else text
    caption = None
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        try:
            caption = json.loads(text[start : end + 1]).get("caption")
        except (json.JSONDecodeError, AttributeError):
            caption = None
    if caption is None:
        if "{" in text:
            raise ValueError(f"malformed JSON answer: {answer[:80]!r}")
        caption = text
    caption = " ".join(str(caption).split()).strip().rstrip(".")
    words = caption.split()
    if not 3 <= len(words) <= 40:
        raise ValueError(f"caption of {len(words)} words: {caption!r}")
    lowered = caption.lower()
    if any(word in lowered for word in ("rectangle", "bounding box", "red box", "the box", "marked")):
        raise ValueError(f"caption mentions the drawn box: {caption!r}")
    return caption
