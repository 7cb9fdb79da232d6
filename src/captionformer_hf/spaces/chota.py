"""The CHOTA metric Space: paste or upload predictions and references, pick the options, compute.

``evaluate.utils.launch_gradio_widget`` targets the gradio 3 API (``gr.inputs``), which current gradio no longer has,
so this is the equivalent widget written with ``gr.Blocks``. Inputs are only what the user pastes or uploads: pasted
text is parsed as JSON (never opened as a path on the server), an upload is read from the temporary file gradio
made for it (size-capped), and both must hold a JSON list or object. Every bad input is answered with a
``gr.Error``.
"""

from __future__ import annotations

import json
import os

FIELDS = ["CHOTA", "DetA", "AssA", "CapA", "HOTA", "LocA", "DetRe", "DetPr", "AssRe", "AssPr", "HOTA_TP", "HOTA_FN",
          "HOTA_FP", "TP_with_caps"]
MAX_INPUT_MB = 50
EXAMPLE = json.dumps([{"video_id": "v", "num_frames": 2, "trajectories": [{"track_id": 1, "score": 0.9,
    "caption": "a red square moving to the left",
    "frames": [{"frame_index": 0, "box": [10, 10, 20, 20]}, {"frame_index": 1, "box": [8, 10, 20, 20]}]}]}], indent=1)


def parse_input(text, upload, name: str, max_mb: int = MAX_INPUT_MB):
    """The parsed JSON of an upload (preferred) or of pasted text; ``ValueError`` naming ``name`` otherwise."""
    if upload:
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


def parse_alphas(text) -> list[float]:
    try:
        values = [float(a) for a in str(text).replace(",", " ").split()]
    except ValueError as error:
        raise ValueError(f"alphas must be numbers between 0 and 1, e.g. 0.5 or 0.05 0.1 0.15, got {text!r}") from error
    return values or [0.5]


def compute(module, pred_text, pred_file, ref_text, ref_file, iou_type, alphas, metrics, score_threshold):
    """``(table rows, full result, summary)`` of one request; ``ValueError`` / ``TypeError`` for bad input."""
    from ..metrics.formats import load_videos

    predictions = parse_input(pred_text, pred_file, "predictions")
    references = parse_input(ref_text, ref_file, "references")
    predictions, references, detected = load_videos(predictions, references)
    if isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float)):
        raise ValueError(f"The score threshold must be a number, got {score_threshold!r}")
    result = module.compute(predictions=predictions, references=references, iou_type=iou_type,
                            alphas=parse_alphas(alphas), caption_metrics=list(metrics or []),
                            score_threshold=float(score_threshold))
    rows = [[name, round(result[name], 4)] for name in FIELDS + [f"CapA_{m}" for m in metrics or []]]
    return rows, result, f"{len(references)} videos ({detected} format)"


def build_chota_demo(module=None):
    """The CHOTA widget (``gr.Blocks``) around ``module`` (default: the evaluate module shipped in the package)."""
    import evaluate
    import gradio as gr

    from ..metrics import chota_module_path

    module = module or evaluate.load(chota_module_path())

    def run(*inputs):
        try:
            return compute(module, *inputs)
        except (ValueError, TypeError, KeyError) as error:
            raise gr.Error(str(error)) from error

    with gr.Blocks(title="CHOTA") as demo:
        gr.Markdown("# CHOTA\nCaptioning Higher Order Tracking Accuracy for dense video object captioning: "
                    "cbrt(DetA · AssA · CapA). See the metric card for the definition.")
        with gr.Row():
            with gr.Column():
                pred_text = gr.Code(value=EXAMPLE, language="json", label="Predictions (JSON)", elem_id="predictions")
                pred_file = gr.File(label="... or upload predictions", type="filepath")
            with gr.Column():
                ref_text = gr.Code(value=EXAMPLE, language="json", label="References (JSON)", elem_id="references")
                ref_file = gr.File(label="... or upload references", type="filepath")
        with gr.Row():
            iou_type = gr.Radio(["box", "mask"], value="box", label="IoU")
            alphas = gr.Textbox(value="0.5", label="alphas")
            metrics = gr.CheckboxGroup(["cider", "meteor", "spice"], value=["cider"], label="Caption metrics")
            score_threshold = gr.Number(value=0.5, label="Score threshold")
        button = gr.Button("Compute", variant="primary", elem_id="compute")
        summary = gr.Markdown()
        table = gr.Dataframe(headers=["metric", "value"], label="Results", elem_id="results")
        full = gr.JSON(label="Full result (per alpha, per video)")
        button.click(run, [pred_text, pred_file, ref_text, ref_file, iou_type, alphas, metrics, score_threshold],
                     [table, full, summary], api_name="compute", concurrency_limit=2)
    demo.max_file_size = f"{MAX_INPUT_MB}mb"
    return demo
