"""Kernel-based activation functions (KAFs; Scardapane et al., Neural Networks 2019) as a Keras 3 layer.

A KAF is, per channel, a linear combination of D Gaussians centred on a fixed dictionary:

    f(x) = sum_i a_i * exp(-gamma * (x - d_i)^2),   d = linspace(-boundary, boundary, D),
    gamma = 1 / (6 * step^2).

Written naively (expand every activation to (..., C, D) and reduce) a KAF network costs about ten
times a ReLU network and D times its activation memory. Here no (..., C, D) tensor is ever held: the
backward pass (``tf.custom_gradient``) keeps the layer's input and, with the compiled kernels, f'(x).

* ``kaf_uniform`` (fixed evenly spaced dictionary: kaf, kaf_relu, kaf_elu, kaf_swish). On a CPU-only
  machine it runs compiled kernels (``kafrob.native``): two exponentials and a Horner sum per element in
  double precision; the forward pass also returns f'(x), so the input gradient is one multiplication.
  Elsewhere (GPU, or no compiler) it runs the portable TensorFlow kernels: the D Gaussians follow a
  multiplicative recurrence, k_{i+1} = k_i * r * q^i, so one element needs 2 exponentials every 5 terms
  instead of one per term, in one fused elementwise pass. The recurrence starts at the dictionary end
  nearest to x (no overflow for any x) and is reseeded every 5 terms (no accumulated rounding).
* ``kaf_direct`` (``kaf_free``: dictionary and gamma trained per channel, no longer evenly spaced) uses
  the direct formula, one term at a time.
* the portable parameter gradients (channel-wise sums over the batch): one loop over cache-sized chunks of
  rows that accumulates the expanded (rows, D, lanes) terms (``_kernel_moments``).

The portable kernels are written to be fused by XLA. All kernels compute in float32 or better whatever
the layer's compute dtype: under ``mixed_float16`` the Gaussians of a 20-point dictionary span more than
float16's range (the thesis's float16 dictionary and gamma are a known deviation, see the README); inputs
and outputs keep the layer's compute dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from kafrob import native

try:  # no public API places an XLA-only op or tells that a trace is for XLA (tf.function(jit_compile=True))
    from tensorflow.compiler.tf2xla.python.xla import optimization_barrier as _xla_barrier
    from tensorflow.python.ops.control_flow_util import GraphOrParentsInXlaContext as _in_xla_context
except ImportError:  # pragma: no cover - a future TensorFlow: same results, more memory (see _recompute_barrier)
    _xla_barrier = None
    _in_xla_context = None

RIDGE_TARGETS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0.0),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    "swish": lambda x: x / (1.0 + np.exp(-x)),
}
INITS = ("random", *RIDGE_TARGETS)
RANDOM_INIT_STDDEV = 0.05  # tf.keras 'random_normal', as in the thesis
RIDGE_REGULARISATION = 1e-6


def dictionary_points(size: int = 20, boundary: float = 3.0) -> np.ndarray:
    """The evenly spaced dictionary (float64)."""
    if size < 2:
        raise ValueError(f"dictionary_size must be >= 2, got {size}")
    if boundary <= 0:
        raise ValueError(f"boundary must be > 0, got {boundary}")
    return np.linspace(-boundary, boundary, size)


def default_gamma(size: int = 20, boundary: float = 3.0) -> float:
    """The thesis bandwidth 1 / (6 step^2): neighbouring Gaussians overlap enough to be smooth."""
    step = 2.0 * boundary / (size - 1)
    return 1.0 / (6.0 * step * step)


def kernel_matrix(points: np.ndarray, gamma: float) -> np.ndarray:
    return np.exp(-gamma * np.square(points[:, None] - points[None, :]))


def ridge_coefficients(target: str, size: int = 20, boundary: float = 3.0) -> np.ndarray:
    """Coefficients that make the KAF approximate ``target``: solve (K + 1e-6 I) a = f(d) in float64."""
    if target not in RIDGE_TARGETS:
        raise ValueError(f"unknown ridge target {target!r}; known: {', '.join(RIDGE_TARGETS)}")
    d = dictionary_points(size, boundary)
    k = kernel_matrix(d, default_gamma(size, boundary))
    return np.linalg.solve(k + RIDGE_REGULARISATION * np.eye(size), RIDGE_TARGETS[target](d))


def kaf_reference(x: np.ndarray, coeffs: np.ndarray, points: np.ndarray, gamma) -> np.ndarray:
    """The direct formula in float64 NumPy; coeffs (C, D), points (D,) or (C, D), gamma scalar or (C,)."""
    x = np.asarray(x, np.float64)[..., None]
    gamma = np.asarray(gamma, np.float64)
    gamma = gamma[..., None] if gamma.ndim else gamma
    terms = np.asarray(coeffs, np.float64) * np.exp(-gamma * np.square(x - np.asarray(points, np.float64)))
    return terms.sum(-1)


def _thesis_formula(x16: tf.Tensor, coeffs16: tf.Tensor, points16: tf.Tensor, gamma16: tf.Tensor) -> tf.Tensor:
    gamma16 = gamma16[:, None] if gamma16.shape.rank else gamma16
    return tf.reduce_sum(coeffs16 * tf.exp(-gamma16 * tf.square(x16[..., None] - points16)), -1)


@functools.cache
def thesis_exp_table() -> np.ndarray:
    """TensorFlow's float16 exp of every float16 value (by bit pattern), as float32: the compiled thesis KAF reads
    its exponentials here, so they are TensorFlow's own (computed eagerly once, also when first asked in a trace)."""
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    with tf.device("/CPU:0"), tf.init_scope():
        return tf.exp(tf.constant(every)).numpy().astype(np.float32)


