"""The demo Space: segment, track and caption every object of an uploaded video.

``build_demo()`` returns the ``gr.Blocks`` app. Every request is bounded: the upload size, the frames processed, the
frames decoded (whatever the sampling rate), the resolution (larger frames are downscaled while decoding) and the
time; every bad input is answered with a ``gr.Error`` naming what to change. Settings come from the arguments or
from the environment of the Space: ``CAPTIONFORMER_MODEL`` (Hub id or path; default the embedded toy model),
``CAPTIONFORMER_MAX_FRAMES`` (300), ``CAPTIONFORMER_MAX_UPLOAD_MB`` (50), ``CAPTIONFORMER_MAX_SIDE`` (640),
``CAPTIONFORMER_MAX_DECODED_FRAMES`` (3000), ``CAPTIONFORMER_MAX_SECONDS`` (120), ``CAPTIONFORMER_EXAMPLES`` (folder of
the generated examples).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

COLUMNS = ["track id", "category", "score", "first frame", "last frame", "caption"]


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"${name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass
class DemoLimits:
    """Bounds of one request (see the module docstring)."""

    max_frames: int = field(default_factory=lambda: _env_int("CAPTIONFORMER_MAX_FRAMES", 300))
    max_upload_mb: int = field(default_factory=lambda: _env_int("CAPTIONFORMER_MAX_UPLOAD_MB", 50))
    max_side: int = field(default_factory=lambda: _env_int("CAPTIONFORMER_MAX_SIDE", 640))
    max_decoded_frames: int = field(default_factory=lambda: _env_int("CAPTIONFORMER_MAX_DECODED_FRAMES", 3000))
    max_seconds: int = field(default_factory=lambda: _env_int("CAPTIONFORMER_MAX_SECONDS", 120))


def make_examples(folder: str | None = None, count: int = 3) -> list[str]:
    """Synthetic example videos (the domain of the default model: the videos of ``captionformer sample-video``,
    seeds 1000 on), written once."""
    from ..data.synthetic import generate_video, sample_video_config, write_video

    folder = folder or os.environ.get("CAPTIONFORMER_EXAMPLES") or os.path.join(tempfile.gettempdir(),
                                                                                 "captionformer-examples")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for seed in range(count):
        path = os.path.join(folder, f"sample-{1000 + seed}.mp4")
        if not os.path.exists(path):
            video = generate_video(1000 + seed, sample_video_config())
            write_video(video["frames"], path, fps=video["fps"])
        paths.append(path)
    return paths


def _number(value, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value:g}")
    return float(value)


class DemoHandler:
    """The request handler of the demo (a class so that tests can call it with a given pipeline and limits)."""

    RESULT_SECONDS = 600  # a request's files (overlay, JSON) are kept this long for gradio to serve, then removed

    def __init__(self, pipe, limits: DemoLimits | None = None, work_root: str | None = None):
        self.pipe = pipe
        self.limits = limits or DemoLimits()
        self.work_root = work_root or os.path.join(tempfile.gettempdir(), f"captionformer-demo-{os.getpid()}")

    def _work_folder(self) -> str:
        """A folder for this request's files; those of requests older than ``RESULT_SECONDS`` are removed first (no
        request leaves files behind for good)."""
        import shutil

        os.makedirs(self.work_root, exist_ok=True)
        now = time.time()
        for name in os.listdir(self.work_root):
            path = os.path.join(self.work_root, name)
            try:
                if now - os.path.getmtime(path) > self.RESULT_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass
        return tempfile.mkdtemp(prefix="request-", dir=self.work_root)

    def check(self, video_path, threshold, fps, max_frames):
        """The request's inputs as ``(path, threshold, fps or None, max_frames)``; ``ValueError`` for bad ones."""
        limits = self.limits
        if not video_path:
            raise ValueError("Upload a video or pick an example first.")
        if not isinstance(video_path, str) or not os.path.isfile(video_path):
            raise ValueError("The upload did not arrive; upload the video again.")
        size_mb = os.path.getsize(video_path) / 2**20
        if size_mb > limits.max_upload_mb:
            raise ValueError(f"The video is {size_mb:.0f} MB; at most {limits.max_upload_mb} MB can be processed here.")
        threshold = _number(threshold, "The score threshold", 0.0, 1.0)
        fps = _number(fps if fps is not None else 0, "The sampling rate (fps)", 0.0, 240.0) or None
        max_frames = _number(max_frames, "Max frames", 1, limits.max_frames)
        if max_frames != int(max_frames):
            raise ValueError(f"Max frames must be a whole number, got {max_frames:g}")
        return video_path, threshold, fps, int(max_frames)

    def threshold_arguments(self, threshold: float) -> dict:
        """The slider's score threshold as the model's own setting: the paper mode's per-clip pruning threshold,
        a release-mode box model's presence threshold; a release-mode mask model has neither (it keeps its best
        tracks by video score), so the slider does not apply."""
        config = self.pipe.model.config
        if config.video_inference_mode != "release":
            return {"threshold": threshold}
        return {"presence_threshold": threshold} if config.box_only else {}

    def open(self, path, fps, max_frames, deadline):
        return self.pipe.processor.video_processor.open_video(
            path, fps=fps, max_frames=max_frames, max_side=self.limits.max_side,
            max_decoded_frames=self.limits.max_decoded_frames, deadline=deadline,
        )

    def __call__(self, video_path, threshold, fps, max_frames, progress=None):
        """``(overlay video path, key frame, table rows, JSON path, summary)`` of one request."""
        from ..visualization import detections_by_frame, draw_frame, render_overlay

        import shutil

        path, threshold, fps, max_frames = self.check(video_path, threshold, fps, max_frames)
        deadline = time.monotonic() + self.limits.max_seconds
        work = self._work_folder()
        try:
            frames = self.open(path, fps, max_frames, deadline)
            result = self.pipe(frames, **self.threshold_arguments(threshold), progress=progress is not None)
            overlay_path = os.path.join(work, "overlay.mp4")
            render_overlay(self.open(path, fps, max_frames, deadline), result, overlay_path,
                           fps=fps or frames.video_fps or 8)
            by_frame = detections_by_frame(result)
            key_frame = np.zeros((8, 8, 3), np.uint8)
            if by_frame:
                key_index = max(by_frame, key=lambda i: len(by_frame[i]))
                for index, frame in self.open(path, fps, max_frames, deadline):
                    if index == key_index:
                        key_frame = draw_frame(frame, by_frame[index],
                                               source_size=(result["height"], result["width"]))
                        break
        except ValueError as error:
            shutil.rmtree(work, ignore_errors=True)
            message = str(error)
            if "time limit" in message:
                message = (f"The video took longer than {self.limits.max_seconds} s to process; try fewer frames or "
                           "a lower sampling rate.")
            raise ValueError(message) from error
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        rows = [
            [t["track_id"], t.get("category") or "", round(t["score"], 3),
             t["frames"][0]["frame_index"] if t["frames"] else None,
             t["frames"][-1]["frame_index"] if t["frames"] else None, t["caption"]]
            for t in result["trajectories"]
        ]
        json_path = os.path.join(work, "captions.json")
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(result, f)
        summary = (f"{len(rows)} trajectories over {result['num_frames']} frames ({result['width']}x{result['height']}"
                   + (", downscaled while decoding" if frames.downscaled else "") + ").")
        return overlay_path, key_frame, rows, json_path, summary


