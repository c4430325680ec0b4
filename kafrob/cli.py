"""`kafrob train | evaluate | submit | merge | gap | verdict | lr-find | sanity | table | regenerate`.

Results (JSON, tables) go to standard output; progress and warnings to standard error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from pathlib import Path

_RESULTS = [sys.stdout]  # standard output as main() found it: progress bars write to sys.stdout, redirected


def _print(text: str) -> None:
    print(text, file=_RESULTS[0], flush=True)


def _train_config(args):
    from kafrob.fbf import FBFConfig
    from kafrob.train import TrainConfig

    if args.case:
        from kafrob.bench.cases import BY_ID
        from kafrob.bench.tiers import get_tier

        return get_tier(args.tier).train_config(BY_ID[args.case], args.seed, adversarial=not args.clean)
    if not (args.model and args.activation):
        raise ValueError("name the model: --case <model>-<activation> (with --tier) or --model and --activation")

    return TrainConfig(model=args.model, activation=args.activation, epochs=args.epochs, min_lr=args.min_lr,
                       max_lr=args.max_lr, batch_size=args.batch_size, seed=args.seed, augment=args.augment,
                       precision=args.precision, train_per_class=args.train_per_class,
                       decay_epochs=args.decay_epochs, early_stop=args.early_stop, momentum=args.momentum,
                       fbf=FBFConfig(clip_start=args.clip_start, adversarial=not args.clean))


def _thesis_activation(spec: str) -> str | None:
    """``relu`` for ``thesis:resnet20-relu``; None for a model file."""
    return spec.split(":", 1)[1].removeprefix("resnet20-") if spec.startswith("thesis:") else None


def _model_spec(text: str) -> str:
    """A thesis:resnet20-<activation> name (checked against the registry), a model the suite trained and stored
    (<tier>:<case>, e.g. short:resnet20-relu) or a .keras file."""
    from kafrob.bench.trained import is_stored_name
    from kafrob.checkpoints import THESIS_CHECKPOINTS

    if is_stored_name(text):
        return text
    if text.startswith("thesis:"):
        if _thesis_activation(text) not in THESIS_CHECKPOINTS:
            known = ", ".join(f"thesis:resnet20-{a}" for a in THESIS_CHECKPOINTS)
            raise argparse.ArgumentTypeError(f"unknown thesis checkpoint {text!r}; known: {known}")
    elif not text.endswith(".keras"):
        raise argparse.ArgumentTypeError(f"expected thesis:resnet20-<activation>, <tier>:<case> (a stored model, e.g. "
                                         f"short:resnet20-relu) or a .keras file, got {text!r}")
    return text


def _add_eval_args(p, models: bool = True):
    from kafrob.attacks import NAMED
    from kafrob.attacks.common import LABEL_MODES
    from kafrob.attacks.pgd import Reduction
    from kafrob.bench.shards import SHARD_IMAGES

    if models:
        p.add_argument("--checkpoint", required=True, nargs="+", type=_model_spec,
                       help="thesis:resnet20-<act> or a .keras file")
    p.add_argument("--attack", default="pgd", choices=list(NAMED),
                   help="autoattack: AutoAttack's standard composition; the others alone (default pgd)")
    p.add_argument("--iterations", type=int, default=50, help="PGD's (the other attacks keep their published sizes)")
    p.add_argument("--restarts", type=int, default=10, help="PGD's")
    p.add_argument("--reduction", default=Reduction.MEAN.value, choices=[r.value for r in Reduction],
                   help="PGD's loss over a batch: mean (ART's, the thesis's) or sum (each image's own gradient: no "
                        "float16 gradient underflow on the released models, docs/attacks.md)")
    p.add_argument("--labels", default=["true"], nargs="+", choices=LABEL_MODES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-images", type=int, default=SHARD_IMAGES)
    p.add_argument("--data-dir", default=None)


def _add_train_args(p):
    from kafrob.activations import ACTIVATIONS
    from kafrob.bench.cases import BY_ID
    from kafrob.bench.tiers import TIERS
    from kafrob.models import MODELS

    p.add_argument("--case", choices=list(BY_ID), help="a tier's case: its whole configuration (--tier)")
    p.add_argument("--tier", default="short", choices=list(TIERS), help="with --case")
    p.add_argument("--model", choices=sorted(MODELS))
    p.add_argument("--activation", choices=list(ACTIVATIONS))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--min-lr", type=float, default=0.01)
    p.add_argument("--max-lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--augment", action="store_true")
    p.add_argument("--precision", default="float32", choices=("float32", "mixed_float16"))
    p.add_argument("--train-per-class", type=int, default=None)
    p.add_argument("--decay-epochs", type=int, default=0)
    p.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (the thesis: none)")
    p.add_argument("--early-stop", action="store_true")
    p.add_argument("--clip-start", action="store_true")
    p.add_argument("--clean", action="store_true", help="plain training instead of FBF")
    p.add_argument("--data-dir", default=None)


def cmd_train(args) -> int:
    from kafrob.data import load_cifar10
    from kafrob.train import train

    result = train(_train_config(args), load_cifar10(args.data_dir), args.run_dir, resume=args.resume)
    from kafrob import atomic

    atomic.save_with(Path(args.run_dir) / "model.keras", result.model.save)
    if args.keep:
        if not args.case:
            raise ValueError("--keep stores a tier's case: name it with --case (and --tier)")
        from kafrob.bench.trained import keep

        print(f"kept as {keep(Path(args.run_dir), args.tier, args.case)}", file=sys.stderr)
    _print(json.dumps(result.history[-1], indent=2))
    return 0


def _load_model(spec: str):
    from kafrob.bench.run import load_named_model

    return load_named_model(spec)


def _worker(text: str) -> tuple[int, int]:
    try:
        i, k = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected i/k (this process runs every k-th shard from i), got {text!r}") from None
    return i, k


def _attack_config(args, label_mode: str):
    from kafrob.attacks import named

    if args.attack == "pgd":
        return named("pgd", iterations=args.iterations, restarts=args.restarts, label_mode=label_mode,
                     reduction=args.reduction)
    return named(args.attack, label_mode=label_mode)


def _specs(args):
    from kafrob.bench.shards import ShardSpec

    return [ShardSpec(model, _attack_config(args, labels), seed=args.seed, shard_images=args.shard_images)
            for model in args.checkpoint for labels in args.labels]


def _merged_summary(merged) -> dict:
    from kafrob.stats import wilson_interval

    if len(merged.header["code_versions"]) > 1:
        print(f"kafrob: warning: {merged.spec['model']} {merged.spec['attack']['label_mode']} labels: shards from "
              f"code versions {', '.join(merged.header['code_versions'])} (same arithmetic; check with "
              f"`pytest benchmark --tier checkpoints` or --recompute)", file=sys.stderr)

    k_clean, k_rob, n = int(merged.clean_correct.sum()), int(merged.robust_correct.sum()), merged.n
    return {"model": merged.spec["model"], "label_mode": merged.spec["attack"]["label_mode"], "n": n,
            "shards": len(merged.shards), "clean_accuracy": k_clean / n, "robust_accuracy": k_rob / n,
            "clean_interval": wilson_interval(k_clean, n), "robust_interval": wilson_interval(k_rob, n),
            "cpu_seconds": merged.header["seconds"], "code_versions": merged.header["code_versions"]}


def cmd_evaluate_shards(args) -> int:
    """Sharded, resumable: shard-major over every model and label mode, so all rows cover the same images."""
    from kafrob.bench import executor as ex
    from kafrob.bench.run import reference_arithmetic_only
    from kafrob.bench.shards import merge, shards_for

    specs, root = _specs(args), Path(args.shards_dir)
    reference_arithmetic_only(root)  # before any job is submitted (run_shards checks it too)
    plan = [(spec, shard) for shard in shards_for(args.n, specs[0], args.shard) for spec in specs]
    if args.executor == "serial":  # the same job, in this process
        ex.ShardJob(plan, root, args.data_dir, recompute=args.recompute)()
    else:
        if args.recompute:
            raise ValueError("--recompute runs in this process only (--executor serial)")
        jobs = ex.shard_jobs(plan, args.jobs, root, args.data_dir)
        report = ex.wait(ex.submit(jobs, ex.Engine(args.executor), args.jobs_dir, _resources(args, ex.CPU_SHARD)),
                         progress=lambda line: print(line, file=sys.stderr, flush=True))
        if report.failures:
            raise RuntimeError("; ".join(report.failures))
    _print(json.dumps([_merged_summary(merge(s, root)) for s in specs], indent=2))
    return 0


def _resources(args, default):
    """The per-job request: the defaults for this kind of job, overridden by the command line."""
    given = {"gpus": args.gpus_per_job, "cpus": args.cpus_per_job, "mem_gb": args.mem_gb,
             "timeout_min": args.timeout_min, "partition": args.partition}
    return dataclasses.replace(default, **{k: v for k, v in given.items() if v is not None})


def cmd_submit(args) -> int:
    """Every case of a tier as one job each; then the tier's table from the stored measurements."""
    from kafrob.bench import executor as ex
    from kafrob.bench.tiers import get_tier

    tier = get_tier(args.tier)
    cases = args.cases or list(tier.row_ids())
    default = ex.FULL_CASE if args.tier == "full" else ex.Resources()
    jobs = [ex.CaseJob(case, args.tier, args.seed, args.data_dir) for case in cases]
    report = ex.wait(ex.submit(jobs, ex.Engine(args.executor), args.jobs_dir, _resources(args, default)),
                     progress=lambda line: print(line, file=sys.stderr, flush=True))
    failed = [f"{r['case']}: {f}" for r in report.results for f in r["failures"]]
    _print(json.dumps({"cases": len(cases), "finished": len(report.results), "job_failures": report.failures,
                       "out_of_tolerance": failed}, indent=2))
    return 0 if not report.failures and not failed else 1


