"""Training with accelerate (see :mod:`.trainer`)."""

from .trainer import TrainingConfig, evaluate_chota, predict_example, state_fingerprint, train

__all__ = ["TrainingConfig", "evaluate_chota", "predict_example", "state_fingerprint", "train"]