def build_demo(model: str | None = None, limits: DemoLimits | None = None, pipe=None, examples: list[str] | None = None):
    """The demo app (``gr.Blocks``): ``pipe`` or a pipeline of ``model`` (default ``$CAPTIONFORMER_MODEL`` or the
    embedded model), bounded by ``limits``."""
    import gradio as gr

    from ..defaults import load_pipeline

    limits = limits or DemoLimits()
    pipe = pipe or load_pipeline(model or os.environ.get("CAPTIONFORMER_MODEL") or None)
    handler = DemoHandler(pipe, limits)

    def caption_video(video_path, threshold, fps, max_frames, progress=gr.Progress(track_tqdm=True)):
        try:
            return handler(video_path, threshold, fps, max_frames, progress)
        except (ValueError, TypeError) as error:
            raise gr.Error(str(error)) from error
        except Exception as error:  # noqa: BLE001 - the user gets a message, the log the traceback
            logger.exception("demo request failed")
            raise gr.Error(f"The video could not be processed ({type(error).__name__}: {error}).") from error

    with gr.Blocks(title="CaptionFormer: dense video object captioning") as demo:
        gr.Markdown(
            "# CaptionFormer\nSegment, detect, track and caption every object of a video. The default model is a "
            "tiny toy-domain model (coloured shapes); set `CAPTIONFORMER_MODEL` to a real checkpoint. "
            f"Limits: {limits.max_upload_mb} MB, {limits.max_frames} frames processed, {limits.max_decoded_frames} "
            f"frames decoded, frames larger than {limits.max_side} px downscaled, {limits.max_seconds} s a request."
        )
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Video", sources=["upload"], elem_id="input-video")
                config = pipe.model.config
                release = config.video_inference_mode == "release"
                threshold = gr.Slider(0.0, 1.0, step=0.05,
                                      value=config.presence_threshold if release else config.score_threshold,
                                      label="Presence threshold" if release else "Score threshold",
                                      interactive=not release or config.box_only)
                fps = gr.Number(value=0, minimum=0, maximum=240, label="Sample at fps (0 = every frame)")
                max_frames = gr.Slider(1, limits.max_frames, value=min(120, limits.max_frames), step=1,
                                       label="Max frames")
                run = gr.Button("Caption", variant="primary", elem_id="run-button")
            with gr.Column():
                overlay = gr.Video(label="Overlay", elem_id="overlay-video")
                key_frame = gr.Image(label="Key frame", elem_id="key-frame")
        summary = gr.Markdown(elem_id="summary")
        table = gr.Dataframe(headers=COLUMNS, label="Trajectories", elem_id="trajectories")
        download = gr.File(label="JSON", elem_id="json-download")
        gr.Examples(examples=[[p] for p in (examples or make_examples())], inputs=[video])
        run.click(caption_video, inputs=[video, threshold, fps, max_frames],
                  outputs=[overlay, key_frame, table, download, summary], api_name="caption", concurrency_limit=1)
    demo.max_file_size = f"{limits.max_upload_mb}mb"
    return demo


def launch(demo=None, limits: DemoLimits | None = None, **kwargs):
    """Launch as a Space does: a bounded queue, the upload limit enforced by gradio too. ``demo``: the app of
    :func:`build_demo` (default: built here with ``limits``); ``kwargs`` go to ``gradio.Blocks.launch``."""
    limits = limits or DemoLimits()
    demo = demo if demo is not None else build_demo(limits=limits)
    kwargs.setdefault("server_name", os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    return demo.queue(max_size=8).launch(max_file_size=f"{limits.max_upload_mb}mb", **kwargs)
