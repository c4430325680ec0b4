"""pytest-benchmark harness of the speed targets: each benchmark records its median (and a train step its peak
memory) through the ``speed_record`` fixture; the ratios the issues set targets for are printed at the end.
(pytest-benchmark turns itself off under xdist: run these in one process.)"""

from __future__ import annotations

import pytest

RECORDS = pytest.StashKey[dict]()


@pytest.fixture
def speed_record(request, benchmark):
    """Call after ``benchmark.pedantic``: stores its median (and ``peak_mib`` if given) under the test's id."""
    records = request.config.stash.setdefault(RECORDS, {})

    def record(**extra) -> None:
        entry = records.setdefault(request.node.name, {})
        if benchmark.stats is not None:  # None under --benchmark-disable
            entry["median"] = benchmark.stats.stats.median
        entry.update(extra)

    return record


# (label, numerator test id, denominator test id) of the speed targets in the issues.
RATIOS = [
    *[(f"layer fwd+bwd {a}/relu", f"test_layer_forward_backward[{a}]", "test_layer_forward_backward[relu]")
      for a in ("kaf", "kaf-portable", "kaf_free")],
    *[(f"{m} {mode} {j} step {a}/relu", f"test_train_step[{j}-{mode}-{a}-{m}]", f"test_train_step[{j}-{mode}-relu-{m}]")
      for j in ("xla", "graph") for m in ("resnet20", "vgg") for mode in ("fbf", "clean")
      for a in ("kaf", "kaf-portable")],
    *[(f"{m} {a} {j} step fbf/clean", f"test_train_step[{j}-fbf-{a}-{m}]", f"test_train_step[{j}-clean-{a}-{m}]")
      for j in ("xla", "graph") for m in ("resnet20", "vgg") for a in ("relu", "kaf", "kaf-portable")],
    ("PGD-10 art/kafrob", "test_pgd10_resnet20[art]", "test_pgd10_resnet20[kafrob]"),
    *[(f"thesis PGD step {a}/relu", f"test_thesis_pgd_step[{a}]", "test_thesis_pgd_step[relu]")
      for a in ("kaf_relu", "kaf_relu-formula", "kaf_free")],
    *[(f"thesis forward {a}/relu", f"test_thesis_forward[{a}]", "test_thesis_forward[relu]")
      for a in ("kaf_relu", "kaf_free")],
    *[(f"thesis KAF kernel {k}/relu", f"test_thesis_kaf_kernel[{k}]", "test_thesis_kaf_kernel[relu]")
      for k in ("value-computed", "value-table", "input-gradient")],
    *[(f"thesis KAF kernel {k} gathered/computed exp", f"test_thesis_kaf_kernel[{k}-gathered]",
       f"test_thesis_kaf_kernel[{k}-computed]" if k == "value" else f"test_thesis_kaf_kernel[{k}]")
      for k in ("value", "input-gradient")],
    ("AutoAttack/PGD-50x10 per image", "test_robust_evaluation_cost[autoattack]",
     "test_robust_evaluation_cost[pgd50x10]"),
    ("ART AutoAttack/ours per image", "test_robust_evaluation_cost[art-autoattack]",
     "test_robust_evaluation_cost[autoattack]"),
]


def pytest_terminal_summary(terminalreporter):
    records = terminalreporter.config.stash.get(RECORDS, {})
    medians = {k: v["median"] for k, v in records.items() if "median" in v}
    peaks = {k: v["peak_mib"] for k, v in records.items() if "peak_mib" in v}
    rows = [(label, medians[a] / medians[b]) for label, a, b in RATIOS if a in medians and b in medians]
    rows += [(f"{label.replace('step', 'peak memory')}", peaks[a] / peaks[b]) for label, a, b in RATIOS
             if "/relu" in label and "step" in label and a in peaks and b in peaks and peaks[b] > 0]
    if rows:
        terminalreporter.section("kafrob speed ratios (medians)")
        for label, ratio in rows:
            terminalreporter.write_line(f"{label:44s} {ratio:6.2f}")
