"""The benchmark: the thesis's experiments as cases, run at tiers, judged, stored and reported.

* A case is declared in ``cases.py`` (EXPERIMENTS); ``tiers.py`` says which cases a tier runs (``Tier.cases``).
* It is judged in ``judge.py`` (against the tier's reference; the released models against the thesis and each other).
* Its numbers are stored by ``store.py`` (runs/, reference_results/) and ``shards.py`` (per-example evaluation shards).

``run.py`` obtains a case's model and evaluates it (``benchmark`` runs, stores and judges one case), ``report.py``
makes the tables and figures, ``references.py`` regenerates a tier's reference files, ``spread.py`` measures the
spread that sets the suite references' tolerances, ``trained.py`` keeps the models a tier trained, ``gap.py`` sets
PGD against a stronger attack per example, ``released.py`` reads the released models' stores into their verdicts
and gap table, and ``executor.py`` runs cases and shards as jobs (Slurm, local processes).
"""
