"""The compiled KAF CPU kernels: multithreaded and scalar paths, bad input, build cache and switches.

Their equivalence with the direct formula (values, gradients; eager, graph, XLA) is in test_kaf.py; the thesis
float16 kernel's bit-for-bit equality with TensorFlow's graph of the thesis formula is here (and on the released
models in test_checkpoints.py).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tensorflow as tf
from kaf_oracle import BOUNDARY, GAMMA, STEP, D, analytic_gradients, scale

from kafrob import kaf, native
from kafrob.kaf import default_gamma, dictionary_points, kaf_reference, kaf_uniform

DICTIONARY = tf.constant([-BOUNDARY, STEP, GAMMA], tf.float64)


@pytest.fixture(scope="module")
def ops():
    lib = native.library()
    if lib is None:
        pytest.skip("no compiled KAF kernels here (a warning says why; KAFROB_NATIVE=1 makes this an error)")
    return lib


def _float64_reference(x, coeffs, upstream, size=D, boundary=BOUNDARY):
    """f(x), f'(x), the coefficient gradient, and the terms' size sum |a_j| k_j(x), in float64."""
    points, gamma = dictionary_points(size, boundary), default_gamma(size, boundary)
    slope = analytic_gradients(x, coeffs, np.ones_like(x), points, gamma)[0]
    coeff_grad = analytic_gradients(x, coeffs, upstream, points, gamma)[1]
    return kaf_reference(x, coeffs, points, gamma), slope, coeff_grad, scale(x, coeffs, points, gamma)


@pytest.mark.parametrize("channels", [16, 64, 5], ids=["vector", "vector-wide", "scalar"])
def test_large_inputs_split_across_threads(ops, channels):
    """Inputs large enough for several threads; channel counts for the vector and the scalar lanes."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2.5, (6000, channels)).astype(np.float32)
    coeffs = rng.normal(0, 0.5, (channels, D)).astype(np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    value, slope = ops.kafrob_kaf(x, coeffs, DICTIONARY)
    coeff_grad = ops.kafrob_kaf_coefficient_gradient(x, upstream, coeffs, DICTIONARY)
    ref_value, ref_slope, ref_coeff_grad, size = _float64_reference(x, coeffs, upstream)
    # Double-precision arithmetic: what remains is float32 rounding of the results (and of the sums' terms).
    np.testing.assert_allclose(value, ref_value, rtol=0, atol=2e-7 * size.max())
    np.testing.assert_allclose(slope, ref_slope, rtol=0, atol=2e-7 * 2 * GAMMA * 10 * size.max())
    np.testing.assert_allclose(coeff_grad, ref_coeff_grad, rtol=1e-6, atol=1e-6 * np.abs(ref_coeff_grad).max())


@pytest.mark.parametrize("size,boundary", [(7, 2.0), (33, 4.0)])
@pytest.mark.parametrize("channels", [8, 3])
def test_other_dictionaries(ops, size, boundary, channels):
    """Dictionary sizes other than the thesis's 20 (a separately compiled coefficient-gradient loop)."""
    rng = np.random.default_rng(1)
    x = rng.normal(0, 3, (4000, channels)).astype(np.float32)
    coeffs = rng.normal(0, 0.5, (channels, size)).astype(np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    step = 2 * boundary / (size - 1)
    assert native.supports(size, step, default_gamma(size, boundary))
    dictionary = tf.constant([-boundary, step, default_gamma(size, boundary)], tf.float64)
    value, slope = ops.kafrob_kaf(x, coeffs, dictionary)
    coeff_grad = ops.kafrob_kaf_coefficient_gradient(x, upstream, coeffs, dictionary)
    ref_value, ref_slope, ref_coeff_grad, scale = _float64_reference(x, coeffs, upstream, size, boundary)
    np.testing.assert_allclose(value, ref_value, rtol=0, atol=2e-7 * scale.max())
    np.testing.assert_allclose(slope, ref_slope, rtol=0, atol=2e-6 * np.abs(ref_slope).max())
    np.testing.assert_allclose(coeff_grad, ref_coeff_grad, rtol=1e-6, atol=1e-6 * np.abs(ref_coeff_grad).max())


def test_non_finite_inputs(ops):
    """NaN propagates (the NaN-loss guard relies on it); +-inf is infinitely far from every Gaussian."""
    x = tf.constant([[np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, 0.0, 0.0]])
    value, slope = ops.kafrob_kaf(x, tf.ones((8, D)), DICTIONARY)
    assert np.isnan(value[0, 0]) and np.isnan(slope[0, 0])
    np.testing.assert_array_equal(value[0, 1:5], 0.0)
    np.testing.assert_array_equal(slope[0, 1:5], 0.0)
    assert np.all(value[0, 5:] > 0)


def test_empty_batch(ops):
    x = tf.zeros((0, 4, 8))
    value, slope = ops.kafrob_kaf(x, tf.ones((8, D)), DICTIONARY)
    assert value.shape == slope.shape == (0, 4, 8)
    np.testing.assert_array_equal(ops.kafrob_kaf_coefficient_gradient(x, x, tf.ones((8, D)), DICTIONARY), 0.0)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "xla"])
