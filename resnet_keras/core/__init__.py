"""Layer 1, the base: errors, files and atomic writes, bucket storage, the network probe, TensorFlow
version shims, subprocess helpers, the precision choice and plots. Imports nothing else of the package.
"""
