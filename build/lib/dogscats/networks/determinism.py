"""Seeding, so the same params and data give the same weights, features and metrics."""

import keras
import tensorflow as tf


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TF ops deterministic, so reruns give the same model."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
