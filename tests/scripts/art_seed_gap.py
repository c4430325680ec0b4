"""Where our attack and ART's disagree on a released model, do other random starts of either change the verdict?

Runs both with seed 0 on the first ``--n`` images of the stored evaluation order (true labels), then both with
seeds 1-4 on the images where they disagree, and prints per image which one leaves it robust. Usage:

    KAFROB_NATIVE=1 TF_ENABLE_ONEDNN_OPTS=0 python tests/scripts/art_seed_gap.py kaf_relu --attack apgd-ce --n 100
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from kafrob.attacks import attack, named
from kafrob.attacks.art import art_counterpart
from kafrob.attacks.common import predict
from kafrob.bench.shards import evaluation_order
from kafrob.checkpoints import load_thesis_model
from kafrob.data import load_cifar10, to_float


def robust(model, x, y, config, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per image: robust under ours, robust under ART's, both with this seed."""
    ours = ~attack(model, x, y, config, seed=seed).fooled
    theirs = predict(model, art_counterpart(model, x, y, config, seed=seed)).numpy() == y
    return ours, theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("activation")
    parser.add_argument("--attack", default="apgd-ce")
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    data = load_cifar10()
    idx = evaluation_order(data.y_test)[:args.n]
    x, y = to_float(data.x_test[idx]).numpy(), data.y_test[idx].astype(np.int32)
    model, config = load_thesis_model(args.activation), named(args.attack)
    start = time.time()
    ours, theirs = robust(model, x, y, config, 0)
    differ = np.flatnonzero(ours != theirs)
    print(f"seed 0: ours {ours.mean():.3f}, ART {theirs.mean():.3f}; differ at {differ.tolist()} (ours robust "
          f"there: {ours[differ].tolist()}); {time.time() - start:.0f} s", flush=True)
    for seed in (1, 2, 3, 4) if len(differ) else ():
        o, a = robust(model, x[differ], y[differ], config, seed)
        print(f"seed {seed} on those images: ours robust {o.tolist()}, ART robust {a.tolist()}", flush=True)


if __name__ == "__main__":
    main()
