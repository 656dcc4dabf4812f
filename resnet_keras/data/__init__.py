"""Layer 4: input: decoding and evaluation views (preprocessing), augmentation, data sources (folders,
TFDS, archives), sharded TFRecords and the tf.data pipeline. Imports the layers below it.
"""