def _native_thesis(ops, x16, coeffs16, points16, gamma16) -> tf.Tensor:
    table = tf.constant(thesis_exp_table())

    @tf.custom_gradient
    def _kaf(x16, coeffs16, points16, gamma16):
        neg_gamma = -gamma16

        def grad(upstream):
            upstream = tf.cast(upstream, tf.float16)
            with tf.GradientTape() as tape:  # parameter gradients, if asked for: the formula's own
                tape.watch([coeffs16, points16, gamma16])
                value = _thesis_formula(x16, coeffs16, points16, gamma16)
            d_params = tape.gradient(value, [coeffs16, points16, gamma16], output_gradients=upstream)
            return ops.kafrob_thesis_kaf_input_gradient(x16, upstream, coeffs16, points16, neg_gamma, table), *d_params

        return ops.kafrob_thesis_kaf(x16, coeffs16, points16, neg_gamma, table), grad

    return _kaf(x16, coeffs16, points16, gamma16)


def kaf_thesis_float16(x: tf.Tensor, coeffs: tf.Tensor, points: tf.Tensor, gamma: tf.Tensor) -> tf.Tensor:
    """The thesis's own computation: the direct formula entirely in float16, expanded to (..., C, D).

    Only for reproducing the released thesis models: with ridge-initialised coefficients (|a| up to ~70,
    alternating in sign) float16 rounding changes the function noticeably, and those networks were
    trained with it. Where ``kafrob.native`` provides the compiled kernels (and not inside XLA) it runs
    ``native/kaf_thesis_half.cc``: the same float16 values and input gradients as TensorFlow's graph of this
    formula, bit for bit, without the (..., C, D) tensors.
    """
    half = tf.float16
    args = (tf.cast(x, half), tf.cast(coeffs, half), tf.cast(points, half), tf.cast(gamma, half))
    ops = native.library()
    in_xla = _in_xla_context is not None and _in_xla_context(tf.compat.v1.get_default_graph())
    if ops is not None and not in_xla:
        return _native_thesis(ops, *args)
    return _thesis_formula(*args)


RESEED_EVERY = 5  # recompute k and the ratio directly every few terms so rounding cannot accumulate
CHUNK_ELEMENTS = 1 << 18  # (rows, D, lanes) elements per step of the parameter-gradient loop: ~1 MiB, cache-resident
LANES = 256  # minor dimension of the parameter-gradient loop: a whole number of channel groups


