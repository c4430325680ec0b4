"""Which arithmetic a result was computed with: recorded with every result, compared before results are mixed.

The same model and inputs give different float32/float16 roundings on different paths: oneDNN's kernels
(TensorFlow's default on x86 Linux) choose code by the CPU's instruction sets, e.g. native float16 on CPUs
with AVX512-FP16. ``TF_ENABLE_ONEDNN_OPTS=0`` turns off oneDNN's graph rewrites, but TensorFlow's Eigen matrix
products and convolutions still call oneDNN's sgemm, which also picks its code by the CPU at run time (the
released kaf_elu model: 77.43% clean accuracy on an Intel Xeon, 77.58% on an AMD EPYC, same code and batch);
``TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL=0`` makes them Eigen's own, compiled for one x86 baseline.
Both off is the reference arithmetic (``REFERENCE_ENV``): no oneDNN code at all, but not the same on every x86
CPU: batch normalisation's 1/sqrt(variance + eps) runs the CPU's approximate RSQRTPS instruction (``rsqrt``), so an
Intel Xeon and an AMD EPYC differ on a few borderline images (``machine``) unless ``KAFROB_EXACT_RSQRT=1``; Eigen
sizes its blocks by the threads (``eigen_blocking``) and the shapes, so the batch matters.
The KAF layers run compiled or portable kernels (kafrob.native). Ridge-initialised KAFs and the released float16
thesis models amplify rounding differences (README, "KAF kernels and arithmetic").
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from pathlib import Path

from kafrob import native

ONEDNN_ENV_VAR = "TF_ENABLE_ONEDNN_OPTS"
CONTRACTION_ENV_VAR = "TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL"

# The reference arithmetic (both read when TensorFlow starts): no oneDNN rewrites, Eigen's own contractions.
REFERENCE_ENV = {ONEDNN_ENV_VAR: "0", CONTRACTION_ENV_VAR: "0"}
REFERENCE_COMMAND = " ".join(f"{k}={v}" for k, v in REFERENCE_ENV.items())

# Batch normalisation's inverse standard deviation (kafrob.models.batch_norm), read whenever a model is traced.
RSQRT_ENV_VAR = "KAFROB_EXACT_RSQRT"


def onednn_enabled() -> bool:
    """TensorFlow's oneDNN switch as TensorFlow reads it (on by default on x86-64 Linux)."""
    value = os.environ.get(ONEDNN_ENV_VAR, "").strip().lower()
    return value not in ("0", "false")


def contractions() -> str:
    """``onednn`` or ``eigen``: what TensorFlow's Eigen matrix products and convolutions run, as TensorFlow reads
    TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL (oneDNN's sgemm by default on x86-64 Linux)."""
    value = os.environ.get(CONTRACTION_ENV_VAR, "").strip().lower()
    return "eigen" if value in ("0", "false") else "onednn"


def rsqrt() -> str:
    """``hardware`` or ``exact``: how batch normalisation computes 1/sqrt(variance + eps). TensorFlow's Rsqrt and its
    fused batch-norm kernel take the CPU's approximate RSQRTPS and one Newton step (Eigen's fast path; bit for bit on
    every float32 in [1, 4) here), and RSQRTPS's last bits are the CPU maker's choice (Intel's manual bounds only
    its error); ``KAFROB_EXACT_RSQRT=1`` divides by the square root, both correctly rounded by IEEE 754."""
    return "exact" if os.environ.get(RSQRT_ENV_VAR, "").strip().lower() in ("1", "true") else "hardware"


def env_for(arithmetic: dict) -> dict[str, str]:
    """The environment variables that make a new process compute under ``arithmetic`` (a results header)."""
    return {ONEDNN_ENV_VAR: "1" if arithmetic.get("onednn") else "0",
            CONTRACTION_ENV_VAR: "0" if arithmetic.get("contractions") == "eigen" else "1",
            RSQRT_ENV_VAR: "1" if arithmetic.get("rsqrt") == "exact" else "0"}


def kaf_kernels() -> str:
    """``compiled`` or ``portable``: the KAF kernels this process runs (kafrob.kaf, kafrob.native). The compiled
    kernels' targets give identical results (tests/test_native.py); the target is recorded beside."""
    return "compiled" if native.library() is not None else "portable"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), to name it with every figure."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_kib(level: int) -> int | None:
    """The size in KiB of cpu0's level-``level`` data (or unified) cache (sysfs), which Eigen reads from the CPU to
    size its blocks; None where unknown."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if int((index / "level").read_text()) == level and (index / "type").read_text().strip() != "Instruction":
                return int((index / "size").read_text().strip().removesuffix("K"))
        except (OSError, ValueError):
            return None
    return None


def intra_op_threads() -> int:
    """The threads TensorFlow's kernels split work over: TF_NUM_INTRAOP_THREADS, else the CPUs this process may use."""
    return int(os.environ.get("TF_NUM_INTRAOP_THREADS") or 0) or len(os.sched_getaffinity(0))


