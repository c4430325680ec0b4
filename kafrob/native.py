"""The compiled CPU kernels of the KAF layer (``kafrob/native/kaf_cpu.cc``): built on first use, cached, optional.

Why compiled code: XLA on CPU turns the D-term sums of a KAF into poorly vectorised loops and fuses
(duplicates) them into their consumers; with the best pure-TensorFlow kernels a ResNet20-KAF FBF step still
cost about 2x a ReLU one (issue 7). The compiled kernels compute each element once, in double-precision SIMD
lanes, and appear inside XLA-compiled steps as FFI custom calls.

The library is compiled with the C++ compiler (``$CXX``, else g++) against the installed TensorFlow's
headers, once per source, TensorFlow version, compiler and CPU, into ``<kafrob cache>/native`` (about
a minute), then loaded from there. It is used on CPU-only machines (with a GPU the KAF runs the TensorFlow
kernels on the GPU). ``KAFROB_NATIVE``: unset, use it where it builds; ``0``, never; ``1``, on every
CPU-only machine (an error if it cannot be built: CI sets this so that its tests never skip it). When it
cannot be built (no compiler, another platform, TensorFlow headers that no longer fit) a warning names the
cause and the KAF layers use the portable TensorFlow kernels: the same function to float32 rounding,
slower on CPU.

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
SOURCE = SOURCE_DIR / "kaf_cpu.cc"
NEGLIGIBLE_EXPONENT = 140.0  # kaf_cpu.cc's kNegligibleExponent
MAX_EXPONENT = 700.0  # double precision overflows above exp(709)


class NativeBuildError(RuntimeError):
    pass


def _compiler() -> str:
    compiler = os.environ.get("CXX") or "g++"
    if shutil.which(compiler) is None:
        raise NativeBuildError(f"no C++ compiler ({compiler!r} not found; install g++ or set CXX)")
    return compiler


def _command(compiler: str, output: Path) -> list[str]:
    include = Path(tf.sysconfig.get_include())
    return [compiler, str(SOURCE), "-o", str(output), "-shared", "-fPIC", "-O3", "-march=native", "-w",
            f"-I{SOURCE_DIR / 'include'}", f"-I{include / 'external' / 'farmhash_archive' / 'src'}",
            *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags(), "-l:libtensorflow_cc.so.2"]


def _cpu_flags() -> str:
    """The CPU's instruction sets: a library built with -march=native only runs where they all exist."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _library_path(compiler: str) -> Path:
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), *(p.read_bytes() for p in sorted((SOURCE_DIR / "include").rglob("*.h"))),
                 tf.__version__.encode(), " ".join(_command(compiler, Path("out"))).encode(),
                 subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout.encode(),
                 _cpu_flags().encode()):
        key.update(hashlib.sha256(part).digest())
    return cache_root() / "native" / f"kaf_cpu-{key.hexdigest()[:16]}.so"


def build() -> Path:
    """The compiled library's path, compiling it if this source/TensorFlow/compiler/CPU has none yet."""
    if not sys.platform.startswith("linux"):
        raise NativeBuildError(f"the native kernels are built for Linux only (this is {sys.platform})")
    import fcntl  # POSIX only: imported after the platform check

    compiler = _compiler()
    path = _library_path(compiler)
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
            done = subprocess.run(_command(compiler, output), capture_output=True, text=True)
            if done.returncode != 0:
                tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
                raise NativeBuildError(f"compiling {SOURCE.name} failed: {tail}")
            os.replace(output, path)
    return path


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
    try:
        return tf.load_op_library(str(build()))
    except (NativeBuildError, OSError, tf.errors.NotFoundError) as err:
        if setting == "1":
            raise NativeBuildError(f"{ENV_VAR}=1 but the KAF CPU kernels are unavailable: {err}") from err
        warnings.warn(f"kafrob: KAF layers use the portable TensorFlow kernels (slower KAF training on CPU): {err}. "
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
