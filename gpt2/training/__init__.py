"""Training a GPT-2 from scratch: the trainer, its resumable checkpoints, the built-in corpus,
and the restricted-vocabulary softmax that makes tiny models cheap to train. Imports the core."""
from . import corpus, restricted
from .trainer import TrainConfig, train

__all__ = ["TrainConfig", "corpus", "restricted", "train"]
