"""What users run: the exported Classifier, class activation maps, the dogscats command. No TensorFlow, Keras, tf2onnx
or SciPy."""
