"""Video processor, processor, pipeline, `predict_video` and the trajectory format (remote-code safe files).

The trajectory format module (:mod:`.trajectory_captionformer`) needs no torch; the rest is exported where torch is
installed."""

import importlib.util

from .trajectory_captionformer import (
    CheckedTrajectory,
    FrameEntry,
    Trajectory,
    VideoTrajectories,
    check_rle,
    check_video,
    rle_decode,
    rle_encode,
    validate_video,
)

__all__ = ["CheckedTrajectory", "FrameEntry", "Trajectory", "VideoTrajectories", "check_rle", "check_video",
           "rle_decode", "rle_encode", "validate_video"]

try:
    _HAS_TORCH = importlib.util.find_spec("torch") is not None
except (ImportError, ValueError):
    _HAS_TORCH = False

if _HAS_TORCH:
    from .inference_captionformer import predict_video
    from .pipeline_captionformer import DenseVideoObjectCaptioningPipeline
    from .processing_captionformer import CaptionFormerProcessor
    from .video_processing_captionformer import (
        CaptionFormerClipBatch,
        CaptionFormerVideoProcessor,
        ClipMaskEncoder,
        VideoFrames,
        VideoGeometry,
    )

    __all__ += [
        "CaptionFormerClipBatch",
        "CaptionFormerProcessor",
        "CaptionFormerVideoProcessor",
        "ClipMaskEncoder",
        "DenseVideoObjectCaptioningPipeline",
        "VideoFrames",
        "VideoGeometry",
        "predict_video",
    ]