def _lane_chunks(x: tf.Tensor, lanes: int, rows: int) -> tf.Tensor:
    """(..., C) -> (n, rows, lanes), flattened in memory order and zero-padded."""
    flat = tf.reshape(x, (-1,))
    return tf.reshape(tf.pad(flat, [[0, (-tf.size(flat)) % (rows * lanes)]]), (-1, rows, lanes))


def _chunk_rows(lanes: int, size: int) -> int:
    """A power of two (batch x height x width usually is a multiple of it: no padding copy)."""
    return 1 << max(0, (CHUNK_ELEMENTS // (lanes * size)).bit_length() - 1)


def _recompute_barrier(*tensors: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """Keep XLA from reusing the forward pass's exponentials in the backward pass.

    XLA merges identical subexpressions and never duplicates exponentials into two fusions, so a backward
    pass that recomputes the forward's Gaussians makes it keep them (8 activation-sized tensors per KAF
    layer) alive from the forward to the backward pass: measured on a ResNet20 FBF step, 1399 MiB peak
    instead of 319 MiB (ReLU: 256 MiB). The barrier only exists under XLA.
    """
    if _xla_barrier is not None and _in_xla_context(tf.compat.v1.get_default_graph()):
        return tuple(_xla_barrier(*tensors))
    return tensors


def _mirrored_terms(x, lower, v, size: int, start: float, step: float, gamma: float):
    """Yield (j, t_j, k_j): k_j = exp(-gamma (x - d)^2) for the j-th dictionary point from the nearer end.

    Elements in the lower half of the dictionary count j from d_0, the others from d_{D-1}; starting at
    the nearer end keeps the recurrence free of overflow. t_j = v - j is the signed distance in steps.
    At reseeds k is computed from x itself (as accurate as the direct formula); between them
    k_{j+1} = k_j * r_j, r_{j+1} = r_j * exp(-2c) with c = gamma step^2: 2 exponentials per RESEED_EVERY terms.
    """
    c = gamma * step * step
    decay = float(np.exp(-2.0 * c))
    for j in range(size):
        t = v - j
        if j % RESEED_EVERY == 0:
            diff = tf.where(lower, x - (start + j * step), (start + (size - 1 - j) * step) - x)
            k = tf.exp(-gamma * tf.square(diff))
            ratio = tf.exp(c * (2.0 / step * diff - 1.0))
        else:
            k = k * ratio
            ratio = ratio * decay
        yield j, t, k


def _uniform_sum(x, coeffs, start: float, step: float, gamma: float, slope: bool) -> tf.Tensor:
    """f(x) = sum_j a_j k_j(x) or, with ``slope``, f'(x) = -2 gamma sum_j a_j (x - d_j) k_j(x): one fused pass."""
    size = coeffs.shape[-1]
    position = (x - start) / step
    lower = position <= 0.5 * (size - 1)
    v = tf.where(lower, position, (size - 1) - position)
    mirrored = tf.reverse(coeffs, axis=[-1])
    total = tf.zeros_like(x)
    for j, t, k in _mirrored_terms(x, lower, v, size, start, step, gamma):
        total += tf.where(lower, coeffs[:, j], mirrored[:, j]) * (t * k if slope else k)
    if slope:  # x - d_j = sign * t_j * step
        total *= tf.where(lower, -2.0 * gamma * step, 2.0 * gamma * step)
    return total


def _kernel_moments(x, upstream, points, gamma, order: int) -> list[tf.Tensor]:
    """M_m[c, i] = sum over all batch positions of upstream * k_i(x) * (x - d_i)^m, m = 0..order, each (C, D).

    These channel-wise reductions are the parameter gradients. Written as D reductions over the batch,
    XLA on CPU materialises every (batch, C) term and reduces each separately: 240 ms and 520 MiB for a
    128x32x32x16 layer whose forward pass takes 10 ms. A loop over cache-sized chunks that accumulates the
    expanded terms elementwise keeps them in cache. The chunks view the activations as rows of LANES
    consecutive values (several positions' channels) so that the innermost dimension is long and XLA
    vectorises it: (rows, D, 256) accumulators take 10-12 ms for that layer, (rows, C, D) ones 20 ms.
    """
    channels, size = x.shape[-1], points.shape[-1]
    groups = max(1, LANES // channels)
    lanes = channels * groups
    rows = _chunk_rows(lanes, size)
    xs, ups = _lane_chunks(x, lanes, rows), _lane_chunks(upstream, lanes, rows)  # zero upstream: padding adds 0
    if gamma.shape.rank:  # per channel: (C, D) points and (C,) gamma, repeated for each group of lanes
        points = tf.tile(tf.transpose(points), (1, groups))
        gamma = tf.tile(gamma, (groups,))
    else:
        points = points[:, None]

    def body(i, *sums):
        diff = xs[i][:, None, :] - points
        term = ups[i][:, None, :] * tf.exp(-gamma * tf.square(diff))
        out = []
        for m, total in enumerate(sums):
            out.append(total + term)
            if m < order:
                term = term * diff
        return (i + 1, *out)

    zeros = tf.zeros((rows, size, lanes), x.dtype)
    _, *sums = tf.while_loop(lambda i, *_: i < tf.shape(xs)[0], body, (0, *[zeros] * (order + 1)))
    return [tf.transpose(tf.reduce_sum(tf.reshape(tf.reduce_sum(total, 0), (size, groups, channels)), 1))
            for total in sums]


def _native_uniform(ops, x: tf.Tensor, coeffs: tf.Tensor, start: float, step: float, gamma: float) -> tf.Tensor:
    """The compiled kernels: f and f' in one pass, so the input gradient is upstream * f'."""
    dictionary = tf.constant([start, step, gamma], tf.float64)

    @tf.custom_gradient
    def _kaf(x, coeffs):
        value, slope = ops.kafrob_kaf(x, coeffs, dictionary)

        def grad(upstream):
            return upstream * slope, ops.kafrob_kaf_coefficient_gradient(x, upstream, coeffs, dictionary)

        return value, grad

    return _kaf(x, coeffs)


def kaf_uniform(x: tf.Tensor, coeffs: tf.Tensor, *, start: float, step: float, gamma: float) -> tf.Tensor:
    """KAF on an evenly spaced dictionary start + i*step (float32 x of any rank, coeffs (C, D)).

    The compiled kernels where ``kafrob.native`` provides them, else the portable ones (module doc).
    """
    ops = native.library() if native.supports(coeffs.shape[-1], step, gamma) else None
    if ops is not None:
        return _native_uniform(ops, x, coeffs, start, step, gamma)
    points = tf.constant(start + step * np.arange(coeffs.shape[-1]), x.dtype)

    @tf.custom_gradient
    def _kaf(x, coeffs):
        def grad(upstream):
            at, up = _recompute_barrier(x, upstream)
            d_x = up * _uniform_sum(at, coeffs, start, step, gamma, slope=True)
            (d_coeffs,) = _kernel_moments(at, up, points, tf.constant(gamma, x.dtype), order=0)
            return d_x, d_coeffs

        return _uniform_sum(x, coeffs, start, step, gamma, slope=False), grad

    return _kaf(x, coeffs)


def kaf_direct(x: tf.Tensor, coeffs: tf.Tensor, points: tf.Tensor, gamma: tf.Tensor) -> tf.Tensor:
    """KAF with a per-channel dictionary points (C, D) and bandwidth gamma (C,), all differentiable."""

    def terms(x, coeffs, points, gamma, slope: bool):
        """f(x), or f'(x) with ``slope``."""
        total = tf.zeros_like(x)
        for i in range(coeffs.shape[-1]):
            diff = x - points[:, i]
            term = coeffs[:, i] * tf.exp(-gamma * tf.square(diff))
            total += term * diff if slope else term
        return -2.0 * gamma * total if slope else total

    @tf.custom_gradient
    def _kaf(x, coeffs, points, gamma):
        def grad(upstream):
            at, up = _recompute_barrier(x, upstream)
            d_x = up * terms(at, coeffs, points, gamma, slope=True)
            k_sum, kd_sum, kdd_sum = _kernel_moments(at, up, points, gamma, order=2)
            d_points = 2.0 * gamma[:, None] * coeffs * kd_sum
            d_gamma = -tf.reduce_sum(coeffs * kdd_sum, -1)
            return d_x, k_sum, d_points, d_gamma

        return terms(x, coeffs, points, gamma, slope=False), grad

    return _kaf(x, coeffs, points, gamma)


def _coefficient_initializer(init: str, size: int, boundary: float):
    if init == "random":
        return keras.initializers.RandomNormal(stddev=RANDOM_INIT_STDDEV)
    row = ridge_coefficients(init, size, boundary)

    def initializer(shape, dtype=None):
        return np.broadcast_to(row, shape).astype(dtype or "float32")

    return initializer


@keras.saving.register_keras_serializable(package="kafrob")
class KAF(keras.layers.Layer):
    """Per-channel kernel activation function (channels last, inputs of any rank >= 2).

    ``init`` is ``"random"`` (normal, std 0.05) or the name of a function the coefficients are
    ridge-initialised to approximate (relu, elu, swish). ``trainable_dictionary=True`` is the thesis's
    ``kaf_free``: dictionary (C, D) and gamma (C,) are trained per channel. Otherwise the dictionary is a
    non-trainable (D,) weight, kept so that parameter counts and checkpoints match the thesis.
    ``thesis_float16=True`` computes as the thesis code did (see ``kaf_thesis_float16``).
    """

    def __init__(
        self,
        dictionary_size: int = 20,
        boundary: float = 3.0,
        init: str = "random",
        trainable_dictionary: bool = False,
        thesis_float16: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if init not in INITS:
            raise ValueError(f"unknown KAF init {init!r}; known: {', '.join(INITS)}")
        dictionary_points(dictionary_size, boundary)  # validates
        self.dictionary_size = int(dictionary_size)
        self.boundary = float(boundary)
        self.init = init
        self.trainable_dictionary = bool(trainable_dictionary)
        self.thesis_float16 = bool(thesis_float16)
        self.supports_masking = True

    @property
    def step(self) -> float:
        return 2.0 * self.boundary / (self.dictionary_size - 1)

    @property
    def initial_gamma(self) -> float:
        return default_gamma(self.dictionary_size, self.boundary)

    def build(self, input_shape) -> None:
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(f"KAF needs a known channel axis (last), got input shape {input_shape}")
        channels, size = int(input_shape[-1]), self.dictionary_size
        points = dictionary_points(size, self.boundary)
        self.coeffs = self.add_weight(
            name="mix_coeffs",
            shape=(channels, size),
            initializer=_coefficient_initializer(self.init, size, self.boundary),
            autocast=False,
        )
        if self.trainable_dictionary:
            self.points = self.add_weight(
                name="dictionary",
                shape=(channels, size),
                initializer=lambda shape, dtype=None: np.broadcast_to(points, shape).astype(dtype or "float32"),
                autocast=False,
            )
            self.gamma = self.add_weight(
                name="gamma",
                shape=(channels,),
                initializer=keras.initializers.Constant(self.initial_gamma),
                autocast=False,
            )
        else:
            self.points = self.add_weight(
                name="dictionary",
                shape=(size,),
                initializer=lambda shape, dtype=None: points.astype(dtype or "float32"),
                trainable=False,
                autocast=False,
            )

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)
        coeffs = tf.convert_to_tensor(self.coeffs)
        if self.thesis_float16:
            gamma = self.gamma if self.trainable_dictionary else self.initial_gamma
            out = kaf_thesis_float16(x, coeffs, tf.convert_to_tensor(self.points), tf.convert_to_tensor(gamma))
        elif self.trainable_dictionary:
            out = kaf_direct(x, coeffs, tf.convert_to_tensor(self.points), tf.convert_to_tensor(self.gamma))
        else:
            out = kaf_uniform(x, coeffs, start=-self.boundary, step=self.step, gamma=self.initial_gamma)
        return tf.cast(out, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            dictionary_size=self.dictionary_size,
            boundary=self.boundary,
            init=self.init,
            trainable_dictionary=self.trainable_dictionary,
            thesis_float16=self.thesis_float16,
        )
        return config
