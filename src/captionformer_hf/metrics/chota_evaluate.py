"""CHOTA: Captioning Higher Order Tracking Accuracy, for dense video object captioning, as an `evaluate` metric.

    import evaluate
    chota = evaluate.load("chota")        # from the folder's parent (a folder written by `captionformer space build
                                          # chota`, or by captionformer_hf.metrics.write_chota_module)
    chota = evaluate.load("chota.py")     # from inside that folder
    chota = evaluate.load("<user>/chota") # its copy on the Hub
    chota = evaluate.load(captionformer_hf.metrics.chota_module_path())   # with captionformer_hf installed

Self-contained: this script and its sibling files (``chota_core.py``, ``hota.py``, ``caption_scores.py``,
``trajectory_captionformer.py``: the numpy core of ``captionformer_hf.metrics.compute_chota``, identical to
TrackEval's HOTA and the published CHOTA evaluator) need ``evaluate``, numpy and scipy; pycocotools for mask IoU,
pycocoevalcap (and Java) for METEOR / SPICE; neither torch nor captionformer_hf. The trajectory format is nested and
ragged, and Arrow-encoding every frame made the module several times slower than the core: each video is one
string, a key to the video kept by this instance (one process) or its JSON text (several processes, which cannot see
each other's objects).
"""

import json

import datasets
import evaluate

# evaluate copies the files a metric script imports with a relative import next to it, so every core module is
# imported here, also those only chota_core uses (and no comment may follow an import line: evaluate reads one as the
# address of an external file)
from .caption_scores import SUPPORTED_CAPTION_METRICS
from .chota_core import compute_chota
from .hota import TRACKEVAL_ALPHAS
from .trajectory_captionformer import check_rle

__all__ = ["Chota", "SUPPORTED_CAPTION_METRICS", "TRACKEVAL_ALPHAS", "check_rle"]

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
    alphas: similarity thresholds, default (0.5,) (TRACKEVAL_ALPHAS: the 19 of TrackEval).
    caption_metrics: subset of SUPPORTED_CAPTION_METRICS ("cider", "meteor", "spice"), default all three as published. METEOR and SPICE need
        Java; SPICE also the Stanford CoreNLP jars (run `python -c "from pycocoevalcap.spice.spice import Spice;
        Spice()"` once with network to fetch them). Without them: caption_metrics=("cider", "meteor") or ("cider",).
    score_threshold: predictions are kept iff score > score_threshold (default 0.5).
Returns:
    CHOTA, DetA, AssA, CapA, HOTA, LocA, DetRe, DetPr, AssRe, AssPr, HOTA_TP, HOTA_FN, HOTA_FP, TP_with_caps,
    CapA_<metric> (means over alphas), per_alpha and per_video.
Examples:
    >>> video = {"video_id": "v", "num_frames": 2, "trajectories": [{"track_id": 1, "score": 0.9,
    ...     "caption": "a red square moving left",
    ...     "frames": [{"frame_index": 0, "box": [0, 0, 10, 10]}, {"frame_index": 1, "box": [2, 0, 10, 10]}]}]}
    >>> round(chota.compute(predictions=[video], references=[video], caption_metrics=["cider"])["DetA"], 2)
    1.0
"""


def _plain(value):
    """numpy scalars and arrays as JSON numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"a video holds a {type(value).__name__}, which is not JSON data")


def _check_video(video, name: str):
    if not isinstance(video, dict):
        raise TypeError(f"each of the {name} must be a video dict, got {type(video).__name__}")
    return video


def _check_videos(videos, name: str) -> list:
    if isinstance(videos, (str, bytes, dict)) or not hasattr(videos, "__iter__"):
        raise TypeError(f"`{name}` must be a list of videos, got {type(videos).__name__}")
    return [video if isinstance(video, str) else _check_video(video, name) for video in videos]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Chota(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # one video = one JSON string (see the module docstring)
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
            codebase_urls=["https://github.com/gabfstr/CaptionFormer", "https://github.com/JonathonLuiten/TrackEval"],
            license="apache-2.0",
        )

    # A video is stored as one string: in a single process, a key into this instance's own store (the videos are
    # not re-encoded at all); across processes, its JSON text (other processes cannot see the store).
    def _store(self, video, name: str) -> str:
        if isinstance(video, str):  # a key or JSON text already (evaluate's compute hands its inputs to add_batch)
            return video
        _check_video(video, name)
        if self.num_process > 1:
            try:
                return json.dumps(video, separators=(",", ":"), default=_plain)
            except (TypeError, ValueError) as error:
                raise TypeError(f"{name}: video {video.get('video_id')!r} is not JSON data ({error})") from error
        store = self.__dict__.setdefault("_videos", {})
        key = f"#{len(store)}"
        store[key] = video
        return key

    def _load(self, text: str):
        store = self.__dict__.get("_videos", {})
        return store[text] if text in store else json.loads(text)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one video (its prediction and its reference)."""
        return super().add(prediction=self._store(prediction, "prediction"),
                           reference=self._store(reference, "reference"), **kwargs)

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of videos."""
        if predictions is not None:
            predictions = [self._store(v, "predictions") for v in _check_videos(predictions, "predictions")]
        if references is not None:
            references = [self._store(v, "references") for v in _check_videos(references, "references")]
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def _compute(
        self,
        predictions,
        references,
        iou_type="box",
        alphas=(0.5,),
        caption_metrics=("cider", "meteor", "spice"),
        score_threshold=0.5,
    ):
        try:
            predictions = [self._load(video) for video in predictions]
            references = [self._load(video) for video in references]
        finally:
            self.__dict__.pop("_videos", None)  # the added videos are consumed by this computation
        return compute_chota(
            predictions,
            references,
            iou_type=iou_type,
            alphas=tuple(alphas),
            caption_metrics=tuple(caption_metrics),
            score_threshold=score_threshold,
        )