def test_bad_shapes_are_rejected(ops, jit):
    def call(x, coeffs):
        return ops.kafrob_kaf(x, coeffs, DICTIONARY)[0]

    run = tf.function(call, jit_compile=True) if jit else call
    with pytest.raises(tf.errors.InvalidArgumentError, match="coeffs must have shape"):
        run(tf.zeros((4, 3)), tf.zeros((4, D)))


def test_kaf_uniform_uses_the_kernels_in_xla(ops):
    """Inside a jit-compiled function the op becomes the custom call (and TensorFlow's devices, created
    long before the library was loaded, still find its XLA kernel)."""
    x = tf.random.normal((8, 8))
    coeffs = tf.random.normal((8, D))

    @tf.function(jit_compile=True)
    def run(x):
        return kaf_uniform(x, coeffs, start=-BOUNDARY, step=STEP, gamma=GAMMA)

    hlo = run.experimental_get_compiler_ir(x)(stage="hlo")
    assert 'custom_call_target="kafrob_kaf_value_and_slope"' in hlo
    np.testing.assert_allclose(run(x), kaf_reference(x.numpy(), coeffs.numpy(), dictionary_points(), GAMMA),
                               rtol=1e-5, atol=1e-6)


def test_build_is_cached(ops):
    path = native.build()
    stamp = path.stat().st_mtime_ns
    assert native.build() == path and path.stat().st_mtime_ns == stamp


def test_switches_and_missing_compiler(monkeypatch):
    assert native.load("0") is None
    with pytest.raises(ValueError, match="must be 0, 1 or unset"):
        native.load("yes")
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(native.NativeBuildError, match="no C.. compiler"):
        native.load("1")
    with pytest.warns(RuntimeWarning, match="portable TensorFlow kernels.*no C.. compiler"):
        assert native.load("") is None


