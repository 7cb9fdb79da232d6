"""The four benchmarks' evaluation protocols, as the published evaluation scripts run them (gabfstr/CaptionFormer
``scripts/eval/*.sh``, ``evaluate_chota_full.py`` and BenSMOT's ``results2smot_cap.py`` / ``eval_vu.py``).

| protocol | similarity | captions (default) | notes |
| --- | --- | --- | --- |
| ``vidstg`` | box IoU | CapA with CIDEr | |
| ``vln`` | mask IoU | CapA with CIDEr | predictions on the dense video, kept on the sparsely annotated frames |
| ``bensmot`` | box IoU | BenSMOT's caption CIDEr | HOTA without captions; each predicted track's caption is paired with the caption of the ground-truth track of highest mean box IoU over the frames where both exist; CIDEr-D over all pairs of the split |
| ``lvviscap`` | mask IoU | CapA with CIDEr | |

Every protocol keeps the predictions whose score is above 0 (thresholds are applied at inference) and uses the
single alpha 0.5. ``full_capa=True`` replaces the CIDEr-only caption score by the full CapA (CIDEr, METEOR, SPICE).

No torch or evaluate import here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..processing.trajectory_captionformer import check_video
from .caption_scores import SUPPORTED_CAPTION_METRICS, cider_d_pair_scores
from .chota_core import compute_chota
from .hota import box_iou


@dataclass(frozen=True)
class Protocol:
    name: str
    iou_type: str
    captions: str  # "chota": CapA over matched detections; "smot": BenSMOT's track-level caption pairs
    needs_sparse_frames: bool = False


PROTOCOLS = {
    "vidstg": Protocol("vidstg", "box", "chota"),
    "vln": Protocol("vln", "mask", "chota", needs_sparse_frames=True),
    "bensmot": Protocol("bensmot", "box", "smot"),
    "lvviscap": Protocol("lvviscap", "mask", "chota"),
}
PUBLISHED_CAPTION_METRICS = ("cider",)


def sparse_frames_of(extended: Mapping) -> dict:
    """``video_id -> [dense frame index, ...]`` of the sparsely annotated frames, from VLN's extended ground truth
    (``videos`` with ``sparse_frame_indices``)."""
    if not isinstance(extended, Mapping) or not isinstance(extended.get("videos"), Sequence):
        raise ValueError("`sparse_frames` must be VLN's extended ground truth: `videos` with `sparse_frame_indices`")
    frames = {}
    for video in extended["videos"]:
        if "sparse_frame_indices" not in video:
            raise ValueError(f"`sparse_frames`: video {video.get('id')!r} has no `sparse_frame_indices`")
        frames[video["id"]] = [int(i) for i in video["sparse_frame_indices"]]
    return frames


def restrict_to_frames(videos: Sequence[Mapping], frames_of_video: Mapping) -> list[dict]:
    """Keep, per video, the detections on the listed frames, renumbered in dense frame order (the frames of the
    sparse ground truth); videos not listed are dropped. As the published script (``[a for i, a in enumerate(track)
    if i in sparse_frame_indices]``): the list's order and repeats do not matter, and listed frames past the video's
    end are not frames of it."""
    restricted = []
    for video in videos:
        if video["video_id"] not in frames_of_video:
            continue
        listed = sorted({int(i) for i in frames_of_video[video["video_id"]] if 0 <= int(i) < int(video["num_frames"])})
        position = {dense: i for i, dense in enumerate(listed)}
        trajectories = []
        for trajectory in video["trajectories"]:
            frames = [dict(entry, frame_index=position[entry["frame_index"]])
                      for entry in trajectory["frames"] if entry["frame_index"] in position]
            trajectories.append({**trajectory, "frames": frames})
        restricted.append({**video, "num_frames": len(position), "trajectories": trajectories})
    return restricted


def check_videos(videos: Sequence[Mapping], side: str) -> None:
    """Every video of ``videos`` (``side``: "prediction" or "reference") checked by the trajectory format's
    validator, before a protocol reads them (``TypeError`` / ``ValueError`` naming the video, track and frame)."""
    if not isinstance(videos, Sequence) or isinstance(videos, (str, bytes)):
        raise TypeError(f"the {side}s must be a list of videos, got {type(videos).__name__}")
    for video in videos:
        check_video(video, f"video {video.get('video_id')!r}, {side}" if isinstance(video, Mapping) else side)


def check_references(references: Sequence[Mapping], protocol: Protocol) -> None:
    """The annotations the protocol needs: valid videos (:func:`check_videos`), boxes or masks on every ground-truth
    detection, and captions."""
    check_videos(references, "reference")
    key = "mask_rle" if protocol.iou_type == "mask" else "box"
    kind = "masks (`mask_rle` / `segmentation`)" if key == "mask_rle" else "boxes"
    any_caption = False
    for video in references:
        for trajectory in video["trajectories"]:
            any_caption = any_caption or bool(trajectory.get("caption")) or any(
                f.get("caption") for f in trajectory["frames"])
            for entry in trajectory["frames"]:
                if entry.get(key) is None:
                    raise ValueError(
                        f"protocol {protocol.name!r} needs ground-truth {kind}: video {video['video_id']!r}, track "
                        f"{trajectory.get('track_id')!r}, frame {entry.get('frame_index')!r} has none"
                    )
    if not any_caption:
        raise ValueError(f"protocol {protocol.name!r} scores captions, but the ground truth has none")


def smot_caption_pairs(predictions: Sequence[Mapping], references: Sequence[Mapping]) -> tuple[list, list]:
    """BenSMOT's pairing: each predicted track of a video takes the caption of the ground-truth track with the
    highest mean box IoU over the frames where both have a box (0 where none; ties and all-zero: the first)."""
    refs_by_id = {video["video_id"]: video for video in references}
    gt_captions, pred_captions = [], []
    for video in predictions:
        reference = refs_by_id.get(video["video_id"])
        if reference is None or not reference["trajectories"]:
            continue
        gt_tracks = [{f["frame_index"]: f["box"] for f in t["frames"]} for t in reference["trajectories"]]
        for trajectory in video["trajectories"]:
            boxes = {f["frame_index"]: f["box"] for f in trajectory["frames"] if f.get("box") is not None}
            means = []
            for gt in gt_tracks:
                common = sorted(set(gt) & set(boxes))
                if not common:
                    means.append(0.0)
                    continue
                ious = [box_iou(np.array([boxes[f]]), np.array([gt[f]]))[0, 0] for f in common]
                means.append(float(np.mean(ious)))
            best = int(np.argmax(means))
            pred_captions.append(_track_caption(trajectory))
            gt_captions.append(_track_caption(reference["trajectories"][best]))
    return gt_captions, pred_captions


def smot_language_scores(gt_captions: Sequence[str], pred_captions: Sequence[str],
                         metrics: Sequence[str] = ("bleu", "meteor", "rouge", "cider")) -> dict:
    """BenSMOT's caption scores (the release's ``evaluate/smot_utils/eval_vu.py``, ``eval_language``) of paired
    captions (:func:`smot_caption_pairs`), computed as that script does, quirks included:

    * ``bleu``: nltk's ``corpus_bleu`` with the captions as strings (so over characters);
    * ``meteor``: the mean of nltk's ``meteor_score([[gt]], [pred])`` with commas and periods removed (each caption
      one token); needs nltk's WordNet data (``python -m nltk.downloader wordnet``);
    * ``rouge``: pycocoevalcap's ROUGE-L; ``cider``: pycocoevalcap's CIDEr-D (the ``SMOT_CIDEr`` of
      :func:`evaluate_protocol`).

    bleu and meteor need ``nltk`` (``pip install nltk``)."""
    if len(gt_captions) != len(pred_captions) or not gt_captions:
        raise ValueError("`gt_captions` and `pred_captions` must pair one to one, at least one pair")
    unknown = [m for m in metrics if m not in ("bleu", "meteor", "rouge", "cider")]
    if unknown:
        raise ValueError(f"`metrics` must be among 'bleu', 'meteor', 'rouge', 'cider', got {unknown}")
    scores = {}
    if "bleu" in metrics or "meteor" in metrics:
        try:
            import nltk  # noqa: F401
        except ImportError as error:
            raise ImportError("BenSMOT's BLEU and METEOR are nltk's: pip install nltk") from error
    if "bleu" in metrics:
        from nltk.translate.bleu_score import corpus_bleu

        scores["bleu"] = float(corpus_bleu([[gt] for gt in gt_captions], list(pred_captions)))
    if "meteor" in metrics:
        from nltk.translate.meteor_score import meteor_score

        def clean(text):
            return text.replace(",", "").replace(".", "")

        try:
            total = sum(meteor_score([[clean(gt)]], [clean(pred)]) for gt, pred in zip(gt_captions, pred_captions))
        except LookupError as error:
            raise ImportError("BenSMOT's METEOR needs nltk's WordNet data: python -m nltk.downloader wordnet") from error
        scores["meteor"] = float(total / len(gt_captions))
    gts = {i: [gt] for i, gt in enumerate(gt_captions)}
    preds = {i: [pred] for i, pred in enumerate(pred_captions)}
    if "rouge" in metrics:
        from pycocoevalcap.rouge.rouge import Rouge

        scores["rouge"] = float(Rouge().compute_score(gts, preds)[0])
    if "cider" in metrics:
        from pycocoevalcap.cider.cider import Cider

        scores["cider"] = float(Cider().compute_score(gts, preds)[0])
    return scores


def _track_caption(trajectory: Mapping) -> str:
    """A track's caption: its own, else its first frame-level one (COCO-style ground truth stores it per frame)."""
    if trajectory.get("caption"):
        return trajectory["caption"]
    return next((f["caption"] for f in trajectory["frames"] if f.get("caption")), "")


