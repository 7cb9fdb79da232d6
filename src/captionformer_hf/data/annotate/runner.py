"""Batch caption synthesis over a whole dataset: resumable (JSONL cache keyed by video/track id; a killed run
restarts where it stopped, nothing lost or duplicated), concurrent with a rate limit, retries with exponential
backoff, malformed answers retried then flagged, progress and usage shown with tqdm; captions merged back into the
dataset schema."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from .backends import Backend
from .prompting import build_object_prompts, parse_caption

logger = logging.getLogger(__name__)


class CaptionCache:
    """Append-only JSONL of ``{"video_id", "track_id", "caption", "status", "backend", "attempts", "error"}``; each
    line is flushed and fsynced, a torn last line (a kill mid-write) is ignored on reload."""

    def __init__(self, path: str):
        self.path = path
        self.entries: dict[tuple[str, int], dict] = {}
        self._lock = threading.Lock()
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # torn line from an interrupted write
                    self.entries[(str(entry["video_id"]), int(entry["track_id"]))] = entry
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                torn = False
                if size > 0:
                    f.seek(-1, os.SEEK_END)
                    torn = f.read(1) != b"\n"
            if torn:  # end the torn line, or the next entry would be glued to it and lost
                with open(path, "a", encoding="utf-8") as f:
                    f.write("\n")
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)

    def __contains__(self, key) -> bool:
        return key in self.entries

    def add(self, entry: dict) -> None:
        with self._lock:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.entries[(str(entry["video_id"]), int(entry["track_id"]))] = entry


class RateLimiter:
    """At most ``per_second`` calls a second across threads."""

    def __init__(self, per_second: float | None):
        self.interval = 1.0 / per_second if per_second else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


def caption_one(backend: Backend, prompt, limiter: RateLimiter, max_attempts: int = 3, backoff: float = 1.0,
                sleep=time.sleep) -> dict:
    """Ask until a well-formed caption comes back; transport errors back off exponentially."""
    error = None
    for attempt in range(1, max_attempts + 1):
        limiter.wait()
        try:
            answer = backend.answer(prompt)
        except Exception as exc:  # network / quota / model errors of any backend
            error = f"{type(exc).__name__}: {exc}"
            sleep(backoff * 2 ** (attempt - 1))
            continue
        try:
            caption = parse_caption(answer)
        except ValueError as exc:
            error = f"malformed answer: {exc}"
            continue
        return {"video_id": prompt.video_id, "track_id": prompt.track_id, "caption": caption, "status": "ok",
                "backend": backend.name, "attempts": attempt, "error": None}
    return {"video_id": prompt.video_id, "track_id": prompt.track_id, "caption": None, "status": "flagged",
            "backend": backend.name, "attempts": max_attempts, "error": error}


def annotate_dataset(dataset, backend: Backend, cache_path: str, num_frames: int = 4, visual: str = "box",
                     concurrency: int = 4, requests_per_second: float | None = None, max_attempts: int = 3,
                     backoff: float = 1.0, retry_flagged: bool = False, progress: bool = True, limit: int | None = None):
    """Caption every track of ``dataset`` not yet in the cache (at most ``limit`` new ones); returns the cache. A
    killed run resumes: cached tracks are skipped (flagged ones too, unless ``retry_flagged``). A cache written by
    another backend is refused (its captions would pass for this backend's)."""
    from ..loader import decode_example_frames

    from ...processing.trajectory_captionformer import check_positive_ints

    check_positive_ints(num_frames=num_frames, concurrency=concurrency, max_attempts=max_attempts)
    check_positive_ints(True, limit=limit)  # None: no limit
    cache = CaptionCache(cache_path)
    others = sorted({str(e.get("backend")) for e in cache.entries.values() if e.get("backend") != backend.name})
    if others:
        raise ValueError(f"the cache {cache_path} holds captions of backend {', '.join(others)}, not "
                         f"{backend.name}: use another --cache for this backend (or the same backend)")
    limiter = RateLimiter(requests_per_second)
    bar = None
    if progress:
        from transformers.utils.logging import tqdm  # honours disable_progress_bar / HF_HUB_DISABLE_PROGRESS_BARS

        bar = tqdm(desc=f"captions ({backend.name})", unit="track")
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for example in dataset:
            pending = [t for t in example["trajectories"] if _needs(cache, example["video_id"], t["track_id"], retry_flagged)]
            if not pending:
                continue
            frames = decode_example_frames(example)
            prompts = [p for p in build_object_prompts(example, frames, num_frames, visual)
                       if _needs(cache, p.video_id, p.track_id, retry_flagged)]
            if limit is not None:
                prompts = prompts[: limit - done]
            futures = [pool.submit(caption_one, backend, p, limiter, max_attempts, backoff) for p in prompts]
            for future in as_completed(futures):
                entry = future.result()
                cache.add(entry)
                done += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({"flagged": sum(e["status"] == "flagged" for e in cache.entries.values()), **backend.usage()})
            if limit is not None and done >= limit:
                break
    if bar is not None:
        bar.close()
    return cache


def _needs(cache, video_id, track_id, retry_flagged) -> bool:
    entry = cache.entries.get((str(video_id), int(track_id)))
    return entry is None or (retry_flagged and entry["status"] != "ok")


def merge_captions(dataset, cache: CaptionCache, overwrite: bool = True):
    """The dataset with each track's ``caption`` taken from the cache (flagged or missing tracks keep theirs)."""

    def apply(example):
        tracks = []
        for track in example["trajectories"]:
            entry = cache.entries.get((str(example["video_id"]), int(track["track_id"])))
            if entry is not None and entry["status"] == "ok" and (overwrite or not track.get("caption")):
                track = {**track, "caption": entry["caption"]}
            tracks.append(track)
        return {"trajectories": tracks}

    return dataset.map(apply)
