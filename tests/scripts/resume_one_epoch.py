"""Resume equivalence at a tier's full size: continue a run from its epoch-k checkpoint in a fresh process and
compare the epoch-(k+1) checkpoint with the uninterrupted run's.

A run killed anywhere in epoch k+1 restarts that epoch from the epoch-k checkpoint, so this is the killed-and-resumed
run. Usage (the checkpoints are copies of the run's ``checkpoint.npz`` taken after each epoch):

    python tests/scripts/resume_one_epoch.py --tier short --case resnet20-relu \\
        --start runs/short/resnet20-relu-epochs/epoch-1.npz --expect runs/short/resnet20-relu-epochs/epoch-2.npz
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from kafrob.bench.cases import BY_ID
from kafrob.bench.tiers import get_tier
from kafrob.data import load_cifar10
from kafrob.train import CHECKPOINT, train


class _Done(Exception):
    pass


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tier", required=True)
    p.add_argument("--case", required=True)
    p.add_argument("--start", required=True, type=Path)
    p.add_argument("--expect", required=True, type=Path)
    args = p.parse_args()
    config = get_tier(args.tier).train_config(BY_ID[args.case])
    with np.load(args.expect) as f:
        epoch = json.loads(str(f["meta"]))["epoch"]

    def stop_after(e: int, step: int) -> None:
        if e == epoch:  # the first step after the compared epoch: its checkpoint is written
            raise _Done

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(args.start, Path(tmp) / CHECKPOINT)
        try:
            train(config, load_cifar10(), tmp, resume=True, on_step=stop_after)
        except _Done:
            pass
        with np.load(Path(tmp) / CHECKPOINT) as mine, np.load(args.expect) as theirs:
            keys = [k for k in theirs.files if k != "meta"]
            differ = [k for k in keys if not np.array_equal(mine[k], theirs[k])]
            worst = max((float(np.max(np.abs(mine[k] - theirs[k]))) for k in differ), default=0.0)
            history = json.loads(str(mine["meta"]))["history"][-1]
    print(f"epoch {epoch}: {len(keys) - len(differ)} of {len(keys)} arrays identical, max |diff| {worst:g}; "
          f"resumed epoch's loss {history['loss']:.6f}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
