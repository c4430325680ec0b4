"""Models this suite trained, kept in the store so anyone can re-evaluate them in minutes and attack them with
the stronger attacks: ``reference_results/<tier>/<case>.keras`` with ``<case>.history.json`` (the config, its
digest, the per-epoch loss, accuracy, learning rate, seconds and catastrophic-overfitting monitor readings, the
code version and the arithmetic) and ``<case>.curves.png``. They are named ``<tier>:<case>`` (``short:resnet20-relu``)
wherever a model is expected. Their PGD evaluation is stored as shards under ``reference_results/<tier>/shards``
(kafrob.bench.shards, the thesis protocol in both label modes); ``stored_measurement`` makes a tier's Measurement of
both, the floors a re-trained model is held to (kafrob.bench.judge); ``stored_comparisons`` compares the kept
models pairwise on the images their shards share."""

from __future__ import annotations

import json
from pathlib import Path

from kafrob import atomic
from kafrob.bench.cases import CLEAN
from kafrob.bench.store import REFERENCE_DIR, Measurement, code_version, environment


def stored_path(name: str, root: Path | None = None) -> Path:
    """``short:resnet20-relu`` -> reference_results/short/resnet20-relu.keras (or under ``root``)."""
    tier, _, case = name.partition(":")
    return Path(REFERENCE_DIR if root is None else root) / tier / f"{case}.keras"


def is_stored_name(text: str) -> bool:
    from kafrob.bench.cases import BY_ID
    from kafrob.bench.tiers import TIERS

    tier, sep, case = text.partition(":")
    return bool(sep) and tier in TIERS and case.removesuffix(CLEAN) in BY_ID


def train_command(name: str) -> str:
    """How to make the stored model ``name`` (``short:resnet20-relu``, ``short:resnet20-relu-clean``)."""
    tier, _, case = name.partition(":")
    base = case.removesuffix(CLEAN)
    return f"kafrob train --case {base} --tier {tier}{' --clean' if base != case else ''} --keep"


def keep(run_dir: Path, tier: str, case: str, root: Path | None = None) -> Path:
    """Copy a finished training run (``model.keras`` and ``history.json`` of ``kafrob train``) into the store, as
    ``<tier>:<case>``, or ``<tier>:<case>-clean`` for a run without adversarial examples."""
    run_dir = Path(run_dir)
    model, history = run_dir / "model.keras", run_dir / "history.json"
    for path in (model, history):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: finish the run (kafrob train ... --resume) first")
    meta = json.loads(history.read_text())
    if not meta["config"]["fbf"]["adversarial"]:
        case += CLEAN
    target = stored_path(f"{tier}:{case}", root)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic.atomic_write(target, lambda f: f.write(model.read_bytes()))
    record = {"case": case, "tier": tier, **meta, "code_version": code_version(), **environment()}
    atomic.write_json(target.with_suffix(".history.json"), record)
    png = curves_png(meta["history"], case, meta["config"]["fbf"]["adversarial"])
    atomic.atomic_write(target.with_suffix(".curves.png"), lambda f: f.write(png))
    return target


def load_history(name: str, root: Path | None = None) -> dict:
    return json.loads(stored_path(name, root).with_suffix(".history.json").read_text())


def curves_png(history: list[dict], title: str, adversarial: bool = True) -> bytes:
    """Training loss and accuracy (on the FBF examples, or the clean ones), the monitor's PGD-5 accuracy and the LR,
    per epoch."""
    from kafrob.bench.report import _png, _pyplot

    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    examples = "FBF examples" if adversarial else "clean examples"
    left.plot(epochs, [h["loss"] for h in history], "o-", label=f"training loss ({examples})")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.legend(loc="upper right")
    right.plot(epochs, [100 * h["accuracy"] for h in history], "o-", label=f"training accuracy ({examples})")
    if any("monitor_pgd_accuracy" in h for h in history):
        right.plot(epochs, [100 * h.get("monitor_pgd_accuracy", float("nan")) for h in history], "s-",
                   label="PGD-5 accuracy, monitor batch")
    right.set_xlabel("epoch")
    right.set_ylabel("%")
    lr = right.twinx()
    lr.plot(epochs, [h["lr"] for h in history], ":", color="grey", label="LR at epoch end")
    lr.set_ylabel("learning rate")
    right.legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    return _png(fig)


def shards_root(tier: str, root: Path | None = None) -> Path:
    return Path(REFERENCE_DIR if root is None else root) / tier / "shards"


def stored_measurement(tier: str, case: str, data, root: Path | None = None,
                       shard_images: int | None = None) -> Measurement:
    """A kept model's numbers: clean accuracy on all 10,000 test images (computed: seconds), PGD in both label modes
    on the shards both have finished; seconds: the training's and the shards' CPU time."""
    from kafrob.bench.run import load_named_model
    from kafrob.bench.shards import SHARD_IMAGES, both_modes, protocol_measurement
    from kafrob.evaluate import clean_correct

    name = f"{tier}:{case}"
    correct = clean_correct(load_named_model(str(stored_path(name, root))), data)
    history = load_history(name, root)["history"]
    return protocol_measurement(case, tier, 100 * int(correct.sum()) / len(correct), len(correct),
                                both_modes(name, shards_root(tier, root), shard_images or SHARD_IMAGES),
                                other_seconds=sum(h["seconds"] for h in history), train_loss=history[-1]["loss"])


def stored_comparisons(tier: str, cases: list[str], root: Path | None = None) -> list:
    """The kept models of ``cases`` against each other on the images all their stored shards cover, per label mode
    (kafrob.bench.judge.compare_all's pairs, and each FBF model against its clean-training baseline)."""
    from kafrob.bench.cases import row_label
    from kafrob.bench.judge import common_rows, compare_all
    from kafrob.bench.shards import merge, protocol_spec

    merged = {(row_label(case), mode): merge(protocol_spec(f"{tier}:{case}", mode), shards_root(tier, root))
              for case in cases for mode in ("predicted", "true")}
    baselines = tuple((row_label(c), row_label(c + CLEAN), "FBF vs clean training") for c in cases
                      if c + CLEAN in cases)
    return compare_all(common_rows(merged), baselines)
