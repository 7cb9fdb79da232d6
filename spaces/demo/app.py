"""CaptionFormer demo Space: segment, track and caption every object of a video.

The model is loaded once at start: the Hub id or path in the CAPTIONFORMER_MODEL environment variable, else the
tiny model shipped with captionformer_hf (trained on synthetic coloured shapes).
"""

from __future__ import annotations

import json
import os
import tempfile

import gradio as gr
import numpy as np

from captionformer_hf.data.synthetic import SyntheticVideoConfig, generate_video, write_video
from captionformer_hf.defaults import load_pipeline
from captionformer_hf.visualization import detections_by_frame, draw_frame, render_overlay

MAX_FRAMES = int(os.environ.get("CAPTIONFORMER_MAX_FRAMES", "300"))
MAX_UPLOAD_MB = int(os.environ.get("CAPTIONFORMER_MAX_UPLOAD_MB", "50"))
PIPE = load_pipeline(os.environ.get("CAPTIONFORMER_MODEL") or None)
EXAMPLE_DIR = os.environ.get("CAPTIONFORMER_EXAMPLES", os.path.join(tempfile.gettempdir(), "captionformer-examples"))
COLUMNS = ["track id", "category", "score", "first frame", "last frame", "caption"]


def make_examples(count: int = 3) -> list[str]:
    """Synthetic example videos (the domain of the default model), written once."""
    os.makedirs(EXAMPLE_DIR, exist_ok=True)
    paths = []
    for seed in range(count):
        path = os.path.join(EXAMPLE_DIR, f"shapes-{seed}.mp4")
        if not os.path.exists(path):
            video = generate_video(1000 + seed, SyntheticVideoConfig(num_frames=32, height=192, width=256,
                                                                       min_size=28, max_size=52))
            write_video(video["frames"], path, fps=video["fps"])
        paths.append(path)
    return paths


def caption_video(video_path, threshold, fps, max_frames, progress=gr.Progress(track_tqdm=True)):
    if not video_path:
        raise gr.Error("Upload a video or pick an example first.")
    if os.path.getsize(video_path) > MAX_UPLOAD_MB * 1024 * 1024:
        raise gr.Error(f"The video is larger than {MAX_UPLOAD_MB} MB.")
    max_frames = int(max_frames)
    if max_frames > MAX_FRAMES:
        raise gr.Error(f"At most {MAX_FRAMES} frames can be processed here.")
    kwargs = {"threshold": float(threshold), "max_frames": max_frames, "progress": True}
    if fps:
        kwargs["fps"] = float(fps)
    try:
        result = PIPE(video_path, **kwargs)
    except (ValueError, TypeError) as error:
        raise gr.Error(str(error)) from error
    work = tempfile.mkdtemp(prefix="captionformer-")
    frames = PIPE.processor.video_processor.open_video(video_path, fps=kwargs.get("fps"), max_frames=max_frames)
    overlay_path = os.path.join(work, "overlay.mp4")
    render_overlay(frames, result, overlay_path, fps=(kwargs.get("fps") or frames.video_fps or 8))
    key_frame = None
    by_frame = detections_by_frame(result)
    if by_frame:
        key_index = max(by_frame, key=lambda i: len(by_frame[i]))
        for index, frame in PIPE.processor.video_processor.open_video(video_path):
            if index == key_index:
                key_frame = draw_frame(frame, by_frame[index])
                break
    rows = [
        [t["track_id"], t.get("category") or "", round(t["score"], 3),
         t["frames"][0]["frame_index"] if t["frames"] else None,
         t["frames"][-1]["frame_index"] if t["frames"] else None, t["caption"]]
        for t in result["trajectories"]
    ]
    json_path = os.path.join(work, "captions.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(result, f)
    summary = f"{len(rows)} trajectories over {result['num_frames']} frames ({result['width']}x{result['height']})."
    return overlay_path, key_frame if key_frame is not None else np.zeros((8, 8, 3), np.uint8), rows, json_path, summary


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="CaptionFormer: dense video object captioning") as demo:
        gr.Markdown(
            "# CaptionFormer\nSegment, detect, track and caption every object of a video. The default model is a "
            "tiny toy-domain model (coloured shapes); set `CAPTIONFORMER_MODEL` to a real checkpoint."
        )
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Video", sources=["upload"], elem_id="input-video")
                threshold = gr.Slider(0.0, 1.0, value=PIPE.model.config.score_threshold, step=0.05, label="Score threshold")
                fps = gr.Number(value=0, label="Sample at fps (0 = every frame)")
                max_frames = gr.Slider(1, MAX_FRAMES, value=min(120, MAX_FRAMES), step=1, label="Max frames")
                run = gr.Button("Caption", variant="primary", elem_id="run-button")
            with gr.Column():
                overlay = gr.Video(label="Overlay", elem_id="overlay-video")
                key_frame = gr.Image(label="Key frame", elem_id="key-frame")
        summary = gr.Markdown(elem_id="summary")
        table = gr.Dataframe(headers=COLUMNS, label="Trajectories", elem_id="trajectories")
        download = gr.File(label="JSON", elem_id="json-download")
        gr.Examples(examples=[[p] for p in make_examples()], inputs=[video])
        run.click(caption_video, inputs=[video, threshold, fps, max_frames],
                  outputs=[overlay, key_frame, table, download, summary], api_name="caption")
    return demo


demo = build_demo()

if __name__ == "__main__":
    demo.queue(max_size=8).launch(max_file_size=f"{MAX_UPLOAD_MB}mb",
                                  server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