def evaluate_protocol(
    name: str,
    predictions: Sequence[Mapping],
    references: Sequence[Mapping],
    *,
    full_capa: bool = False,
    sparse_frames: Mapping | None = None,
    by_size: bool = False,
) -> dict:
    """Score ``predictions`` against ``references`` (videos of the trajectory format) as benchmark ``name``'s
    published protocol does. ``sparse_frames``: VLN's extended ground truth (or ``video_id -> frames``) when the
    predictions cover the dense videos. Returns the CHOTA result dict (``compute_chota``) with ``protocol``; for
    BenSMOT, the fields it defines (HOTA and its parts, ``SMOT_CIDEr`` and ``SMOT_pairs``; CHOTA and CapA only with
    ``full_capa``). ``by_size``: also ``by_size`` (:func:`size_breakdown`, with the protocol's CHOTA settings)."""
    if name not in PROTOCOLS:
        raise ValueError(f"`protocol` must be one of {sorted(PROTOCOLS)}, got {name!r}")
    protocol = PROTOCOLS[name]
    check_references(references, protocol)
    check_videos(predictions, "prediction")
    if sparse_frames is not None:
        frames = sparse_frames if "videos" not in sparse_frames else sparse_frames_of(sparse_frames)
        predictions = restrict_to_frames(predictions, frames)
    elif protocol.needs_sparse_frames:
        refs = {v["video_id"]: v["num_frames"] for v in references}
        dense = [v["video_id"] for v in predictions if v.get("num_frames") != refs.get(v["video_id"])]
        if dense:
            raise ValueError(
                f"protocol {name!r}: predictions of {dense[:3]} cover more frames than the sparse ground truth; "
                "pass VLN's extended ground truth (`sparse_frames`, --sparse-frames) to keep the annotated frames"
            )
    metrics = SUPPORTED_CAPTION_METRICS if full_capa else PUBLISHED_CAPTION_METRICS
    settings = {"iou_type": protocol.iou_type, "caption_metrics": metrics, "score_threshold": 0.0}
    if protocol.captions == "smot":
        result = compute_chota(predictions, references, iou_type=protocol.iou_type, caption_metrics=(),
                               score_threshold=0.0)
        gt_captions, pred_captions = smot_caption_pairs(predictions, references)
        scores = cider_d_pair_scores(gt_captions, pred_captions) if gt_captions else np.zeros(0)
        result["SMOT_CIDEr"] = float(scores.mean()) if len(scores) else 0.0
        result["SMOT_pairs"] = len(scores)
        if gt_captions:
            for metric, value in smot_language_scores(gt_captions, pred_captions, ("bleu", "rouge")).items():
                result[f"SMOT_{metric.upper()}"] = value
        if full_capa:
            capa = compute_chota(predictions, references, **settings)
            for key in ("CHOTA", "CapA", *(f"CapA_{m}" for m in metrics)):
                result[key] = capa[key]
        else:  # BenSMOT defines HOTA and its own caption CIDEr, no CHOTA: the CapA-less CHOTA is not reported
            undefined = ("CHOTA", "CapA", "TP_with_caps")
            for key in undefined:
                result.pop(key, None)
            for table in [result.get("per_alpha", {}), *result.get("per_video", {}).values()]:
                for key in undefined:
                    table.pop(key, None)
    else:
        result = compute_chota(predictions, references, **settings)
    if by_size:
        result["by_size"] = size_breakdown(predictions, references, **settings)
    result["protocol"] = name
    return result


