"""Layer 2: the configuration as data (no TensorFlow): architecture specs, named recipes and the
ModelConfig / DataConfig / TrainConfig schema with its validation. Imports only `core`.
"""
