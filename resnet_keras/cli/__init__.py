"""Layer 10, the top: the `resnet-keras` command line. `--help` imports no TensorFlow."""
