"""Are the released float16 models' PGD gradients masked by float16 rounding? PGD on each row's exact-float32 twin
(the same weights, ``thesis_precision=False``), its adversarial examples judged by the released (float16) model.

On the first ``--n`` images of the evaluation order (the stored shard 0), one restart with the stored restart 0's
random starts, summed loss, attacking the float16 model's predicted labels (as the stored predicted-label shards).
Prints, per row, the share the float16 model still classifies as predicted after its own PGD (the stored shard's
first restart, each loss stored) and after the twin's examples, and the images only the twin fools. Usage:

    KAFROB_NATIVE=1 TF_ENABLE_ONEDNN_OPTS=0 python tests/scripts/twin_transfer.py relu kaf_relu --n 200
"""

from __future__ import annotations

import argparse

import numpy as np
import tensorflow as tf

from kafrob.attacks.common import predict
from kafrob.attacks.pgd import PGDConfig, Reduction, pgd_restarts
from kafrob.bench.shards import SHARDS_DIR, evaluation_order, load_shard, protocol_spec
from kafrob.checkpoints import load_thesis_model
from kafrob.data import load_cifar10, to_float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("activations", nargs="+")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=50)
    args = parser.parse_args()
    data = load_cifar10()
    idx = evaluation_order(data.y_test)[:args.n]
    x = to_float(data.x_test[idx]).numpy()
    for act in args.activations:
        model, twin = load_thesis_model(act), load_thesis_model(act, thesis_precision=False)
        y = predict(model, tf.constant(x)).numpy()
        config = PGDConfig(iterations=args.iterations, restarts=1, reduction=Reduction.SUM)
        own, _ = pgd_restarts(model, x, y, config, seed=0, ids=idx)
        x_twin, _ = pgd_restarts(twin, x, y, config, seed=0, ids=idx)
        own_fooled = predict(model, tf.constant(own)).numpy() != y
        twin_fooled = predict(model, tf.constant(x_twin)).numpy() != y
        line = [f"{act}: not fooled by its own PGD {100 * (1 - own_fooled.mean()):.1f}%, by the twin's examples "
                f"{100 * (1 - twin_fooled.mean()):.1f}%, by either {100 * (1 - (own_fooled | twin_fooled).mean()):.1f}%"
                f" (only the twin fools {int((twin_fooled & ~own_fooled).sum())}, only its own "
                f"{int((own_fooled & ~twin_fooled).sum())})"]
        for reduction in Reduction:  # the stored shard 0's restart 0 on the same images and starts
            path = protocol_spec(f"thesis:resnet20-{act}", reduction=reduction).shard_path(SHARDS_DIR, 0)
            if path.exists():
                stored = load_shard(path)
                assert np.array_equal(stored["index"][:args.n], idx)
                survived = stored["first_restart"][:args.n] != 0
                line.append(f"stored restart 0 ({reduction.value}) {100 * survived.mean():.1f}%")
        print("; ".join(line), flush=True)


if __name__ == "__main__":
    main()
