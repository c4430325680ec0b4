"""The compiled CPU kernels of the KAF layer (``kafrob/native/*.cc``): built on first use, cached, optional.

Why compiled code: XLA on CPU turns the D-term sums of a KAF into poorly vectorised loops and fuses
(duplicates) them into their consumers; with the best pure-TensorFlow kernels a ResNet20-KAF FBF step still
cost about 2x a ReLU one (issue 7). The compiled kernels compute each element once, in double-precision SIMD
lanes, and appear inside XLA-compiled steps as FFI custom calls.

The library is compiled with the C++ compiler (``$CXX``, else g++) against the installed TensorFlow's
headers, once per source, TensorFlow version, compiler and target (x86-64-v4 or x86-64-v3, see
``target``), into ``<kafrob cache>/native`` (about a minute), then loaded from there. It is used on
CPU-only machines (with a GPU the KAF runs the TensorFlow kernels on the GPU). ``KAFROB_NATIVE``: unset,
use it where it builds; ``0``, never; ``1``, on every CPU-only machine (an error if it cannot be built: CI
sets this so that its tests never skip it). When it cannot be built (no compiler, another platform,
TensorFlow headers that no longer fit) a warning names the cause and the fix, once per process, and the KAF
layers use the portable TensorFlow kernels: the same function to float32 rounding, slower on CPU.

TensorFlow's wheel references, in ``xla/printer.h``, highwayhash headers that it does not ship;
``native/include/highwayhash`` stands in for them (it only declares the type of a member of a class the
kernels never use).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import tensorflow as tf

from kafrob.cache import cache_root

ENV_VAR = "KAFROB_NATIVE"
SOURCE_DIR = Path(__file__).with_name("native")
SOURCES = (SOURCE_DIR / "kaf_cpu.cc",  # the KAF on an even dictionary, float32 (training, evaluation)
           SOURCE_DIR / "kaf_thesis_half.cc")  # the released thesis models' float16 KAF, exactly
NEGLIGIBLE_EXPONENT = 140.0  # kaf_cpu.cc's kNegligibleExponent
MAX_EXPONENT = 700.0  # double precision overflows above exp(709)


class NativeBuildError(RuntimeError):
    pass


# x86-64 CPUs get one of two fixed targets: x86-64-v4 (AVX-512 F/CD/BW/DQ/VL: Intel Skylake-SP and later,
# AMD Zen 4 and later) or x86-64-v3 (AVX2 + FMA: Intel since 2013, AMD since 2015); others the compiler's
# default. Every lane of both computes the same operations in the same order (FMA contraction included), so
# a result does not depend on which CPU ran it (tests/test_native.py compares the two bit for bit). Not
# -march=native: on CPUs with AVX512-FP16 (Intel Sapphire Rapids and later) it turns on TensorFlow's bundled
# Eigen AVX512-FP16 code, which does not compile (issue 14), and it tied the rounding to the CPU. AVX-512
# pays: the KAF layer's fwd+bwd takes half the time of the x86-64-v3 build on one CPU (docs/kernels.md).
TARGET_ENV_VAR = "KAFROB_NATIVE_TARGET"  # force a target (x86-64-v3, x86-64-v4, default): to compare them
X86_TARGETS: dict[str, frozenset[str]] = {  # target -> the /proc/cpuinfo flags it needs
    "x86-64-v4": frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma", "bmi2"}),
    "x86-64-v3": frozenset({"avx2", "fma", "bmi1", "bmi2", "f16c", "movbe", "abm"}),
}
ISA_FEATURES = ("avx2", "fma", "avx512f", "avx512_fp16", "amx_tile")  # the ones that change TF's arithmetic


def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags (/proc/cpuinfo; empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def target(flags: frozenset[str] | None = None) -> str:
    """The compile target for a CPU with these instruction-set flags (default: this CPU, or $KAFROB_NATIVE_TARGET)."""
    forced = os.environ.get(TARGET_ENV_VAR)
    if flags is None and forced:
        if forced not in (*X86_TARGETS, "default"):
            raise ValueError(f"{TARGET_ENV_VAR} must be one of {', '.join(X86_TARGETS)}, default; got {forced!r}")
        return forced
    flags = cpu_flags() if flags is None else flags
    if platform.machine() in ("x86_64", "AMD64"):
        for name, needs in X86_TARGETS.items():
            if needs <= flags:
                return name
    return "default"


def target_flags(name: str) -> tuple[str, ...]:
    return () if name == "default" else (f"-march={name}",)


def command(compiler: str, output: Path, flags: tuple[str, ...]) -> list[str]:
    """The command that compiles and links the library with target ``flags``."""
    include = Path(tf.sysconfig.get_include())
    return [compiler, *map(str, SOURCES), "-o", str(output), "-shared", "-fPIC", "-O3", *flags, "-w",
            f"-I{SOURCE_DIR / 'include'}", f"-I{include / 'external' / 'farmhash_archive' / 'src'}",
            *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags(), "-l:libtensorflow_cc.so.2"]


def compiler() -> str:
    name = os.environ.get("CXX") or "g++"
    if shutil.which(name) is None:
        raise NativeBuildError(f"no C++ compiler ({name!r} not found; install g++ or set CXX)")
    return name


def _library_path(cxx: str, flags: tuple[str, ...]) -> Path:
    key = hashlib.sha256()
    headers = sorted((SOURCE_DIR / "include").rglob("*.h"))
    for part in (*(p.read_bytes() for p in (*SOURCES, *headers)),
                 tf.__version__.encode(), " ".join(command(cxx, Path("out"), flags)).encode(),
                 subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.encode()):
        key.update(hashlib.sha256(part).digest())
    return cache_root() / "native" / f"kaf_cpu-{key.hexdigest()[:16]}.so"


def compile_source(cxx: str, output: Path, flags: tuple[str, ...]) -> None:
    """Run the compiler; a failure raises NativeBuildError with the compiler's last lines and the fixes."""
    done = subprocess.run(command(cxx, output, flags), capture_output=True, text=True)
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        sources = ", ".join(p.name for p in SOURCES)
        raise NativeBuildError(f"compiling {sources} with {cxx} {' '.join(flags) or '(default target)'} failed: "
                               f"{tail}. Set CXX to another C++ compiler, or {ENV_VAR}=0 for the portable kernels")


