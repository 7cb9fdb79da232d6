"""Video processor, processor and pipeline (remote-code safe files)."""

from .pipeline_captionformer import DenseVideoObjectCaptioningPipeline
from .processing_captionformer import CaptionFormerProcessor
from .video_processing_captionformer import CaptionFormerVideoProcessor, VideoFrames

__all__ = ["CaptionFormerProcessor", "CaptionFormerVideoProcessor", "DenseVideoObjectCaptioningPipeline", "VideoFrames"]
