"""Running the networks: conversion to ONNX, feature extraction, sessions and workers, the Ray executor, int8
quantization. Imports networks, data and the base."""
