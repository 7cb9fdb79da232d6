"""The CHOTA metric Space: paste or upload predictions and references, pick the options, compute.

``evaluate.utils.launch_gradio_widget`` targets the gradio 3 API (``gr.inputs``), which current gradio no longer has,
so this is the equivalent widget written with ``gr.Blocks``. Inputs are only what the user pastes or uploads: pasted
text is parsed as JSON (never opened as a path on the server), an upload is read from the temporary file gradio
made for it (size-capped), and both must hold a JSON list or object. Every error reaches the user as a message,
after the previous result is cleared. Each request runs in a worker process under a deadline
(``CHOTA_MAX_SECONDS``, 120 s): a request that runs over is stopped with its worker, and the others go on.

Self-contained: the built Space (``captionformer space build chota``) runs this file beside the metric's own files
(``chota.py``, ``formats.py``...) with gradio, evaluate, numpy and scipy, without captionformer_hf or torch.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading

try:  # inside captionformer_hf
    from ..metrics.formats import load_videos
except ImportError:  # the built Space: this file beside the metric's files
    from formats import load_videos

FIELDS = ["CHOTA", "DetA", "AssA", "CapA", "HOTA", "LocA", "DetRe", "DetPr", "AssRe", "AssPr", "HOTA_TP", "HOTA_FN",
          "HOTA_FP", "TP_with_caps"]
MAX_INPUT_MB = 50


def _example_videos(predicted: bool) -> list[dict]:
    """Two videos of three objects each (references), or what a model might predict for them: boxes 3 px off, two
    captions wrong in one word, one object missed and one false detection."""
    captions = {
        ("a", 1): "a red square moving to the left", ("a", 2): "a blue circle growing",
        ("a", 3): "a green star standing still", ("b", 1): "a white triangle moving up",
        ("b", 2): "an orange square bouncing up and down", ("b", 3): "a purple circle moving to the right",
    }
    if predicted:
        captions.update({("a", 2): "a blue circle shrinking", ("b", 3): "a purple star moving to the right",
                         ("b", 4): "a yellow circle moving down"})
        del captions[("a", 3)]
    shift = 3.0 if predicted else 0.0
    videos = []
    for video_id in ("a", "b"):
        trajectories = []
        for (video, track_id), caption in captions.items():
            if video != video_id:
                continue
            frames = [{"frame_index": t, "box": [40.0 * track_id + 2 * t + shift, 30.0 + shift, 24.0, 24.0]}
                      for t in range(4)]
            trajectory = {"track_id": track_id, "caption": caption, "frames": frames}
            if predicted:
                trajectory["score"] = 0.9
            trajectories.append(trajectory)
        videos.append({"video_id": video_id, "num_frames": 4, "trajectories": trajectories})
    return videos


# the pre-filled example: several different captions per video (CIDEr-D's idf is computed per video, so one caption
# per video would score 0 even when right)
EXAMPLE_PREDICTIONS = json.dumps(_example_videos(predicted=True), indent=1)
EXAMPLE_REFERENCES = json.dumps(_example_videos(predicted=False), indent=1)
EXAMPLE = EXAMPLE_REFERENCES


def parse_input(text, upload, name: str, max_mb: int = MAX_INPUT_MB):
    """The parsed JSON of an upload or of pasted text (not both); ``ValueError`` naming ``name`` otherwise."""
    if upload:
        if isinstance(text, str) and text.strip():
            raise ValueError(f"The {name} are both pasted and uploaded: clear the text or remove the upload.")
        path = upload if isinstance(upload, str) else getattr(upload, "name", None)
        if not path or not os.path.isfile(path):
            raise ValueError(f"The {name} upload did not arrive; upload it again.")
        if os.path.getsize(path) > max_mb * 2**20:
            raise ValueError(f"The {name} file is larger than {max_mb} MB.")
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"Give the {name} as JSON (paste or upload).")
    if len(text) > max_mb * 2**20:
        raise ValueError(f"The {name} are larger than {max_mb} MB.")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"The {name} are not valid JSON: {error}") from error
    if not isinstance(data, (list, dict)):
        raise ValueError(f"The {name} must be a JSON list of videos or a JSON object (COCO-style or per-track "
                         f"format), got a JSON {type(data).__name__}.")
    return data


MAX_ALPHAS = 100


def parse_alphas(text) -> list[float]:
    try:
        values = [float(a) for a in str(text).replace(",", " ").split()]
    except ValueError as error:
        raise ValueError(f"alphas must be numbers between 0 and 1, e.g. 0.5 or 0.05 0.1 0.15, got {text!r}") from error
    if len(values) > MAX_ALPHAS:
        raise ValueError(f"at most {MAX_ALPHAS} alphas, got {len(values)}")
    return values or [0.5]


def compute(module, pred_text, pred_file, ref_text, ref_file, iou_type, alphas, metrics, score_threshold):
    """``(table rows, full result, summary)`` of one request; ``ValueError`` / ``TypeError`` for bad input."""
    predictions = parse_input(pred_text, pred_file, "predictions")
    references = parse_input(ref_text, ref_file, "references")
    predictions, references, detected = load_videos(predictions, references)
    if isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float)):
        raise ValueError(f"The score threshold must be a number, got {score_threshold!r}")
    result = module.compute(predictions=predictions, references=references, iou_type=iou_type,
                            alphas=parse_alphas(alphas), caption_metrics=list(metrics or []),
                            score_threshold=float(score_threshold))
    rows = [[name, round(result[name], 4)] for name in FIELDS + [f"CapA_{m}" for m in metrics or []]]
    summary = (f"CHOTA **{result['CHOTA']:.4f}** (DetA {result['DetA']:.4f}, AssA {result['AssA']:.4f}, "
               f"CapA {result['CapA']:.4f}) over {len(references)} videos ({detected} format)")
    return rows, result, summary


# ------------------------------------------------------------------------------------------ requests under a deadline
def _serve(connection, module_path: str) -> None:
    """Worker process: load the metric once, then answer ``compute`` requests until the pipe closes."""
    import evaluate

    module = evaluate.load(module_path)
    while True:
        try:
            inputs = connection.recv()
        except EOFError:
            return
        try:
            connection.send(("ok", compute(module, *inputs)))
        except Exception as error:  # noqa: BLE001 - every error goes back to the request as a message
            connection.send(("error", f"{type(error).__name__}: {error}" if not isinstance(error, (ValueError, TypeError))
                             else str(error)))


class DeadlineRunner:
    """Runs requests in worker processes (one per concurrent request, reused), each under ``max_seconds``: a request
    that runs over has its worker killed (a metric stuck in native code cannot hold the Space) and gets an error."""

    def __init__(self, module_path: str, max_seconds: float = 120.0, workers: int = 2):
        self.module_path = module_path
        self.max_seconds = max_seconds
        self._idle: list = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(workers)

    def _start(self):
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(target=_serve, args=(child, self.module_path), daemon=True)
        process.start()
        child.close()
        return process, parent

    def __call__(self, *inputs):
        with self._slots:
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is None or not worker[0].is_alive():
                worker = self._start()
            process, connection = worker
            connection.send(inputs)
            if not connection.poll(self.max_seconds):
                process.kill()
                process.join()
                raise TimeoutError(f"The computation took longer than {self.max_seconds:g} s and was stopped.")
            try:
                status, value = connection.recv()
            except EOFError as error:
                process.join()
                raise RuntimeError("The computation stopped unexpectedly; try smaller inputs.") from error
            with self._lock:
                self._idle.append(worker)
        if status == "error":
            raise ValueError(value)
        return value

    def close(self) -> None:
        with self._lock:
            for process, connection in self._idle:
                connection.close()
                process.kill()
            self._idle.clear()


def build_chota_demo(module_path: str | None = None, max_seconds: float | None = None):
    """The CHOTA widget (``gr.Blocks``) computing with the evaluate module at ``module_path`` (default: this
    package's, :func:`captionformer_hf.metrics.chota_module_path`), each request under ``max_seconds`` (default
    ``$CHOTA_MAX_SECONDS`` or 120)."""
    import gradio as gr

    if module_path is None:
        from ..metrics import chota_module_path

        module_path = chota_module_path()
    if max_seconds is None:
        max_seconds = float(os.environ.get("CHOTA_MAX_SECONDS") or 120)
    runner = DeadlineRunner(module_path, max_seconds)

    def run(*inputs):
        try:
            return runner(*inputs)
        except Exception as error:  # noqa: BLE001 - every error reaches the user as a message
            raise gr.Error(str(error) or type(error).__name__) from error

    with gr.Blocks(title="CHOTA") as demo:
        gr.Markdown("# CHOTA\nCaptioning Higher Order Tracking Accuracy for dense video object captioning: "
                    "cbrt(DetA · AssA · CapA). See the metric card for the definition.")
        with gr.Row():
            with gr.Column():
                pred_text = gr.Code(value=EXAMPLE_PREDICTIONS, language="json", label="Predictions (JSON)",
                                    elem_id="predictions")
                pred_file = gr.File(label="... or upload predictions (clears the text)", type="filepath")
            with gr.Column():
                ref_text = gr.Code(value=EXAMPLE_REFERENCES, language="json", label="References (JSON)",
                                   elem_id="references")
                ref_file = gr.File(label="... or upload references (clears the text)", type="filepath")
        with gr.Row():
            iou_type = gr.Radio(["box", "mask"], value="box", label="IoU")
            alphas = gr.Textbox(value="0.5", label="alphas")
            metrics = gr.CheckboxGroup(["cider", "meteor", "spice"], value=["cider"], label="Caption metrics")
            score_threshold = gr.Number(value=0.5, label="Score threshold")
        button = gr.Button("Compute", variant="primary", elem_id="compute")
        summary = gr.Textbox(label="Summary", interactive=False, elem_id="summary")
        table = gr.Dataframe(headers=["metric", "value"], label="Results", elem_id="results")
        full = gr.JSON(label="Full result (per alpha, per video)")
        # an upload replaces what was pasted, visibly
        pred_file.upload(lambda: "", None, pred_text)
        ref_file.upload(lambda: "", None, ref_text)
        inputs = [pred_text, pred_file, ref_text, ref_file, iou_type, alphas, metrics, score_threshold]
        # the previous result is cleared first, so an error never leaves a stale one on screen
        button.click(lambda: (None, None, ""), None, [table, full, summary], queue=False).then(
            run, inputs, [table, full, summary], api_name="compute", concurrency_limit=2)
    demo.max_file_size = f"{MAX_INPUT_MB}mb"
    return demo
