"""FBF's FGSM step on the released ResNet20 rows (float16 networks, as the thesis trained them under mixed
precision): the input gradient of the batch-mean cross-entropy against the summed one, on one training batch of
the thesis's size (128), training mode (as FBF; ``--inference``: as PGD attacks it), the same random start. Prints,
per row, the share of gradient components that are exactly zero and the share whose sign agrees with the same weights
computed in exact float32 (``thesis_precision=False``). Usage:

    KAFROB_NATIVE=1 TF_ENABLE_ONEDNN_OPTS=0 python tests/scripts/fgsm_underflow.py relu kaf_relu kaf_elu
"""

from __future__ import annotations

import argparse

import numpy as np
import tensorflow as tf

from kafrob.attacks.common import cross_entropy_each
from kafrob.checkpoints import load_thesis_model
from kafrob.data import load_cifar10, to_float
from kafrob.fbf import EPS


def input_gradient(model, x, y, reduce, training: bool) -> np.ndarray:
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = reduce(cross_entropy_each(y, model(x, training=training)))
    return tape.gradient(loss, x).numpy().reshape(len(y), -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("activations", nargs="+")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--inference", action="store_true", help="the model in inference mode (as PGD attacks it)")
    args = parser.parse_args()
    data = load_cifar10()
    x = to_float(data.x_train[:args.batch]).numpy()
    start = tf.constant(x + np.random.default_rng(0).uniform(-EPS, EPS, x.shape).astype(np.float32))
    y = data.y_train[:args.batch].astype(np.int32)
    for act in args.activations:
        exact = np.sign(input_gradient(load_thesis_model(act, thesis_precision=False), start, y, tf.reduce_sum,
                                       not args.inference))
        model = load_thesis_model(act)
        for name, reduce in (("mean", tf.reduce_mean), ("sum", tf.reduce_sum)):
            g = input_gradient(model, start, y, reduce, not args.inference)
            agree = (np.sign(g) == exact).mean(1)
            print(f"{act} {name:4s}: zero components {100 * (g == 0).mean():.2f}%, sign as exact float32's on "
                  f"{100 * agree.mean():.2f}% (worst image {100 * agree.min():.1f}%)", flush=True)


if __name__ == "__main__":
    main()
