"""Every setting's allowed values, one list each: what params.yaml and a classifier's settings.json are checked
against, and what the modules that act on a setting import where they check it too; data only, so that checking needs
neither TensorFlow nor YAML, and a stage's outputs never depend on this module (it is in no stage's deps)."""

import re

AUTO = "auto"
ENGINES = ("auto", "tensorflow", "onnxruntime")  # features.engine: dogscats.engine.conversion
EXECUTORS = ("local", "ray")  # features.executor
PRECISIONS = ("float32", "bfloat16", "float16", "int8", "auto")  # features.precision: extract.py, quantize.py
ONNXRUNTIME_PRECISIONS = ("float32", "int8", "auto")  # what the onnxruntime engine runs (int8: engine/quantize.py)
POOLINGS = ("avg", "max", "flatten")  # features.pooling: dogscats.networks.backbones
WEIGHTS = ("imagenet", None)  # features.weights (None: random, for tests): dogscats.networks.backbones
CLASS_WEIGHTS = ("none", "balanced")  # train.class_weight
OPTIMIZERS = ("adadelta", "adafactor", "adagrad", "adam", "adamax", "adamw", "ftrl", "lion", "nadam", "rmsprop", "sgd")
RESIZE_POLICIES = ("squash", "crop", "pad")  # stretch to a square; centre-crop the short side; pad to a square
DECODE_POLICIES = ("full", "reduced")  # reduced: JPEG decoded at 1/2, 1/4 or 1/8 scale (see load_resized)
LAYOUT = re.compile(r"([1-9][0-9]*)x([1-9][0-9]*)")  # features.workers: WxT, e.g. 2x1
LAYOUT_HELP = '"auto" or WxT (W worker processes of T threads each, e.g. 2x1)'
