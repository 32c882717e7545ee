"""The exported classifier's folder: its files' names, and its graph's input and output names. The export writes them
and the classifier reads them; both import them from here."""

SETTINGS = "settings.json"  # classes, sides, decode and resize policies, blend, temperature, clip bounds
ONNX_MODEL = "classifier.onnx"  # what dogscats.Classifier runs
KERAS_MODEL = "classifier.keras"  # the same graph in Keras
CAM_FILE = "cam.json"  # the head's weights over the feature maps, for class activation maps
OUTPUTS = ("p_head", "p_finetuned")  # the graph's outputs, read by name
INPUT_PREFIX = "image_"  # the graph's input for a backbone is image_<backbone>
FEATURE_MAP_PREFIX = "feature_map_"  # the graph's extra output for a backbone is feature_map_<backbone>
