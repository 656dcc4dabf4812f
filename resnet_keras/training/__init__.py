"""Layer 7: training: tf.distribute strategies, loss scaling, the training loop and its hooks,
`train` and `evaluate`. Imports the layers below it.
"""
