"""CHOTA / HOTA / caption metrics: a pure numpy + python core (no torch, no evaluate)."""

from .caption_scores import (
    SUPPORTED_CAPTION_METRICS,
    CaptionMetricUnavailableError,
    MeteorScorer,
    check_caption_metrics_runnable,
    cider_d_pair_scores,
    spice_available,
)
from .chota_core import compute_chota
from .hota import TRACKEVAL_ALPHAS, box_iou, hota_pairs, hota_sequence
from .vis_map import video_instance_map


# the files of the self-contained CHOTA `evaluate` module: its name there -> its source in this package
CHOTA_MODULE_FILES = {
    "chota.py": ("metrics", "chota_evaluate.py"),
    "chota_core.py": ("metrics", "chota_core.py"),
    "hota.py": ("metrics", "hota.py"),
    "caption_scores.py": ("metrics", "caption_scores.py"),
    "formats.py": ("metrics", "formats.py"),
    "trajectory_captionformer.py": ("processing", "trajectory_captionformer.py"),
}


def write_chota_module(folder: str) -> str:
    """Write the self-contained CHOTA ``evaluate`` module into ``folder`` (created if needed): ``chota.py`` and the
    numpy core it imports, copied from this package (the same code as :func:`compute_chota`), and a
    ``requirements.txt`` (evaluate, numpy, scipy, pycocotools, pycocoevalcap: no torch, no captionformer_hf).
    Returns the path of ``chota.py``; ``evaluate.load(folder)`` loads it when the folder is named ``chota``."""
    import os
    import shutil

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.makedirs(folder, exist_ok=True)
    for name, (subpackage, source) in CHOTA_MODULE_FILES.items():
        shutil.copyfile(os.path.join(package, subpackage, source), os.path.join(folder, name))
    with open(os.path.join(folder, "requirements.txt"), "w", encoding="utf-8") as f:
        f.write(CHOTA_REQUIREMENTS)
    return os.path.join(folder, "chota.py")


CHOTA_REQUIREMENTS = "evaluate>=0.4\nnumpy>=1.24\nscipy>=1.10\npycocotools>=2.0.7\npycocoevalcap>=1.2\n"


def chota_module_path() -> str:
    """Path of the CHOTA ``evaluate`` metric script of this package (``evaluate.load(chota_module_path())``): a
    self-contained copy (:func:`write_chota_module`) kept in a cache folder named after the sources' content, so it
    is written once per version of the code."""
    import hashlib
    import os

    from ..utils import atomic_directory

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256()
    for name, (subpackage, source) in sorted(CHOTA_MODULE_FILES.items()):
        with open(os.path.join(package, subpackage, source), "rb") as f:
            digest.update(name.encode() + f.read())
    cache = os.environ.get("CAPTIONFORMER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "captionformer_hf")
    folder = os.path.join(cache, f"chota-{digest.hexdigest()[:16]}", "chota")
    if not os.path.isfile(os.path.join(folder, "chota.py")):
        try:
            with atomic_directory(folder, overwrite=True) as tmp:
                write_chota_module(tmp)
        except OSError:
            if not os.path.isfile(os.path.join(folder, "chota.py")):  # another process may have written it
                raise
    return os.path.join(folder, "chota.py")


__all__ = [
    "SUPPORTED_CAPTION_METRICS",
    "TRACKEVAL_ALPHAS",
    "CaptionMetricUnavailableError",
    "MeteorScorer",
    "box_iou",
    "check_caption_metrics_runnable",
    "chota_module_path",
    "write_chota_module",
    "cider_d_pair_scores",
    "compute_chota",
    "hota_pairs",
    "hota_sequence",
    "video_instance_map",
    "spice_available",
]
