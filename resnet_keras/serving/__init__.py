"""Layer 8: deployment: SavedModel and TFLite export, ONNX, prediction and feature extraction.
Imports the layers below it.
"""
