"""CaptionFormer modeling files (remote-code safe: the files themselves use single-dot imports only).

The configuration needs no torch; the model classes are exported where torch is installed."""

import importlib.util

from .configuration_captionformer import CaptionFormerConfig

__all__ = ["CaptionFormerConfig"]

try:
    _HAS_TORCH = importlib.util.find_spec("torch") is not None
except (ImportError, ValueError):
    _HAS_TORCH = False

if _HAS_TORCH:
    from .modeling_captionformer import (
        CaptionFormerDenseCaptioningOutput,
        CaptionFormerForDenseVideoObjectCaptioning,
        CaptionFormerGenerateOutput,
        CaptionFormerModel,
        CaptionFormerModelOutput,
        CaptionFormerPreTrainedModel,
        CaptionFormerTrackingOutput,
        CaptionFormerVideoOutput,
    )
    from .tracking_captionformer import CaptionFormerTrackingSession
    from .video_level_captionformer import (
        CaptionFormerVideoLevel,
        CaptionFormerVideoSession,
        register_video_inference_mode,
    )

    __all__ += [
        "CaptionFormerDenseCaptioningOutput",
        "CaptionFormerForDenseVideoObjectCaptioning",
        "CaptionFormerGenerateOutput",
        "CaptionFormerModel",
        "CaptionFormerModelOutput",
        "CaptionFormerPreTrainedModel",
        "CaptionFormerTrackingOutput",
        "CaptionFormerTrackingSession",
        "CaptionFormerVideoLevel",
        "CaptionFormerVideoOutput",
        "CaptionFormerVideoSession",
        "register_video_inference_mode",
    ]
