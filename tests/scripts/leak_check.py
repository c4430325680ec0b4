"""What a training checkpoint does under one step and under PGD (docs/short_tier.md, "What the overfitted models do").

Eval mode, the first 500 images of the 1,000-image stratified test subset: clean accuracy; one FGSM step of eps from
the clean image built from the true label, from the model's own prediction, from a random wrong label; random signs
of eps; PGD-10 (1 restart, true labels) on the first 200. A catastrophically overfitted model resists the single
steps and not PGD; label leaking shows as higher accuracy under the true-label step than on clean images.

    KAFROB_DATA_DIR=... python tests/scripts/leak_check.py runs/short/resnet20-relu-epochs/epoch-4.npz
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import tensorflow as tf

from kafrob.attacks.common import predict
from kafrob.attacks.pgd import PGDConfig, fgsm, pgd_attack
from kafrob.data import load_cifar10, to_float
from kafrob.evaluate import test_indices
from kafrob.models import build_model

EPS = 8 / 255


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint", help="a run's checkpoint.npz (kafrob.train)")
    p.add_argument("--case", default="resnet20-relu")
    args = p.parse_args()
    model = build_model(*args.case.split("-", 1))
    with np.load(args.checkpoint) as f:
        for i, v in enumerate(model.variables):
            v.assign(f[f"model_{i}"])
        epoch = json.loads(str(f["meta"]))["epoch"]
    data = load_cifar10()
    idx = test_indices(data, 1000)[:500]
    x, y = tf.constant(to_float(data.x_test[idx]).numpy()), data.y_test[idx].astype(np.int32)

    def accuracy(images) -> float:
        return float(np.mean(predict(model, images).numpy() == y))

    def one_step(labels) -> np.ndarray:
        return fgsm(model, x, labels, EPS)

    rng = np.random.default_rng(0)
    wrong = ((y + rng.integers(1, 10, len(y))) % 10).astype(np.int32)
    signs = tf.clip_by_value(x + EPS * tf.sign(tf.random.stateless_normal(x.shape, [0, 0])), 0.0, 1.0)
    _, fooled = pgd_attack(model, x.numpy()[:200], y[:200], PGDConfig(iterations=10, restarts=1))
    print(f"epoch {epoch}: clean {accuracy(x):.3f}; FGSM from the true label {accuracy(one_step(y)):.3f}, from the "
          f"prediction {accuracy(one_step(predict(model, x))):.3f}, from a random wrong label "
          f"{accuracy(one_step(wrong)):.3f}; random signs {accuracy(signs):.3f}; PGD-10 {1 - fooled.mean():.3f} (200)")


if __name__ == "__main__":
    main()
