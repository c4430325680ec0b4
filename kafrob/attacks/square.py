"""Square Attack (Andriushchenko et al., ECCV 2020), L-inf, score-based: no gradients, so gradient masking cannot
stop it. Start from vertical stripes (each column and channel at +-eps); each query redraws one random square
window at x +- eps (one sign per channel) and keeps it if the margin ``z_y - max_{i!=y} z_i`` fell. The window's
side is ``sqrt(p h w)`` with p halved on the reference schedule from p_init (0.8) as the queries are used up.

Per image and per query the window and signs come from a counter-based hash of (seed, image id, query), so an
image's attack does not depend on its batch (the reference draws one window per batch); a window that would
leave the image unchanged is redrawn (up to 8 times), as the reference does. Images stop being queried once
fooled; the compiled loop runs in chunks between which fooled images leave the batch.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from kafrob.attacks.common import Outcome, check_label_mode, hash_uniform, logits, margin, predict

CHUNK = 100  # queries per compiled call
REDRAWS = 8
# The reference's schedule: p_init divided by 2**k after these fractions of 10,000 queries.
SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


@dataclass(frozen=True)
class SquareConfig:
    eps: float = 8.0 / 255.0
    queries: int = 5000
    p_init: float = 0.8
    label_mode: str = "true"

    def __post_init__(self) -> None:
        check_label_mode(self.label_mode)
        if self.eps < 0 or self.queries < 1 or not 0 < self.p_init <= 1:
            raise ValueError(f"invalid Square settings {self}")


def window_fraction(query, queries: int, p_init: float):
    """The fraction p of the image a window covers at a query (0-based, after the initial one)."""
    scaled = tf.cast(tf.cast(query, tf.float32) / queries * 10000.0, tf.int32)
    halvings = tf.reduce_sum(tf.cast(scaled > tf.constant(SCHEDULE), tf.float32))
    return p_init / tf.pow(2.0, halvings)


def stripes(x, ids, seed, eps):
    """The starting point: every column of every channel at x + eps or x - eps."""
    w, c = x.shape[2], x.shape[3]
    u = hash_uniform(seed, ids[:, None, None, None], 0, tf.range(w)[None, None, :, None],
                     tf.range(c)[None, None, None, :])
    return tf.clip_by_value(x + eps * tf.where(u < 0.5, -1.0, 1.0), 0.0, 1.0)


def square_chunk(model: keras.Model, x, y, ids, seed, x_best, margin_best, first_query, *, eps, queries: int,
                 p_init: float, count: int):
    """``count`` queries from ``first_query`` on images whose best margin is still positive."""
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    rows = tf.range(h)[None, :, None, None]
    cols = tf.range(w)[None, None, :, None]
    key = ids[:, None, None, None]
    for k in tf.range(count):
        q = first_query + k
        p = window_fraction(q, queries, p_init)
        s = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(p * h * w)), tf.int32), 1, h - 1)
        x_new = x_best
        unchanged = tf.ones_like(margin_best, bool)
        for redraw in range(REDRAWS):
            vh = tf.cast(hash_uniform(seed, key, q, 1, redraw) * tf.cast(h - s + 1, tf.float32), tf.int32)
            vw = tf.cast(hash_uniform(seed, key, q, 2, redraw) * tf.cast(w - s + 1, tf.float32), tf.int32)
            sign = tf.where(hash_uniform(seed, key, q, 3, redraw, tf.range(c)[None, None, None, :]) < 0.5, -1.0, 1.0)
            window = (rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s)
            candidate = tf.where(window, tf.clip_by_value(x + eps * sign, 0.0, 1.0), x_best)
            differs = tf.reduce_any(tf.abs(candidate - x_best) > 1e-7, axis=[1, 2, 3])
            take = unchanged[:, None, None, None]
            x_new = tf.where(take, candidate, x_new)
            unchanged &= ~differs
        m = margin(logits(model, x_new), y)
        better = (margin_best > 0) & (m < margin_best)
        x_best = tf.where(better[:, None, None, None], x_new, x_best)
        margin_best = tf.where(better, m, margin_best)
    return x_best, margin_best


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled_chunk(model: keras.Model, config: SquareConfig, jit_compile: bool):
    key = (config.queries, config.p_init, jit_compile)
    per_model = _COMPILED.setdefault(model, {})
    if key not in per_model:
        def run(x, y, ids, seed, x_best, margin_best, first_query, eps, count):
            return square_chunk(model, x, y, ids, seed, x_best, margin_best, first_query, eps=eps,
                                queries=config.queries, p_init=config.p_init, count=count)

        per_model[key] = tf.function(run, jit_compile=jit_compile, reduce_retracing=True)
    return per_model[key]


def square_attack(model: keras.Model, x, y_attack, config: SquareConfig = SquareConfig(), *, seed: int = 0,
                  ids: np.ndarray | None = None, jit_compile: bool | None = None) -> Outcome:
    """Square on ``y_attack``; one stage (``first`` is 0 where it changed the label)."""
    from kafrob.attacks.pgd import default_jit

    run = _compiled_chunk(model, config, default_jit() if jit_compile is None else jit_compile)
    x = np.asarray(x, np.float32)
    y_attack = np.asarray(y_attack, np.int32)
    ids = np.arange(len(x)) if ids is None else np.asarray(ids)
    eps = tf.constant(config.eps, tf.float32)
    seed_t = tf.constant(seed, tf.int64)
    best = stripes(tf.constant(x), tf.constant(ids, tf.int64), seed_t, eps).numpy()
    margins = margin(logits(model, tf.constant(best)), tf.constant(y_attack)).numpy()
    query = 1
    while query < config.queries:
        todo = np.flatnonzero(margins > 0)
        if not len(todo):
            break
        count = min(CHUNK, config.queries - query)
        b, m = run(tf.constant(x[todo]), tf.constant(y_attack[todo]), tf.constant(ids[todo], tf.int64), seed_t,
                   tf.constant(best[todo]), tf.constant(margins[todo]), tf.constant(query), eps, tf.constant(count))
        best[todo], margins[todo] = b.numpy(), m.numpy()
        query += count
    first = np.where(predict(model, tf.constant(best)).numpy() != y_attack, 0, -1).astype(np.int32)
    return Outcome(best, first)
