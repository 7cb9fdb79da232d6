"""VLM caption synthesis: prompts, drawn frames, backends (template, transformers, Gemini with a fake transport),
voting, resumable batch runs, malformed answers."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from captionformer_hf.data.annotate import (
    SYSTEM_PROMPT,
    CaptionCache,
    GeminiBackend,
    TemplateBackend,
    TransformersBackend,
    VotingBackend,
    annotate_dataset,
    build_object_prompts,
    caption_one,
    draw_box,
    merge_captions,
    parse_caption,
)
from captionformer_hf.data.annotate.runner import RateLimiter
from captionformer_hf.data.synthetic import build_synthetic_dataset

H, W = 40, 60


def example():
    frames = np.zeros((6, H, W, 3), np.uint8)
    tracks = [
        {"track_id": 3, "category": "dog", "caption": "", "frames": [
            {"frame_index": f, "box": [5.0 + 4 * f, 10.0, 10.0, 8.0], "mask_rle": None} for f in range(6)]},
        {"track_id": 4, "category": "cat", "caption": "", "frames": [{"frame_index": 2, "box": [40.0, 20.0, 6.0, 6.0], "mask_rle": None}]},
    ]
    return {"video_id": "v", "height": H, "width": W, "num_frames": 6, "trajectories": tracks}, frames


def test_prompt_contents_for_a_known_object():
    ex, frames = example()
    dog, cat = build_object_prompts(ex, frames, num_frames=4)
    assert dog.frame_indices == [0, 2, 3, 5]  # 4 frames spread uniformly over its life
    assert "Category of the marked object: dog." in dog.user
    assert "Frame 0: box (x_min=5, y_min=10, x_max=15, y_max=18) in a 60x40 frame, area 3.3% of the frame." in dog.user
    assert "Other objects in the video: cat." in dog.user
    assert cat.frame_indices == [2] and "Other objects in the video: dog." in cat.user
    assert "Never mention the rectangle" in dog.system and dog.system == SYSTEM_PROMPT
    assert '{"caption"' in SYSTEM_PROMPT  # format and few-shot examples


def test_drawn_frames_have_box_pixels_where_expected():
    ex, frames = example()
    dog = build_object_prompts(ex, frames, num_frames=4)[0]
    drawn = dog.frames[1]  # frame 2: box x 13..22, y 10..17
    assert (drawn[10, 13:23] == [255, 0, 0]).all() and (drawn[17, 13:23] == [255, 0, 0]).all()
    assert (drawn[10:18, 13] == [255, 0, 0]).all() and (drawn[10:18, 22] == [255, 0, 0]).all()
    assert (drawn[13:15, 16:19] == 0).all()  # inside is untouched
    assert (frames[2] == 0).all()  # originals untouched
    clipped = draw_box(np.zeros((10, 10, 3), np.uint8), [-5, -5, 8, 8])
    assert (clipped[2, 0:3] == [255, 0, 0]).all()


def test_parse_caption_accepts_and_rejects():
    assert parse_caption('{"caption": "a dog running to the right."}') == "a dog running to the right"
    assert parse_caption('```json\n{"caption": "a cat sitting on a mat"}\n```') == "a cat sitting on a mat"
    assert parse_caption("a red car driving away") == "a red car driving away"
    for bad in ("", "   ", '{"caption": ', '{"caption": "dog"}', '{"caption": "a dog inside the red box moving"}'):
        with pytest.raises(ValueError):
            parse_caption(bad)


def test_template_backend_follows_the_box_motion():
    ex, frames = example()
    dog, cat = build_object_prompts(ex, frames)
    assert parse_caption(TemplateBackend().answer(dog)) == "a dog moving to the right"
    assert parse_caption(TemplateBackend().answer(cat)) == "a cat standing still"


class Flaky:
    name = "flaky"

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = 0

    def answer(self, prompt):
        self.calls += 1
        value = self.answers.pop(0)
        if isinstance(value, Exception):
            raise value
        return value

    def usage(self):
        return {}


def test_malformed_answers_are_retried_then_flagged():
    ex, frames = example()
    prompt = build_object_prompts(ex, frames)[0]
    sleeps = []
    entry = caption_one(Flaky([ConnectionError("down"), "{broken", '{"caption": "a dog running fast"}']), prompt,
                        RateLimiter(None), max_attempts=3, backoff=0.5, sleep=sleeps.append)
    assert entry["status"] == "ok" and entry["caption"] == "a dog running fast" and entry["attempts"] == 3
    assert sleeps == [0.5]  # backoff after the transport error only
    entry = caption_one(Flaky(["", "no", "{x"]), prompt, RateLimiter(None), max_attempts=3, sleep=lambda s: None)
    assert entry["status"] == "flagged" and entry["caption"] is None and "malformed" in entry["error"]


def test_resume_after_an_interrupted_run(tmp_path):
    dataset = build_synthetic_dataset(4, seed=9, splits={"train": 1.0})["train"]
    total = sum(len(ex["trajectories"]) for ex in dataset)
    cache_path = str(tmp_path / "cache.jsonl")

    class Counting(TemplateBackend):
        calls = 0

        def answer(self, prompt):
            Counting.calls += 1
            return super().answer(prompt)

    annotate_dataset(dataset, Counting(), cache_path, concurrency=2, progress=False, limit=1)
    first = Counting.calls
    assert first == 1  # exactly the limit, even when a video holds more tracks
    with open(cache_path, "a") as f:
        f.write('{"video_id": "torn')  # a kill in the middle of a write
    cache = annotate_dataset(dataset, Counting(), cache_path, concurrency=2, progress=False)
    assert Counting.calls == total  # nothing asked twice
    lines = [json.loads(l) for l in open(cache_path) if l.strip().endswith("}")]
    keys = [(l["video_id"], l["track_id"]) for l in lines]
    assert len(keys) == len(set(keys)) == total  # nothing lost or duplicated
    merged = merge_captions(dataset, cache)
    for original, new in zip(dataset, merged):
        for track in new["trajectories"]:
            assert track["caption"] == cache.entries[(original["video_id"], track["track_id"])]["caption"]
    assert len(CaptionCache(cache_path).entries) == total


def test_annotate_refuses_bad_limits_and_another_backends_cache(tmp_path):
    dataset = build_synthetic_dataset(2, seed=9, splits={"train": 1.0})["train"]
    cache_path = str(tmp_path / "cache.jsonl")
    for kwargs, message in (({"limit": 0}, "`limit` must be a positive integer"),
                            ({"num_frames": 0}, "`num_frames` must be a positive integer")):
        with pytest.raises(ValueError, match=message):
            annotate_dataset(dataset, TemplateBackend(), cache_path, progress=False, **kwargs)
    annotate_dataset(dataset, TemplateBackend(), cache_path, progress=False)
    size = len(open(cache_path).read())

    class Other(TemplateBackend):
        name = "other-vlm"

    with pytest.raises(ValueError, match="holds captions of backend template, not other-vlm"):
        annotate_dataset(dataset, Other(), cache_path, progress=False)
    for _ in range(3):  # reloading a complete cache leaves it as it is (no blank line appended)
        CaptionCache(cache_path)
    assert len(open(cache_path).read()) == size


def test_voting_picks_the_consensus():
    ex, frames = example()
    prompt = build_object_prompts(ex, frames)[0]
    backends = [
        Flaky(['{"caption": "a brown dog running to the right"}']),
        Flaky(['{"caption": "a dog running to the right quickly"}']),
        Flaky(['{"caption": "a cat sleeping on a sofa"}']),
        Flaky(["{malformed"]),
    ]
    for i, b in enumerate(backends):
        b.name = f"b{i}"
    answer = VotingBackend(backends).answer(prompt)
    assert parse_caption(answer) in ("a brown dog running to the right", "a dog running to the right quickly")
    with pytest.raises(ValueError):
        VotingBackend([TemplateBackend()])


def test_gemini_request_construction_with_a_fake_transport(monkeypatch):
    ex, frames = example()
    prompt = build_object_prompts(ex, frames)[0]
    requests = []

    class Models:
        def generate_content(self, **kwargs):
            requests.append(kwargs)
            return SimpleNamespace(text='{"caption": "a dog trotting to the right"}',
                                   usage_metadata=SimpleNamespace(prompt_token_count=120, candidates_token_count=9))

    backend = GeminiBackend("gemini-2.0-flash", client=SimpleNamespace(models=Models()))
    assert parse_caption(backend.answer(prompt)) == "a dog trotting to the right"
    (request,) = requests
    assert request["model"] == "gemini-2.0-flash"
    assert request["config"]["system_instruction"] == SYSTEM_PROMPT
    parts = request["contents"][0]["parts"]
    assert [p["inline_data"]["mime_type"] for p in parts[:-1]] == ["image/jpeg"] * 4
    assert parts[-1]["text"] == prompt.user
    assert backend.usage() == {"input_tokens": 120, "output_tokens": 9}
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(ValueError, match="API key"):
        GeminiBackend()


def test_transformers_backend_with_a_tiny_random_vlm():
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    from captionformer_hf.toy import toy_config, toy_tokenizer

    tokenizer = toy_tokenizer()
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=2)
    image_token = tokenizer.convert_tokens_to_ids("<image>")  # added by the processor
    base = toy_config(text_overrides={"max_position_embeddings": 512})  # the prompt is a few hundred tokens
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(Blip2Config(
        vision_config=base.vision_config.to_dict(), qformer_config=base.qformer_config.to_dict(),
        text_config=base.text_config.to_dict(), num_query_tokens=2, image_token_index=image_token,
    ))
    backend = TransformersBackend(model, processor, max_new_tokens=5, prompt_template="{user}")
    ex, frames = example()
    prompt = build_object_prompts(ex, frames)[0]
    answer = backend.answer(prompt)
    assert isinstance(answer, str)
    assert backend.usage()["generated_tokens"] >= 1
    # a random model's answer is malformed or not: either way the runner handles it
    entry = caption_one(backend, prompt, RateLimiter(None), max_attempts=1)
    assert entry["status"] in ("ok", "flagged")