# the release's size classes (``evaluate/chota_with_size.py``), by area in source pixels: [low, high)
OBJECT_SIZES = {"small": (0.0, 30000.0), "medium": (30000.0, 200000.0), "large": (200000.0, math.inf)}


def detection_size(entry: Mapping, height: int | None, width: int | None) -> str | None:
    """The size class of one per-frame detection, as the release's ``get_annotation_size_category`` on a COCO
    per-frame annotation: its box area ``w * h`` when positive, else its mask's area; ``None`` without either."""
    box = entry.get("box")
    area = 0.0
    if box is not None and len(box) >= 4 and box[2] is not None and box[3] is not None:
        area = float(box[2]) * float(box[3])
    if area <= 0 and entry.get("mask_rle") is not None:
        from pycocotools import mask as mask_utils

        rle = entry["mask_rle"]
        if isinstance(rle, str):
            if height is None or width is None:
                raise ValueError("a mask's area needs the video's `height` and `width`")
            rle = {"size": [int(height), int(width)], "counts": rle.encode()}
        area = float(mask_utils.area(rle))
    if area <= 0:
        return None
    return next(name for name, (low, high) in OBJECT_SIZES.items() if low <= area < high)


def _of_size(videos: Sequence[Mapping], size: str) -> list[dict]:
    kept = []
    for video in videos:
        trajectories = []
        for trajectory in video["trajectories"]:
            frames = [f for f in trajectory["frames"]
                      if detection_size(f, video.get("height"), video.get("width")) == size]
            if frames:
                trajectories.append({**trajectory, "frames": frames})
        kept.append({**video, "trajectories": trajectories})
    return kept


