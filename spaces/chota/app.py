"""CHOTA metric Space. `evaluate.utils.launch_gradio_widget` targets the gradio 3 API (`gr.inputs`), which current
gradio no longer has, so this is the equivalent widget written with gr.Blocks: paste or upload predictions and
references (JSON lists of videos, or the official COCO-style / per-track formats), pick the options, compute."""

from __future__ import annotations

import json
import os

import evaluate
import gradio as gr

from captionformer_hf.metrics.formats import load_videos

MODULE = evaluate.load(os.environ.get("CHOTA_MODULE", os.path.join(os.path.dirname(os.path.abspath(__file__)), "chota.py")))
EXAMPLE = json.dumps([{"video_id": "v", "num_frames": 2, "trajectories": [{"track_id": 1, "score": 0.9,
    "caption": "a red square moving to the left",
    "frames": [{"frame_index": 0, "box": [10, 10, 20, 20]}, {"frame_index": 1, "box": [8, 10, 20, 20]}]}]}], indent=1)
FIELDS = ["CHOTA", "DetA", "AssA", "CapA", "HOTA", "LocA", "DetRe", "DetPr", "AssRe", "AssPr", "HOTA_TP", "HOTA_FN",
          "HOTA_FP", "TP_with_caps"]


def _parse(text, upload, name):
    if upload:
        with open(upload, encoding="utf-8") as f:
            text = f.read()
    if not text or not text.strip():
        raise gr.Error(f"Give the {name} as JSON (paste or upload).")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise gr.Error(f"The {name} are not valid JSON: {error}") from error


def compute(pred_text, pred_file, ref_text, ref_file, iou_type, alphas, metrics, score_threshold):
    predictions = _parse(pred_text, pred_file, "predictions")
    references = _parse(ref_text, ref_file, "references")
    try:
        predictions, references, detected = load_videos(predictions, references)
        alpha_values = [float(a) for a in str(alphas).replace(",", " ").split()] or [0.5]
        result = MODULE.compute(predictions=predictions, references=references, iou_type=iou_type,
                                alphas=alpha_values, caption_metrics=list(metrics), score_threshold=float(score_threshold))
    except (ValueError, TypeError, RuntimeError) as error:
        raise gr.Error(str(error)) from error
    rows = [[name, round(result[name], 4)] for name in FIELDS + [f"CapA_{m}" for m in metrics]]
    return rows, result, f"{len(references)} videos ({detected} format)"


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
    button.click(compute, [pred_text, pred_file, ref_text, ref_file, iou_type, alphas, metrics, score_threshold],
                 [table, full, summary], api_name="compute")

if __name__ == "__main__":
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
