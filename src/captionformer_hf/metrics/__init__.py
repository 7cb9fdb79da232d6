"""CHOTA / HOTA / caption metrics: a pure numpy + python core (no torch, no evaluate)."""

from .caption_scores import (
    SUPPORTED_CAPTION_METRICS,
    CaptionMetricUnavailableError,
    MeteorScorer,
    cider_d_pair_scores,
    spice_available,
)
from .chota import compute_chota
from .hota import TRACKEVAL_ALPHAS, box_iou, hota_sequence

__all__ = [
    "SUPPORTED_CAPTION_METRICS",
    "TRACKEVAL_ALPHAS",
    "CaptionMetricUnavailableError",
    "MeteorScorer",
    "box_iou",
    "cider_d_pair_scores",
    "compute_chota",
    "hota_sequence",
    "spice_available",
]