def test_failed_build_is_tried_once_and_names_the_fix(tmp_path, monkeypatch):
    """A compiler that fails (as TensorFlow's Eigen did with -march=native on AVX512-FP16 CPUs) is run once per
    process, not by every layer or test that asks for the kernels; the message says what to do."""
    calls = tmp_path / "calls"
    fake = tmp_path / "failing-c++"
    fake.write_text(f"#!/bin/sh\necho x >> {calls}\necho 'PacketMathFP16.h:748: error: expected initializer' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setenv("KAFROB_CACHE_DIR", str(tmp_path / "cache"))
    for _ in range(3):
        with pytest.raises(native.NativeBuildError, match="expected initializer.*Set CXX to another C.. compiler, "
                                                          "or KAFROB_NATIVE=0"):
            native.load("1")
    with pytest.warns(RuntimeWarning, match="portable TensorFlow kernels"):
        assert native.load("") is None
    compiles = calls.read_text().count("x") - 1  # the first call is `--version` (part of the cache key)
    assert compiles == 1


def _thesis_inputs(channels: int, per_channel: bool, seed: int = 0):
    """float16 inputs like the released models' (ridge coefficients up to ~70), plus extremes: +-60000, values
    near float16's smallest numbers, zeros."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 2.5, (4000, channels))
    x[:8] = np.array([60000, -60000, 1e-7, -3e-5, 0.0, 3.0, -3.0, 2.9])[:, None]
    coeffs = rng.normal(0, 30, (channels, D))
    points = np.tile(dictionary_points(D), (channels, 1)) + (rng.normal(0, 0.1, (channels, D)) if per_channel else 0)
    gamma = rng.uniform(1, 8, channels) if per_channel else np.float64(GAMMA)
    upstream = rng.normal(0, 1, x.shape)
    half = np.float16
    return (x.astype(half), coeffs.astype(half), (points if per_channel else points[0]).astype(half),
            gamma.astype(half), upstream.astype(half))


def _value_and_input_gradient(kaf_fn, x, coeffs, points, gamma, upstream):
    @tf.function
    def run(x, upstream):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = kaf_fn(x, tf.constant(coeffs), tf.constant(points), tf.constant(gamma))
        return value, tape.gradient(value, x, output_gradients=upstream)

    return [v.numpy() for v in run(tf.constant(x), tf.constant(upstream))]


@pytest.mark.parametrize("per_channel", [False, True], ids=["kaf", "kaf_free"])
@pytest.mark.parametrize("channels", [16, 64, 5], ids=["vector", "vector-wide", "scalar"])
def test_thesis_kernel_equals_tensorflow_graph_bit_for_bit(ops, channels, per_channel):
    """The compiled float16 KAF gives TensorFlow's float16 values and input gradients (graph mode, as PGD runs)."""
    args = _thesis_inputs(channels, per_channel)
    value, grad = _value_and_input_gradient(lambda *a: kaf._native_thesis(ops, *a), *args)
    ref_value, ref_grad = _value_and_input_gradient(kaf._thesis_formula, *args)
    assert value.dtype == grad.dtype == np.float16
    np.testing.assert_array_equal(value, ref_value)
    np.testing.assert_array_equal(grad, ref_grad)
    assert np.isfinite(ref_value[8:]).all() and np.abs(ref_value).max() > 1


@pytest.mark.parametrize("per_channel", [False, True], ids=["kaf", "kaf_free"])
@pytest.mark.parametrize("channels", [16, 5], ids=["vector", "scalar"])
def test_thesis_kernel_value_table_gives_the_direct_values(ops, channels, per_channel):
    """Called often enough with the same parameters (as in an attack), the value kernel builds a table of every
    float16 input of every channel and looks values up: the same bits as computing them, for all 65,536 inputs
    (infinities and NaNs included), and TensorFlow's values."""
    _, coeffs, points, gamma, _ = _thesis_inputs(channels, per_channel, seed=1)
    rng = np.random.default_rng(1)
    every = np.arange(1 << 16, dtype=np.uint16)
    x = np.stack([rng.permutation(every) for _ in range(channels)], 1).view(np.float16)  # (65536, C)
    args = (x, coeffs, points, -gamma, kaf.thesis_exp_table())
    built_before = ops.kafrob_thesis_kaf_tables().numpy()[0]
    outputs = [ops.kafrob_thesis_kaf(*args).numpy() for _ in range(6)]
    built, kept_bytes, computed_exp = ops.kafrob_thesis_kaf_tables().numpy()
    assert built == built_before + 1 and kept_bytes >= 2 * x.size
    assert computed_exp >= 1  # the exp polynomial gave TensorFlow's float16 exp on every input: no gather
    direct = outputs[0].view(np.uint16)
    for looked_up in outputs[1:]:
        np.testing.assert_array_equal(looked_up.view(np.uint16), direct)
    np.testing.assert_array_equal(outputs[-1], kaf._thesis_formula(*(tf.constant(a) for a in (x, coeffs, points,
                                                                                              gamma))).numpy())
    assert np.isnan(outputs[-1]).any() and np.isfinite(outputs[-1]).mean() > 0.9


def test_thesis_kernel_reads_another_exp_table(ops):
    """The exp table is an operand: the kernel computes TensorFlow's exp itself only for a table it checked its
    computation against; another table is read (here, all zeros: every term vanishes), values cached per table."""
    x, coeffs, points, gamma, _ = _thesis_inputs(16, False)
    zeros = np.zeros(1 << 16, np.float32)
    for _ in range(5):
        assert not ops.kafrob_thesis_kaf(x, coeffs, points, -gamma, zeros).numpy().any()
    assert ops.kafrob_thesis_kaf(x, coeffs, points, -gamma, kaf.thesis_exp_table()).numpy().any()


def test_thesis_kernel_rejects_bad_shapes(ops):
    x, coeffs, points, gamma, _ = _thesis_inputs(16, False)
    table = kaf.thesis_exp_table()
    with pytest.raises(tf.errors.InvalidArgumentError, match="coeffs must be"):
        ops.kafrob_thesis_kaf(x, coeffs[:5], points, -gamma, table)
    with pytest.raises(tf.errors.InvalidArgumentError, match="exp table"):
        ops.kafrob_thesis_kaf(x, coeffs, points, -gamma, table[:10])


# /proc/cpuinfo flags of CPUs TensorFlow runs on (the instruction sets that decide the target).
CPUS = {
    "haswell (AVX2)": "avx avx2 fma bmi1 bmi2 f16c movbe abm",
    "zen3 (AVX2)": "avx avx2 fma bmi1 bmi2 f16c movbe abm sha_ni vaes",
    "skylake-avx512": "avx avx2 fma bmi1 bmi2 f16c movbe abm avx512f avx512cd avx512bw avx512dq avx512vl",
    "sapphirerapids (AVX512-FP16, AMX)": "avx avx2 fma bmi1 bmi2 f16c movbe abm avx512f avx512cd avx512bw avx512dq "
                                         "avx512vl avx512_fp16 avx512_bf16 amx_tile amx_bf16 amx_int8",
    "zen4 (AVX-512)": "avx avx2 fma bmi1 bmi2 f16c movbe abm avx512f avx512cd avx512bw avx512dq avx512vl "
                      "avx512_bf16 avx512ifma avx512vbmi",
    "sandybridge (AVX only)": "avx sse4_2 popcnt",
}
EXPECTED_TARGET = {"haswell (AVX2)": "x86-64-v3", "zen3 (AVX2)": "x86-64-v3", "skylake-avx512": "x86-64-v4",
                   "sapphirerapids (AVX512-FP16, AMX)": "x86-64-v4", "zen4 (AVX-512)": "x86-64-v4",
                   "sandybridge (AVX only)": "default"}
# Fixed inputs: a vector-width channel count and a scalar one, values across and beyond the dictionary.
_RUN_OPS = """
import sys, numpy as np, tensorflow as tf
ops = tf.load_op_library(sys.argv[1])
rng = np.random.default_rng(0)
out = {}
for channels in (16, 5):
    x = rng.normal(0, 2.5, (3000, channels)).astype(np.float32)
    coeffs = rng.normal(0, 20, (channels, 20)).astype(np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)
    d = tf.constant([-3.0, 6 / 19, 19 ** 2 / 216], tf.float64)
    value, slope = ops.kafrob_kaf(x, coeffs, d)
    out[f"value{channels}"], out[f"slope{channels}"] = value.numpy(), slope.numpy()
    out[f"grad{channels}"] = ops.kafrob_kaf_coefficient_gradient(x, upstream, coeffs, d).numpy()
    h = np.float16
    table = tf.exp(tf.constant(np.arange(1 << 16, dtype=np.uint16).view(h))).numpy().astype(np.float32)
    a, p, ng = (coeffs / 2).astype(h), np.linspace(-3, 3, 20).astype(h), h(-19 ** 2 / 216)
    out[f"thesis{channels}"] = ops.kafrob_thesis_kaf(x.astype(h), a, p, ng, table).numpy()
    out[f"thesis_grad{channels}"] = ops.kafrob_thesis_kaf_input_gradient(x.astype(h), upstream.astype(h), a, p, ng,
                                                                        table).numpy()
np.savez(sys.argv[2], **out)
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 targets")
def test_every_x86_cpu_builds_and_computes_the_same(tmp_path):
    """The library compiles for the target of every CPU above (no such CPU needed), and the targets this CPU
    can run give bit-identical results (so the compiled kernels' results do not depend on the CPU)."""
    assert {cpu: native.target(frozenset(flags.split())) for cpu, flags in CPUS.items()} == EXPECTED_TARGET
    cxx = native.compiler()
    targets = sorted(set(EXPECTED_TARGET.values()))

    def build(target):
        library = tmp_path / f"{target}.so"
        native.compile_source(cxx, library, native.target_flags(target))
        return library

    with ThreadPoolExecutor(2) as pool:  # two cores: two compilers at once
        libraries = dict(zip(targets, pool.map(build, targets), strict=True))
    here = native.cpu_flags()
    runnable = [t for t in targets if t == "default" or native.X86_TARGETS[t] <= here]
    results = {}
    for target in runnable:
        out = tmp_path / f"{target}.npz"
        subprocess.run([sys.executable, "-c", _RUN_OPS, str(libraries[target]), str(out)], check=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True)
        results[target] = dict(np.load(out))
    first, *others = runnable
    for target in others:
        for key, value in results[first].items():
            np.testing.assert_array_equal(results[target][key], value, err_msg=f"{target} vs {first}: {key}")
    print(json.dumps({"compiled": targets, "compared bit for bit": runnable}))


def test_supported_dictionaries():
    assert native.supports(D, STEP, GAMMA)
    step = 6 / 59
    assert not native.supports(60, step, default_gamma(60, 3.0))  # rho^59 would overflow double precision