def eigen_blocking(arithmetic: dict) -> tuple:
    """What Eigen's contraction blocks depend on besides the code (its depth block, so the summation order): one
    thread or several, and the L1 data cache size. Equal on the machines the stores were made on (2 threads, 48 KiB);
    measured: 2 and 4 threads give identical PGD results, 1 thread other ones."""
    threads = arithmetic.get("threads")
    return (None if threads is None else threads > 1, arithmetic.get("l1d_kib"))


def describe() -> dict:
    """The arithmetic fields of a results header: oneDNN, the CPU instruction sets that change TensorFlow's
    kernels, and the KAF kernels."""
    flags, kernels = native.cpu_flags(), kaf_kernels()
    return {"onednn": onednn_enabled(), "contractions": contractions(), "rsqrt": rsqrt(), "threads": intra_op_threads(),
            "l1d_kib": cache_kib(1), "l2_kib": cache_kib(2), "l3_kib": cache_kib(3),
            "isa": [f for f in native.ISA_FEATURES if f in flags],
            "kaf_kernels": kernels, "kaf_target": native.target() if kernels == "compiled" else None}


def isa_independent(arithmetic: dict) -> bool:
    """Whether ``arithmetic`` runs no code chosen by the CPU's instruction sets: no oneDNN code at all (Eigen's kernels
    are compiled for one baseline; the compiled KAF kernels give identical results on every target,
    tests/test_native.py). Its results still depend on the machine (``eigen_blocking``, ``machine``). Headers without
    ``contractions`` predate the field: TensorFlow's default, oneDNN's."""
    return not arithmetic.get("onednn") and arithmetic.get("contractions", "onednn") == "eigen"


# What a result under the reference arithmetic with the hardware rsqrt (``rsqrt``) still depends on besides the code
# and the batch: the machine. The released models' recheck shards (10 images) re-computed on an Intel Xeon came out
# otherwise than on the AMD EPYC that stored them on 1-2 borderline images of relu, kaf_relu and kaf_swish, and 18-37
# of the 2,000 stored clean predictions of the ridge-initialised KAF rows changed, same code and threads. The cause is
# batch normalisation's RSQRTPS, whose last bits the CPU maker chooses (docs/arithmetic.md: exact 1/sqrt changes 36
# of kaf_relu's clean predictions here, 22 of them among the 37). The cache sizes do not matter (measured: TF's
# Conv2D and MatMul equal Eigen built alone at any realistic cache sizes). A recheck is exact only on its machine.
MACHINE_FIELDS = ("cpu", "isa", "l1d_kib", "l2_kib", "l3_kib")


def machine(header: dict) -> dict:
    """The machine a result was computed on, as far as results were seen to depend on it (``MACHINE_FIELDS`` and
    one thread or several); fields a header does not record (older headers: L2, L3) are left out."""
    threads = header.get("threads")
    fields = {f: header.get(f) for f in MACHINE_FIELDS} | {"several_threads": None if threads is None else threads > 1}
    return {k: v for k, v in fields.items() if v is not None}


def same_machine(a: dict, b: dict) -> bool:
    """Whether two results headers name the same machine: every ``machine`` field both record is equal."""
    ma, mb = machine(a), machine(b)
    return all(ma[k] == mb[k] for k in ma.keys() & mb.keys()) and "cpu" in ma.keys() & mb.keys()


def machine_slug(header: dict) -> str:
    """A folder name for the machine of ``header``: its CPU's name and a digest of the ``machine`` fields."""
    fields = machine(header)
    name = re.sub(r"[^a-z0-9]+", "-", str(fields.get("cpu", "unknown-cpu")).lower()).strip("-")
    return f"{name}-{hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]}"


def vendor_independent(arithmetic: dict) -> bool:
    """``isa_independent`` with the exact rsqrt (``rsqrt``): no instruction whose result the CPU maker chooses is
    left in the models' computations (tests/test_batch_norm.py: their graphs hold no approximate op); the same bits
    on every x86 CPU as far as machines were compared (tests/test_batch_norm.py, the stored exact logits)."""
    return isa_independent(arithmetic) and arithmetic.get("rsqrt") == "exact"


def results_key(arithmetic: dict) -> dict:
    """The arithmetic fields that can change a result: the CPU's instruction sets unless ``isa_independent``; headers
    without ``rsqrt`` predate the field (the hardware's)."""
    return {"onednn": bool(arithmetic.get("onednn")), "contractions": arithmetic.get("contractions", "onednn"),
            "isa": "any" if isa_independent(arithmetic) else list(arithmetic.get("isa", [])),
            "kaf_kernels": arithmetic.get("kaf_kernels"), "rsqrt": arithmetic.get("rsqrt", "hardware")}


def label(arithmetic: dict) -> str:
    """One line for tables and failure messages (the instruction sets only where they change results)."""
    exact = ", exact rsqrt" if arithmetic.get("rsqrt") == "exact" else ""
    kernels = f"KAF kernels {arithmetic.get('kaf_kernels')}{exact}"
    if isa_independent(arithmetic):
        return f"oneDNN off, Eigen contractions (no oneDNN code), {kernels}"
    isa = "+".join(arithmetic.get("isa", [])) or "?"
    if not arithmetic.get("onednn"):
        return f"oneDNN off but oneDNN's sgemm in contractions, {isa}, {kernels}"
    return f"oneDNN on, {isa}, {kernels}"
