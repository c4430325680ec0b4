"""The smoke tier's spread over arithmetic paths and seeds, and the tolerances set from it.

A smoke case is a seeded 16-step training run judged on 100 test images, so other arithmetic (another
CPU's oneDNN kernels, oneDNN off, the portable KAF kernels) moves its numbers: near chance accuracy one
image is one point, and ridge-initialised KAFs amplify rounding. ``nox -s spread`` re-runs the tier under
each arithmetic path (seed 0, as the references) and under other seeds, each into
``runs/spread/seed<S>-onednn<0|1>-<compiled|portable>``; ``python -m kafrob.bench.spread`` then writes
``reference_results/smoke_spread.{json,md}``. Each metric's tolerance is the largest deviation from the
reference over the seed-0 runs (every arithmetic measured) times MARGIN, for CPUs not measured. Other
seeds are shown, not used: the references are seeded, and a seed moves the numbers far more than
arithmetic does, which is what makes the pinned values catch a change to the training code.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

from kafrob import atomic

METRICS = ("clean_accuracy", "robust_accuracy", "train_loss")
MARGIN = 1.5
RESOLUTION = {"clean_accuracy": 1.0, "robust_accuracy": 1.0, "train_loss": 0.005}  # tolerances round up to these
RUN_NAME = re.compile(r"seed(?P<seed>\d+)-onednn(?P<onednn>[01])-(?P<kernels>compiled|portable)$")


def load_runs(folders: list[Path], tier: str = "smoke") -> dict[str, dict[str, dict]]:
    """{run name: {case: measurement}} from spread folders (each a KAFROB_RUNS_DIR named as RUN_NAME)."""
    runs = {}
    for folder in folders:
        if not RUN_NAME.match(folder.name):
            raise ValueError(f"{folder.name!r} is not a spread run name (seed<S>-onednn<0|1>-<compiled|portable>)")
        files = sorted((folder / "measurements" / tier).glob("*.json"))
        if files:
            runs[folder.name] = {json.loads(f.read_text())["case"]: json.loads(f.read_text()) for f in files}
    return runs


def tolerances(reference: dict[str, dict], runs: dict[str, dict[str, dict]]) -> dict:
    """Per metric: the largest |run - reference| over the seed-0 runs, where and how large, and the tolerance."""
    out = {}
    for metric in METRICS:
        worst, where = 0.0, None
        for name, cases in runs.items():
            if RUN_NAME.match(name)["seed"] != "0":
                continue
            for case, m in cases.items():
                if case in reference and m.get(metric) is not None:
                    dev = abs(m[metric] - reference[case][metric])
                    if dev > worst:
                        worst, where = dev, f"{case} in {name}"
        step = RESOLUTION[metric]
        out[metric] = {"max_deviation": worst, "where": where, "tolerance": math.ceil(MARGIN * worst / step) * step}
    return out


def detected(reference: dict[str, dict], runs: dict[str, dict[str, dict]], tol: dict) -> dict[str, str]:
    """Per metric, how many cases of the other-seed runs fall outside the tolerance: how well the pinned
    values tell a changed training trajectory from another CPU's rounding."""
    out = {}
    for metric in METRICS:
        hits = total = 0
        for name, cases in runs.items():
            if RUN_NAME.match(name)["seed"] == "0":
                continue
            for case, m in cases.items():
                if case in reference and m.get(metric) is not None:
                    total += 1
                    hits += abs(m[metric] - reference[case][metric]) > tol[metric]["tolerance"]
        out[metric] = f"{hits} of {total}"
    return out


def table(reference: dict[str, dict], runs: dict[str, dict[str, dict]]) -> str:
    names = sorted(runs, key=lambda n: (RUN_NAME.match(n)["seed"] != "0", n))
    head = "| case | reference | " + " | ".join(names) + " |\n|---|---|" + "---|" * len(names) + "\n"
    fmt = lambda m: f"{m['clean_accuracy']:.0f} / {m['robust_accuracy']:.0f} / {m['train_loss']:.3f}"  # noqa: E731
    return head + "".join(f"| {case} | {fmt(ref)} | " + " | ".join(fmt(runs[n][case]) if case in runs[n] else "-"
                                                                  for n in names) + " |\n"
                          for case, ref in sorted(reference.items()))


def main(argv: list[str] | None = None) -> int:
    from kafrob.bench.store import REFERENCE_DIR, environment

    folders = [Path(a) for a in (argv if argv is not None else sys.argv[1:])]
    reference_file = REFERENCE_DIR / "smoke.json"
    stored = json.loads(reference_file.read_text())
    reference = stored["results"]
    runs = load_runs(folders)
    tol = tolerances(reference, runs)
    machine = {k: v for k, v in environment().items() if k not in ("onednn", "kaf_kernels", "kaf_target")}
    found = detected(reference, runs, tol)
    payload = {"reference": {"file": reference_file.name, "environment": stored.get("environment")},
               "runs_machine": machine, "margin": MARGIN, "tolerances": tol, "other_seeds_outside": found,
               "runs": runs}
    atomic.write_json(REFERENCE_DIR / "smoke_spread.json", payload)
    lines = "\n".join(f"* {m}: largest deviation {t['max_deviation']:.3f} ({t['where']}) -> tolerance "
                      f"+-{t['tolerance']:g}; cases of other seeds outside it: {found[m]}" for m, t in tol.items())
    md = (f"# Smoke tier: spread over arithmetic and seeds\n\nEach cell: clean % / PGD % / last-epoch training "
          f"loss. Reference: `{reference_file.name}` ({stored.get('environment', {}).get('processor', '?')}, "
          f"KAF kernels {stored.get('environment', {}).get('kaf_kernels')}). Runs: `nox -s spread` on "
          f"{machine['cpu']} ({'+'.join(machine['isa'])}). Tolerances = {MARGIN} x the largest seed-0 "
          f"deviation, rounded up:\n\n{lines}\n\n{table(reference, runs)}")
    atomic.write_text(REFERENCE_DIR / "smoke_spread.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