def build() -> Path:
    """The compiled library's path, compiling it if this source/TensorFlow/compiler/target has none yet."""
    if not sys.platform.startswith("linux"):
        raise NativeBuildError(f"the native kernels are built for Linux only (this is {sys.platform})")
    import fcntl  # POSIX only: imported after the platform check

    cxx, flags = compiler(), target_flags(target())
    path = _library_path(cxx, flags)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:  # one build; other processes (xdist workers) wait for it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            return path
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:  # the library appears complete or not at all
            output = Path(tmp) / path.name
            print(f"kafrob: compiling the KAF CPU kernels into {path} (once, about a minute)", file=sys.stderr,
                  flush=True)
            compile_source(cxx, output, flags)
            os.replace(output, path)
    return path


_ATTEMPTS: dict[tuple[str, str], ModuleType | Exception] = {}


def _attempt() -> ModuleType | Exception:
    """The library, or why it is unavailable: one build-and-load attempt per compiler and target in a process
    (a failed build is not retried by every KAF layer or test that asks)."""
    key = (os.environ.get("CXX") or "g++", target())
    if key not in _ATTEMPTS:
        try:
            _ATTEMPTS[key] = tf.load_op_library(str(build()))
        except (NativeBuildError, OSError, tf.errors.NotFoundError) as err:
            _ATTEMPTS[key] = err
    return _ATTEMPTS[key]


@functools.cache
def library() -> ModuleType | None:
    """The loaded op library, or None where the portable TensorFlow kernels are used (see the module doc)."""
    return load(os.environ.get(ENV_VAR, ""))


def load(setting: str) -> ModuleType | None:
    """``library()`` for a given ``KAFROB_NATIVE`` setting."""
    if setting not in ("", "0", "1"):
        raise ValueError(f"{ENV_VAR} must be 0, 1 or unset, got {setting!r}")
    if setting == "0" or tf.config.list_physical_devices("GPU"):  # the kernels and their XLA lowering are CPU-only
        return None
    outcome = _attempt()
    if not isinstance(outcome, Exception):
        return outcome
    if setting == "1":
        raise NativeBuildError(f"{ENV_VAR}=1 but the KAF CPU kernels are unavailable: {outcome}") from outcome
    warnings.warn(f"kafrob: KAF layers use the portable TensorFlow kernels (slower KAF training on CPU): {outcome}. "
                  f"Set {ENV_VAR}=0 to silence this.", RuntimeWarning, stacklevel=2)
    return None


def supports(size: int, step: float, gamma: float) -> bool:
    """Whether the kernels' exponentials stay finite for this dictionary (true for the thesis's, D=20).

    They clamp x - start to [-r, (size-1) step + r], r = sqrt(140 / gamma), and raise exp(2 gamma step u)
    to the power size - 1.
    """
    reach = np.sqrt(NEGLIGIBLE_EXPONENT / gamma)
    far = (size - 1) * step + reach
    return gamma * far * far <= MAX_EXPONENT and 2 * gamma * step * far * (size - 1) <= MAX_EXPONENT