def cmd_gap(args) -> int:
    """PGD (the thesis's attack) against a stronger attack on the same stored images, per model and label mode."""
    from kafrob.attacks import named
    from kafrob.bench.gap import attack_name, gap_table, store_gaps

    root, pgd, strong = Path(args.shards_dir), _attack_config(args, "true"), named(args.stronger)  # --attack is pgd
    gaps, left_out = store_gaps(args.checkpoint, pgd, strong, root, args.labels, seed=args.seed,
                                shard_images=args.shard_images)
    for line in left_out:  # a row whose evaluation has not begun: the others still make a table
        print(f"left out: {line}", file=sys.stderr)
    if not gaps:
        raise ValueError(f"no model has finished shards of both attacks in {root}")
    table = gap_table(gaps, attack_name(pgd), attack_name(strong))
    if args.out:
        from kafrob import atomic

        atomic.write_text(Path(args.out), table + "\n")
    _print(table)
    return 0


def cmd_merge(args) -> int:
    from kafrob.bench.shards import merge

    _print(json.dumps([_merged_summary(merge(s, Path(args.shards_dir))) for s in _specs(args)], indent=2))
    return 0


def cmd_verdict(args) -> int:
    """Tables, figure and readings of the released models from whatever shards are finished."""
    from kafrob.bench.released import write_verdict

    md, left_out = write_verdict(_attack_config(args, "true"), Path(args.shards_dir), args.n,
                                 Path(args.out) if args.out else None, seed=args.seed, shard_images=args.shard_images,
                                 label_modes=tuple(args.labels))
    for line in left_out:
        print(f"left out: {line}", file=sys.stderr)
    _print(md)
    return 0


