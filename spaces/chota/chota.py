"""CHOTA: Captioning Higher Order Tracking Accuracy, for dense video object captioning, as an `evaluate` metric.

`evaluate.load("path/to/spaces/chota")` (or `evaluate.load("<user>/chota")` once pushed to the Hub). The computation
is `captionformer_hf.metrics.compute_chota` (pure numpy; identical to TrackEval's HOTA and the published CHOTA
evaluator); this module only declares the input features and forwards the arguments.
"""

import datasets
import evaluate

from captionformer_hf.metrics import compute_chota

_CITATION = """\
@inproceedings{fiastre2026captionformer,
  title={CaptionFormer: Unified Segmentation, Tracking, and Captioning for Spatio-Temporal Objects},
  author={Fiastre, Gabriel and others},
  booktitle={CVPR},
  year={2026}
}
@inproceedings{zhou2024dense,
  title={Dense Video Object Captioning from Disjoint Supervision},
  author={Zhou, Xingyi and Arnab, Anurag and Sun, Chen and Schmid, Cordelia},
  booktitle={ICLR},
  year={2025}
}
"""

_DESCRIPTION = """\
CHOTA = cbrt(DetA * AssA * CapA). DetA and AssA are HOTA's detection and association accuracies (TrackEval), CapA
the mean of caption metrics (CIDEr-D, METEOR, SPICE) over the (GT caption, predicted caption) pairs of matched
detections. Box IoU or mask IoU; alpha = 0.5 as published, or TrackEval's 19 alphas.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: list of videos `{"video_id", "num_frames", "trajectories": [...]}`; a trajectory is
        `{"track_id", "score", "category", "caption", "frames": [{"frame_index", "box": [x, y, w, h],
        "mask_rle", "score"}]}` (boxes in absolute pixels, masks as COCO compressed RLE strings, which need the
        video's `height` and `width`).
    references: the same for the ground truth (scores not needed).
    iou_type: "box" (default) or "mask".
    alphas: similarity thresholds, default (0.5,).
    caption_metrics: subset of ("cider", "meteor", "spice"); METEOR and SPICE need Java (SPICE also the Stanford
        CoreNLP jars).
    score_threshold: predictions are kept iff score > score_threshold (default 0.5).
Returns:
    CHOTA, DetA, AssA, CapA, HOTA, LocA, DetRe, DetPr, AssRe, AssPr, HOTA_TP, HOTA_FN, HOTA_FP, TP_with_caps,
    CapA_<metric> (means over alphas), per_alpha and per_video.
Examples:
    >>> chota = evaluate.load("spaces/chota")
    >>> video = {"video_id": "v", "num_frames": 2, "trajectories": [{"track_id": 1, "score": 0.9,
    ...     "caption": "a red square moving left",
    ...     "frames": [{"frame_index": 0, "box": [0, 0, 10, 10]}, {"frame_index": 1, "box": [2, 0, 10, 10]}]}]}
    >>> round(chota.compute(predictions=[video], references=[video], caption_metrics=["cider"])["DetA"], 2)
    1.0
"""

_FRAME = {
    "frame_index": datasets.Value("int64"),
    "box": datasets.List(datasets.Value("float64")),
    "mask_rle": datasets.Value("string"),
    "score": datasets.Value("float64"),
    "caption": datasets.Value("string"),
}
_TRAJECTORY = {
    "track_id": datasets.Value("int64"),
    "score": datasets.Value("float64"),
    "category": datasets.Value("string"),
    "caption": datasets.Value("string"),
    "frames": datasets.List(_FRAME),
}
_VIDEO = {
    "video_id": datasets.Value("string"),
    "num_frames": datasets.Value("int64"),
    "height": datasets.Value("int64"),
    "width": datasets.Value("int64"),
    "trajectories": datasets.List(_TRAJECTORY),
}


def _drop_none(value):
    """Arrow fills absent optional fields with None: drop them again so the core sees the user's dicts."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def _fill(value, schema):
    """Give every dict all the keys of its feature schema (None where absent), as Arrow encoding needs."""
    if isinstance(schema, dict) and isinstance(value, dict):
        return {k: _fill(value.get(k), sub) for k, sub in schema.items()}
    if isinstance(schema, datasets.List) and isinstance(value, (list, tuple)):
        return [_fill(v, schema.feature) for v in value]
    return value


def _as_strings(videos):
    """Video ids may be ints in user data (the feature is a string); optional fields may be absent."""
    out = []
    for v in videos:
        if isinstance(v, dict):
            v = _fill(v, _VIDEO)
            if v["video_id"] is not None:
                v["video_id"] = str(v["video_id"])
        out.append(v)
    return out


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Chota(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": _VIDEO, "references": _VIDEO}),
            codebase_urls=["https://github.com/gabfstr/CaptionFormer", "https://github.com/JonathonLuiten/TrackEval"],
        )

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Compute CHOTA (video ids are turned into strings first, as the `video_id` feature is a string)."""
        # video ids may be ints in user data; the feature is a string
        if predictions is not None:
            predictions = _as_strings(predictions)
        if references is not None:
            references = _as_strings(references)
        return super().compute(predictions=predictions, references=references, **kwargs)

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of videos (video ids turned into strings)."""
        return super().add_batch(predictions=_as_strings(predictions or []), references=_as_strings(references or []), **kwargs)

    def _compute(
        self,
        predictions,
        references,
        iou_type="box",
        alphas=(0.5,),
        caption_metrics=("cider", "meteor", "spice"),
        score_threshold=0.5,
    ):
        return compute_chota(
            _drop_none(list(predictions)),
            _drop_none(list(references)),
            iou_type=iou_type,
            alphas=tuple(alphas),
            caption_metrics=tuple(caption_metrics),
            score_threshold=score_threshold,
        )
