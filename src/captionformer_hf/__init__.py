"""captionformer_hf: CaptionFormer (CVPR 2026) for Hugging Face transformers.

Segments, detects, tracks and captions every object trajectory in a video (dense video object captioning).
Importing the package registers the model with the transformers Auto classes.
"""

from transformers import AutoConfig, AutoModel

from .modeling import (
    CaptionFormerConfig,
    CaptionFormerDenseCaptioningOutput,
    CaptionFormerForDenseVideoObjectCaptioning,
    CaptionFormerModel,
    CaptionFormerModelOutput,
    CaptionFormerPreTrainedModel,
)

__version__ = "0.1.0.dev0"

AutoConfig.register(CaptionFormerConfig.model_type, CaptionFormerConfig, exist_ok=True)
# AutoModel resolves to the full model (segmenter + caption head + LM): it is what every user of a CaptionFormer
# checkpoint needs, and there is no dedicated Auto class for dense video object captioning.
AutoModel.register(CaptionFormerConfig, CaptionFormerForDenseVideoObjectCaptioning, exist_ok=True)
CaptionFormerConfig.register_for_auto_class("AutoConfig")
CaptionFormerForDenseVideoObjectCaptioning.register_for_auto_class("AutoModel")

__all__ = [
    "CaptionFormerConfig",
    "CaptionFormerDenseCaptioningOutput",
    "CaptionFormerForDenseVideoObjectCaptioning",
    "CaptionFormerModel",
    "CaptionFormerModelOutput",
    "CaptionFormerPreTrainedModel",
]
