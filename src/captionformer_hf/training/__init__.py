"""Training with accelerate (see :mod:`.trainer`)."""

from ..prediction import predict_example
from .trainer import TrainingConfig, evaluate_chota, state_fingerprint, train

__all__ = ["TrainingConfig", "evaluate_chota", "predict_example", "state_fingerprint", "train"]
