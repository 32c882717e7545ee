"""Every backbone's name and the image side it was trained at, without TensorFlow: params are checked against this
table before any work, and the registry (backbones.py) builds its networks at these sizes."""

NATIVE_SIZES = {
    "efficientnet_lite0": 224,
    "efficientnet_lite1": 240,
    "efficientnet_lite2": 260,
    "resnet50": 224,
    "inception_v3": 299,
    "xception": 299,
    "vgg16": 224,
    "efficientnetv2_b0": 224,
    "efficientnetv2_b1": 240,
    "efficientnetv2_b2": 260,
    "efficientnetv2_b3": 300,
    "efficientnetv2_s": 384,
    "convnext_tiny": 224,
    "small_cnn": 150,
}
MIN_SIZES = {"inception_v3": 75, "xception": 71}  # the smallest sides keras.applications accepts
MIN_SIZE = 32  # every other backbone's
