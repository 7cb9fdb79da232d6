"""CaptionFormer modeling files (remote-code safe: single-dot imports only)."""

from .configuration_captionformer import CaptionFormerConfig
from .modeling_captionformer import (
    CaptionFormerDenseCaptioningOutput,
    CaptionFormerForDenseVideoObjectCaptioning,
    CaptionFormerModel,
    CaptionFormerModelOutput,
    CaptionFormerPreTrainedModel,
)

__all__ = [
    "CaptionFormerConfig",
    "CaptionFormerDenseCaptioningOutput",
    "CaptionFormerForDenseVideoObjectCaptioning",
    "CaptionFormerModel",
    "CaptionFormerModelOutput",
    "CaptionFormerPreTrainedModel",
]