def cmd_evaluate(args) -> int:
    if args.shards_dir:
        return cmd_evaluate_shards(args)
    from kafrob.data import load_cifar10
    from kafrob.evaluate import evaluate, our_attack

    if len(args.checkpoint) != 1 or len(args.labels) != 1:
        raise ValueError("several --checkpoint or --labels values need --shards-dir (a sharded evaluation)")
    attack = _attack_config(args, args.labels[0])
    run_attack = our_attack
    if args.backend != "kafrob":
        from kafrob.attacks import art as art_backend

        if args.attack != "pgd":
            raise ValueError(f"--backend {args.backend} runs ART's PGD or APGD; use --attack pgd with it")

        run_attack = art_backend.art_pgd if args.backend == "art" else art_backend.art_apgd
    result = evaluate(_load_model(args.checkpoint[0]), load_cifar10(args.data_dir), n=args.n, clean_n=args.clean_n,
                      attack=attack, seed=args.seed, backend=args.backend, run_attack=run_attack)
    if args.out:
        result.save(args.out)
    _print(json.dumps(result.summary(), indent=2))
    return 0


def cmd_lr_find(args) -> int:
    from kafrob.data import load_cifar10
    from kafrob.lr_finder import range_test

    r = range_test(_train_config(args), load_cifar10(args.data_dir), start_lr=args.start_lr, end_lr=args.end_lr,
                   steps=args.steps, plot=args.plot)
    _print(json.dumps({"min_lr": r.min_lr, "max_lr": r.max_lr, "diverged": r.diverged, "plot": args.plot}))
    return 0


