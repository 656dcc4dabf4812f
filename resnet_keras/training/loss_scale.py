"""Dynamic loss scaling for float16 training whose skip decision every replica shares.

Micikevicius et al. 2018 ("Mixed Precision Training", sec. 3.2): float16 gradients underflow
unless the loss is scaled up; a dynamic scale doubles after 2,000 finite steps and halves, with the
step skipped, when a gradient overflows. It overflows by design every couple of thousand steps.

Keras 3's `LossScaleOptimizer.check_finite` looks at each replica's own gradients before the
optimizer sums them over replicas. With N replicas, an overflow on replica k alone gives:
replica 0 (whose answer Keras keeps on the merge-call path) applies, and the all-reduce sums k's
Inf into every weight; on the merge-call-free path (XLA on GPUs) the replicas take different
branches of a `cond` that holds the all-reduce and wait for each other for ever; across workers
the collectives no longer match. Keras 2's optimizer, Model Garden and Horovod decide on the
all-reduced gradients, which are non-finite on every replica as soon as one replica's are.

`AgreedLossScaleOptimizer` keeps Keras' optimizer (its variables, so checkpoints are unchanged)
and makes the decision agreed: the replicas all-reduce one "overflowed" flag (a sum of one float
per replica and step, before the gradient all-reduce) and every replica takes the same branch.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class AgreedLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """`keras.optimizers.LossScaleOptimizer` whose finiteness check is all-reduced over replicas."""

    def check_finite(self, grads):
        finite = super().check_finite(grads)
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return finite
        overflowed = context.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
        return tf.equal(overflowed, 0.0)


def with_loss_scaling(optimizer, precision: str):
    """`optimizer` wrapped for dynamic loss scaling when `precision` is "float16" (bfloat16 has
    float32's exponent range and needs none); built inside the strategy's scope by the caller."""
    return AgreedLossScaleOptimizer(optimizer) if precision == "float16" else optimizer
