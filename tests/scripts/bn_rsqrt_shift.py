"""Which stored clean predictions the exact batch-norm rsqrt changes, and how many of them the machine changed.

For each row: the clean predictions of the images of every stored batch-mean PGD shard (predicted labels, batches
of 200 as stored), computed here with TensorFlow's rsqrt and with the exact one (KAFROB_EXACT_RSQRT), against the
stored ones (docs/arithmetic.md, "The cause"). Usage, under the reference arithmetic:

    TF_ENABLE_ONEDNN_OPTS=0 TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL=0 KAFROB_NATIVE=1 \
    python tests/scripts/bn_rsqrt_shift.py kaf_relu kaf_swish relu
"""

from __future__ import annotations

import os
import sys

import numpy as np

from kafrob.arithmetic import RSQRT_ENV_VAR
from kafrob.attacks.common import predict
from kafrob.bench import run, shards
from kafrob.data import load_cifar10, to_float


def main(rows: list[str]) -> None:
    data = load_cifar10()
    for activation in rows:
        name = f"thesis:resnet20-{activation}"
        spec = shards.protocol_spec(name, "predicted")
        stored = [shards.load_shard(spec.shard_path(shards.SHARDS_DIR, k))
                  for k in shards.finished(spec, shards.SHARDS_DIR)]
        model = run.load_named_model(name)
        pred = {}
        for rsqrt in ("0", "1"):
            os.environ[RSQRT_ENV_VAR] = rsqrt  # read at every eager call
            pred[rsqrt] = np.concatenate([predict(model, to_float(data.x_test[s["index"]])).numpy() for s in stored])
        kept = np.concatenate([s["clean_pred"] for s in stored])
        index = np.concatenate([s["index"] for s in stored])
        machine = set(index[pred["0"] != kept].tolist())
        exact = set(index[pred["1"] != pred["0"]].tolist())
        print(f"{activation}: {len(kept)} images; changed against the stored predictions (made on "
              f"{stored[0]['header']['cpu']}): {len(machine)}; changed by the exact rsqrt here: {len(exact)}, "
              f"{len(machine & exact)} of them among the former", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