def cmd_sanity(args) -> int:
    from kafrob.attacks.pgd import PGDConfig
    from kafrob.attacks.sanity import format_checks, sanity_checks
    from kafrob.data import load_cifar10, to_float
    from kafrob.evaluate import test_indices

    data = load_cifar10(args.data_dir)
    idx = test_indices(data, args.n)
    checks = sanity_checks(_load_model(args.checkpoint), to_float(data.x_test[idx]).numpy(), data.y_test[idx],
                           base=PGDConfig(iterations=args.iterations, restarts=args.restarts, reduction=args.reduction),
                           thorough=not args.quick)
    _print(format_checks(checks))
    return 0 if all(c.passed for c in checks) else 1


def cmd_table(args) -> int:
    from kafrob.bench.report import results_table
    from kafrob.bench.store import load_measurements
    from kafrob.bench.tiers import get_tier

    tier = get_tier(args.tier)
    ms = load_measurements(tier)
    if not ms:
        print(f"no measurements for tier {args.tier} yet (run the benchmark first)", file=sys.stderr)
        return 1
    _print(results_table(ms, tier))
    return 0


def cmd_regenerate(args) -> int:
    """A tier's reference files from where its numbers are (kafrob.bench.references)."""
    from kafrob.bench.references import Incomplete, regenerate
    from kafrob.bench.tiers import get_tier

    try:
        done = regenerate(get_tier(args.tier), args.data_dir, args.from_measurements)
    except Incomplete as exc:
        print(exc, file=sys.stderr)
        return 1
    for line in done.left_out:
        print(f"left out: {line}", file=sys.stderr)
    for line in done.warnings:
        print(f"kafrob: warning: {line}", file=sys.stderr)
    for path in done.written:
        _print(f"wrote {path}")
    return 0


def _add_executor_args(p, unit: str, engines: tuple[str, ...] = ("serial", "local", "slurm")) -> None:
    p.add_argument("--executor", default=engines[0], choices=engines,
                   help=f"serial: this process; local: submitit jobs as processes here; slurm: a Slurm job array "
                        f"(the {unit} split over --jobs jobs; preempted jobs are requeued and resume)")
    if unit == "shards":
        p.add_argument("--jobs", type=int, default=2, help="jobs to split the shards over")
    p.add_argument("--jobs-dir", default="runs/jobs", help="submitit's logs and pickles")
    p.add_argument("--partition", default=None)
    p.add_argument("--gpus-per-job", type=int, default=None)
    p.add_argument("--cpus-per-job", type=int, default=None)
    p.add_argument("--mem-gb", type=int, default=None)
    p.add_argument("--timeout-min", type=int, default=None)


