"""captionformer_hf: CaptionFormer (CVPR 2026) for Hugging Face transformers.

Segments, detects, tracks and captions every object trajectory in a video (dense video object captioning).
Importing the package registers the model with the transformers Auto classes. The metric core
(`captionformer_hf.metrics`) works without torch: the model classes are only imported where torch is installed.
"""

from transformers import AutoConfig

from . import defaults
from .modeling import _HAS_TORCH, CaptionFormerConfig

__version__ = "0.1.0.dev0"

AutoConfig.register(CaptionFormerConfig.model_type, CaptionFormerConfig, exist_ok=True)
CaptionFormerConfig.register_for_auto_class("AutoConfig")

__all__ = ["CaptionFormerConfig"]

if _HAS_TORCH:
    from transformers import AutoModel

    from .modeling import (
        CaptionFormerDenseCaptioningOutput,
        CaptionFormerForDenseVideoObjectCaptioning,
        CaptionFormerGenerateOutput,
        CaptionFormerModel,
        CaptionFormerModelOutput,
        CaptionFormerPreTrainedModel,
        CaptionFormerTrackingOutput,
        CaptionFormerTrackingSession,
        CaptionFormerVideoLevel,
        CaptionFormerVideoOutput,
        CaptionFormerVideoSession,
        register_video_inference_mode,
    )

    from transformers import AutoProcessor, AutoVideoProcessor
    from transformers.pipelines import PIPELINE_REGISTRY

    from .processing import (
        CaptionFormerClipBatch,
        CaptionFormerProcessor,
        CaptionFormerVideoProcessor,
        DenseVideoObjectCaptioningPipeline,
        VideoFrames,
        predict_video,
    )

    # AutoModel resolves to the full model (segmenter + caption head + LM): it is what every user of a CaptionFormer
    # checkpoint needs, and there is no dedicated Auto class for dense video object captioning.
    AutoModel.register(CaptionFormerConfig, CaptionFormerForDenseVideoObjectCaptioning, exist_ok=True)
    CaptionFormerForDenseVideoObjectCaptioning.register_for_auto_class("AutoModel")
    AutoVideoProcessor.register(CaptionFormerConfig, CaptionFormerVideoProcessor, exist_ok=True)
    CaptionFormerVideoProcessor.register_for_auto_class("AutoVideoProcessor")
    AutoProcessor.register(CaptionFormerConfig, CaptionFormerProcessor, exist_ok=True)
    CaptionFormerProcessor.register_for_auto_class("AutoProcessor")
    PIPELINE_REGISTRY.register_pipeline(
        "dense-video-object-captioning",
        pipeline_class=DenseVideoObjectCaptioningPipeline,
        pt_model=AutoModel,
        type="multimodal",
    )
    __all__ += [
        "CaptionFormerClipBatch",
        "CaptionFormerProcessor",
        "CaptionFormerVideoProcessor",
        "DenseVideoObjectCaptioningPipeline",
        "VideoFrames",
        "predict_video",
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
