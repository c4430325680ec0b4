"""Which arithmetic a result was computed with: recorded with every result, compared before results are mixed.

The same model and inputs give different float32/float16 roundings on different paths: oneDNN's kernels
(TensorFlow's default on x86 Linux) choose code by the CPU's instruction sets, e.g. native float16 on CPUs
with AVX512-FP16, while TensorFlow's Eigen kernels (``TF_ENABLE_ONEDNN_OPTS=0``) do not; the KAF layers run
compiled or portable kernels (kafrob.native). Ridge-initialised KAFs and the released float16 thesis models
amplify such rounding differences (README, "Arithmetic").
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from kafrob import native

ONEDNN_ENV_VAR = "TF_ENABLE_ONEDNN_OPTS"


def onednn_enabled() -> bool:
    """TensorFlow's oneDNN switch as TensorFlow reads it (on by default on x86-64 Linux)."""
    value = os.environ.get(ONEDNN_ENV_VAR, "").strip().lower()
    return value not in ("0", "false")


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


def describe() -> dict:
    """The arithmetic fields of a results header: oneDNN, the CPU instruction sets that change TensorFlow's
    kernels, and the KAF kernels."""
    flags, kernels = native.cpu_flags(), kaf_kernels()
    return {"onednn": onednn_enabled(), "isa": [f for f in native.ISA_FEATURES if f in flags],
            "kaf_kernels": kernels, "kaf_target": native.target() if kernels == "compiled" else None}


def results_key(arithmetic: dict) -> dict:
    """The arithmetic fields that can change a result: the CPU's instruction sets only with oneDNN on (TensorFlow's
    Eigen kernels are compiled for one baseline and do not dispatch by CPU; the compiled KAF kernels give
    identical results on every target, tests/test_native.py)."""
    onednn = bool(arithmetic.get("onednn"))
    return {"onednn": onednn, "isa": list(arithmetic.get("isa", [])) if onednn else "any",
            "kaf_kernels": arithmetic.get("kaf_kernels")}


def label(arithmetic: dict) -> str:
    """One line for tables and failure messages (the instruction sets only where they change results)."""
    if not arithmetic.get("onednn"):
        return f"oneDNN off (the same on every x86 CPU), KAF kernels {arithmetic.get('kaf_kernels')}"
    isa = "+".join(arithmetic.get("isa", [])) or "?"
    return f"oneDNN on, {isa}, KAF kernels {arithmetic.get('kaf_kernels')}"
