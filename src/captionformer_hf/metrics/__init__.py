"""CHOTA / HOTA / caption metrics: a pure numpy + python core (no torch, no evaluate)."""

from .caption_scores import (
    SUPPORTED_CAPTION_METRICS,
    CaptionMetricUnavailableError,
    MeteorScorer,
    cider_d_pair_scores,
    spice_available,
)
from .chota import compute_chota
from .hota import TRACKEVAL_ALPHAS, box_iou, hota_pairs, hota_sequence


def chota_module_path() -> str:
    """Path of the ``evaluate`` metric script shipped in this package: ``evaluate.load(chota_module_path())``."""
    import os

    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "chota_evaluate.py")


__all__ = [
    "SUPPORTED_CAPTION_METRICS",
    "TRACKEVAL_ALPHAS",
    "CaptionMetricUnavailableError",
    "MeteorScorer",
    "box_iou",
    "chota_module_path",
    "cider_d_pair_scores",
    "compute_chota",
    "hota_pairs",
    "hota_sequence",
    "spice_available",
]
