"""Which knobs matter (lorsp.importance): Optuna's fANOVA on a stored study, per method and objective."""

from __future__ import annotations

import numpy as np
import optuna

from lorsp.importance import MIN_TRIALS, knob_importances, plot, write_csv


def _study(tmp_path):
    """Two methods; for `a`, objective 0 follows mostly x and objective 1 mostly y; z never matters.
    Method `b` has too few trials to say anything."""
    study = optuna.create_study(directions=["maximize", "minimize"], storage=f"sqlite:///{tmp_path / 'o.db'}")
    rng = np.random.default_rng(0)
    dist = optuna.distributions
    for _ in range(30):
        x, y, z = rng.uniform(0, 1, 3)
        study.add_trial(optuna.trial.create_trial(
            params={"method": "a", "x": x, "y": y, "z": z}, values=[x + 0.5 * y, y + 0.5 * x],
            distributions={"method": dist.CategoricalDistribution(["a", "b"]), "x": dist.FloatDistribution(0, 1),
                           "y": dist.FloatDistribution(0, 1), "z": dist.FloatDistribution(0, 1)}))
    for _ in range(MIN_TRIALS - 1):
        study.add_trial(optuna.trial.create_trial(
            params={"method": "b", "x": 0.5}, values=[0.1, 0.2],
            distributions={"method": dist.CategoricalDistribution(["a", "b"]), "x": dist.FloatDistribution(0, 1)}))
    return study


def test_a_knob_that_cannot_matter_ranks_last_for_every_objective(tmp_path):
    rows = knob_importances(_study(tmp_path), ["val_acc", "prompt_density"])
    assert {r.method for r in rows} == {"a"}  # b has too few full-budget trials
    for objective, driver in (("val_acc", "x"), ("prompt_density", "y")):
        ranked = sorted((r for r in rows if r.objective == objective), key=lambda r: -r.importance)
        assert ranked[0].knob == driver and ranked[-1].knob == "z", ranked


def test_importances_are_written_as_csv_and_a_plot(tmp_path):
    rows = knob_importances(_study(tmp_path), ["val_acc", "prompt_density"])
    csv = write_csv(rows, tmp_path / "importance.csv").read_text().splitlines()
    assert csv[0] == "method,objective,knob,importance,trials" and len(csv) == 1 + 6
    assert plot(rows, tmp_path / "importance.png", "t").stat().st_size > 0