def chota_by_object_size(predictions: Sequence[Mapping], references: Sequence[Mapping], **chota_kwargs) -> dict:
    """CHOTA per object size, as the release's ``CHOTAWithSize`` on COCO per-frame annotations: every detection of
    the references and of the predictions is classed by its own area (:func:`detection_size`: ``small`` < 30,000 px²
    <= ``medium`` < 200,000 px² <= ``large``) and CHOTA is computed on each class's detections alone
    (``chota_kwargs`` go to ``compute_chota``). A class without reference detections, or without predicted ones,
    scores 0 (CHOTA, HOTA, DetA, AssA), as there. Returns ``{"stats": {size: {"gt_count", "pred_count"}},
    "metrics": {size: result}}``."""
    check_videos(references, "reference")
    check_videos(predictions, "prediction")
    result = {"stats": {}, "metrics": {}}
    zero = {"CHOTA": 0.0, "HOTA": 0.0, "DetA": 0.0, "AssA": 0.0}
    for size in OBJECT_SIZES:
        refs, preds = _of_size(references, size), _of_size(predictions, size)
        gt_count = sum(len(t["frames"]) for v in refs for t in v["trajectories"])
        pred_count = sum(len(t["frames"]) for v in preds for t in v["trajectories"])
        result["stats"][size] = {"gt_count": gt_count, "pred_count": pred_count}
        result["metrics"][size] = (compute_chota(preds, refs, **chota_kwargs) if gt_count and pred_count
                                   else dict(zero))
    return result


def size_breakdown(predictions: Sequence[Mapping], references: Sequence[Mapping], **chota_kwargs) -> dict:
    """:func:`chota_by_object_size` as one row per size: ``{size: {"CHOTA", "HOTA", "DetA", "AssA", "gt_count",
    "pred_count"}}`` (what ``captionformer evaluate --by-size`` reports)."""
    sizes = chota_by_object_size(predictions, references, **chota_kwargs)
    return {size: {**{key: sizes["metrics"][size][key] for key in ("CHOTA", "HOTA", "DetA", "AssA")},
                   **sizes["stats"][size]} for size in sizes["metrics"]}


__all__ = ["OBJECT_SIZES", "PROTOCOLS", "Protocol", "check_videos", "chota_by_object_size", "detection_size", "evaluate_protocol",
           "restrict_to_frames", "size_breakdown", "smot_caption_pairs", "smot_language_scores", "sparse_frames_of"]