def main(argv: list[str] | None = None) -> int:
    from kafrob.attacks import NAMED
    from kafrob.attacks.pgd import Reduction
    from kafrob.bench.cases import BY_ID, CLEAN
    from kafrob.bench.judge import PLANNED_N
    from kafrob.bench.tiers import TIERS

    parser = argparse.ArgumentParser(prog="kafrob", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="FBF-train one model")
    _add_train_args(p)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--keep", action="store_true",
                   help="with --case: store the trained model as reference_results/<tier>/<case>.keras")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", help="clean and PGD accuracy of a .keras model or thesis:resnet20-<act>")
    _add_eval_args(p)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--clean-n", type=int, default=None)
    p.add_argument("--backend", default="kafrob", choices=("kafrob", "art", "art-apgd"))
    p.add_argument("--out", default=None, help="stem for the .json/.npz results")
    p.add_argument("--shards-dir", default=None,
                   help="sharded and resumable: per-example shard files here; finished shards are kept")
    p.add_argument("--shard", type=_worker, default=(0, 1), metavar="I/K",
                   help="with --shards-dir: run every K-th shard from I (separate processes or machines)")
    p.add_argument("--recompute", action="store_true", help="with --shards-dir: recompute finished shards")
    _add_executor_args(p, "shards")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("submit", help="run a tier's cases as jobs of a job engine (Slurm, or local processes)")
    p.add_argument("--tier", required=True, choices=[t for t in TIERS if t != "checkpoints"])
    p.add_argument("--cases", nargs="+", choices=list(BY_ID) + [c + CLEAN for c in BY_ID],
                   help="default: every case of the tier and its clean-training baselines (<case>-clean)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    _add_executor_args(p, "cases", engines=("local", "slurm"))
    p.set_defaults(func=cmd_submit)
    p = sub.add_parser("verdict", help="the released models' table, paired comparisons and figure from shards")
    _add_eval_args(p, models=False)
    p.add_argument("--shards-dir", required=True)
    p.add_argument("--n", type=int, default=None,
                   help="read the first N images of the order only (default the planned, confirmatory n: "
                        + ", ".join(f"{n} for {a}" for a, n in PLANNED_N.items()) + "; a larger N is a further look)")
    p.add_argument("--out", default=None, help="stem of the .md/.png (default reference_results/checkpoints_verdict, "
                                                "_sum with --reduction sum, _autoattack with --attack autoattack)")
    p.set_defaults(func=cmd_verdict, labels=["predicted", "true"])
    p = sub.add_parser("gap", help="PGD against a stronger attack (AutoAttack) on the same stored images, per example")
    _add_eval_args(p)
    p.add_argument("--stronger", default="autoattack", choices=[n for n in NAMED if n != "pgd"])
    p.add_argument("--shards-dir", required=True)
    p.add_argument("--out", default=None, help="write the table (markdown) here too")
    p.set_defaults(func=cmd_gap, attack="pgd")
    p = sub.add_parser("merge", help="assemble the finished shards of sharded evaluations")
    _add_eval_args(p)
    p.add_argument("--shards-dir", required=True)
    p.set_defaults(func=cmd_merge)
    p = sub.add_parser("lr-find", help="LR range test under FBF")
    _add_train_args(p)
    p.add_argument("--start-lr", type=float, default=1e-5)
    p.add_argument("--end-lr", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--plot", default="lr_range_test.png")
    p.set_defaults(func=cmd_lr_find)
    p = sub.add_parser("sanity", help="Carlini et al. 2019 checks on a model")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--restarts", type=int, default=10)
    p.add_argument("--reduction", default=Reduction.MEAN.value, choices=[r.value for r in Reduction],
                   help="PGD's loss over a batch (FGSM's is each image's own: a mean that underflows in float16 "
                        "shows as PGD weaker than FGSM)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=cmd_sanity)
    for name, func, help_ in (("table", cmd_table, "print the measured results of a tier"),
                              ("regenerate", cmd_regenerate, "re-measure a tier, rewrite reference_results/")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--tier", default="smoke", choices=list(TIERS))
        p.add_argument("--data-dir", default=None)
        if name == "regenerate":
            p.add_argument("--from-measurements", action="store_true",
                           help="write the tables from the last benchmark run (runs/measurements) instead")
        p.set_defaults(func=func)
    args = parser.parse_args(argv)
    _RESULTS[0] = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        print(f"kafrob: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
