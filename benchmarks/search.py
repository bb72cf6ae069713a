"""How good a front each sampler and scheduler finds for the compute it spends, on lorsp's own space.

Every study is a real lorsp study (`lorsp.tune.run_study`: Ray Tune, the Optuna storage, real
training) on the quickstart space at a reduced epoch budget. Arms: random, tpe, nsga2 and gp without
early stopping; tpe with ASHA on val_acc; tpe with the Pareto-aware scheduler (`pareto_asha`). Each
arm runs with several search seeds, interleaved seed by seed so that a slower stretch of the shared
machine falls on every arm alike.

The measure is the protocol of Optuna's multi-objective benchmarks: the hypervolume of the front of
full-budget trials after n trials, against a reference point fixed before any run (val_acc 0,
prompt_density 1, the largest parameter count the space allows), normalised by the box between that
reference and the best corner (val_acc 1, density 0, the smallest parameter count); mean ± standard
error over seeds; a one-sided Mann-Whitney U test of each arm's final hypervolume against random's.
Besides trials, the curves are drawn against trial-epochs spent, which is where early stopping pays.

    python benchmarks/search.py --seeds 5 --trials 16 --epochs 6 --plot benchmarks/search.png
    python benchmarks/search.py --quick            # the smoke test's round: two arms, two tiny studies each
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import _util as U  # noqa: E402

SCHEDULERS = {
    "asha": "{type: asha, metric: val_acc, mode: max, grace_period: 1, reduction_factor: 2}",
    "pareto_asha": "{type: pareto_asha, grace_period: 1, reduction_factor: 2}",
    # later and fewer decisions: rungs at epochs 2 and 4 (η 2), at 2 only (η 3), at 3 only (η 2)
    "pareto_asha_g2": "{type: pareto_asha, grace_period: 2, reduction_factor: 2}",
    "pareto_asha_g2e3": "{type: pareto_asha, grace_period: 2, reduction_factor: 3}",
    "pareto_asha_g3": "{type: pareto_asha, grace_period: 3, reduction_factor: 2}",
}
ARMS: dict[str, list[str]] = {
    "random": ["search.sampler=random"],
    "tpe": ["search.sampler=tpe"],
    "nsga2": ["search.sampler=nsga2"],
    "gp": ["search.sampler=gp"],
    "tpe+asha": ["search.sampler=tpe", f"search.scheduler={SCHEDULERS['asha']}"],
    "tpe+pareto_asha": ["search.sampler=tpe", f"search.scheduler={SCHEDULERS['pareto_asha']}"],
    **{f"tpe+{name}": ["search.sampler=tpe", f"search.scheduler={SCHEDULERS[name]}"]
       for name in ("pareto_asha_g2", "pareto_asha_g2e3", "pareto_asha_g3")},
}


def parameter_bounds(study: Any) -> tuple[float, float]:
    """(smallest, largest) trainable parameter count any configuration of the space can have: each
    method built with every int knob at its low and at its high end (parameters grow with rank, pad
    width and factors)."""
    from lorsp.model import build_model

    methods = study.space["method"].choices if "method" in study.space else [study.prompt.method]
    ints = {k: p for k, p in study.space.items() if p.type == "int"}
    counts = []
    for method in methods:
        for end in ("low", "high"):
            params = {"method": method, **{k: int(getattr(p, end)) for k, p in ints.items()}}
            counts.append(float(build_model(study.with_params(params), num_classes=10).num_trainable_params()))
    return min(counts), max(counts)


def run_arm(space: Path, arm: str, seed: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from lorsp.config import load_study
    from lorsp.tune import run_study

    name = f"{arm.replace('+', '-')}-s{seed}"
    study = load_study(space, [f"name={name}", f"tracking.root={root}", f"search.num_samples={args.trials}",
                               f"search.max_concurrent={args.concurrent}", f"search.seed={seed}",
                               f"train.epochs={args.epochs}", *ARMS[arm], *args.set])
    tick = time.time()
    records = run_study(study, log=lambda line: None).records
    trials = sorted(records, key=lambda r: r.number)
    return {"arm": arm, "seed": seed, "wall_s": time.time() - tick, "trials": [
        {"number": r.number, "state": r.state, "epochs": r.epochs_done, "method": r.params.get("method"),
         "values": [r.values.get(m) for m in ("val_acc", "prompt_density", "trainable_params")]} for r in trials]}


def curves(run: dict[str, Any], ref: np.ndarray, box: float, epochs_grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised hypervolume after each trial, and on a grid of trial-epochs spent (a step function)."""
    from lorsp.pareto import hypervolume

    modes = ["max", "min", "min"]
    done: list[list[float]] = []
    by_trial, spent = [], [0.0]
    for t in run["trials"]:
        if t["state"] == "COMPLETE" and all(v is not None for v in t["values"]):
            done.append(t["values"])
        by_trial.append(hypervolume(np.array(done), modes, ref) / box if done else 0.0)
        spent.append(spent[-1] + t["epochs"])
    steps = np.searchsorted(np.array(spent[1:]), epochs_grid, side="right")  # trials finished within e epochs
    by_epoch = np.array([by_trial[s - 1] if s else 0.0 for s in steps])
    return np.array(by_trial), by_epoch


def final_front_density(run: dict[str, Any]) -> tuple[float, float] | None:
    from lorsp.pareto import non_dominated_ranks

    done = [t["values"] for t in run["trials"] if t["state"] == "COMPLETE" and None not in t["values"]]
    if not done:
        return None
    ranks = non_dominated_ranks(np.array(done), ["max", "min", "min"])
    density = [v[1] for v, r in zip(done, ranks) if r == 0]
    return min(density), max(density)


def first_reach(mean: np.ndarray, target: float) -> float | None:
    hit = np.flatnonzero(mean >= target - 1e-12)
    return None if hit.size == 0 else float(hit[0] + 1) / len(mean)


def summarise(runs: list[dict[str, Any]], args: argparse.Namespace, bounds: tuple[float, float]) -> dict[str, Any]:
    from scipy.stats import mannwhitneyu

    ref = np.array([0.0, 1.0, bounds[1]])
    box = 1.0 * 1.0 * (bounds[1] - bounds[0])
    budget = args.trials * args.epochs
    grid = np.arange(1, budget + 1, dtype=float)
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    per: dict[str, dict[str, Any]] = {}
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        trials, epochs = zip(*(curves(r, ref, box, grid) for r in mine))
        fronts = [d for d in (final_front_density(r) for r in mine) if d is not None]
        per[arm] = {"by_trial": np.array(trials), "by_epoch": np.array(epochs),
                    "spent": np.array([sum(t["epochs"] for t in r["trials"]) for r in mine]),
                    "final": np.array([t[-1] for t in trials]),
                    "epochs_spent": float(np.mean([sum(t["epochs"] for t in r["trials"]) for r in mine])),
                    "density": (float(np.mean([d[0] for d in fronts])), float(np.mean([d[1] for d in fronts])))
                    if fronts else None}
    target = float(per["random"]["final"].mean()) if "random" in per else math.nan
    rows, table = [], {}
    for arm in arms:
        p = per[arm]
        final = p["final"]
        sem = final.std(ddof=1) / math.sqrt(len(final)) if len(final) > 1 else math.nan
        reach_t = first_reach(p["by_trial"].mean(axis=0), target)
        reach_e = first_reach(p["by_epoch"].mean(axis=0), target)
        pval = (mannwhitneyu(final, per["random"]["final"], alternative="greater").pvalue
                if arm != "random" and "random" in per else math.nan)
        density = f"{p['density'][0]:.3f} - {p['density'][1]:.3f}" if p["density"] else "-"
        paired = _against_tpe(p, per.get("tpe"))
        rows.append([arm, f"{final.mean():.4f} ± {sem:.4f}", _frac(reach_t), _frac(reach_e),
                     f"{p['epochs_spent']:.0f} / {budget}", "-" if math.isnan(pval) else f"{pval:.3f}", density,
                     paired])
        table[arm] = {"final_mean": float(final.mean()), "final_sem": sem, "finals": final.tolist(),
                      "reach_trials": reach_t, "reach_epochs": reach_e, "epochs_spent": p["epochs_spent"],
                      "p_vs_random": pval, "front_density": p["density"]}
    print(U.table(["arm", "final HV (mean ± s.e.)", "trials to random's final", "trial-epochs to random's final",
                   "trial-epochs spent", "p (U test > random)", "front density (min - max)",
                   "HV - tpe's at equal trial-epochs (seeds ahead)"], rows,
                  title=f"Search efficiency on {args.space.name}: {len(runs) // len(arms)} seeds x "
                        f"{args.trials} trials x {args.epochs} epochs, {args.concurrent} at a time; normalised "
                        f"hypervolume w.r.t. val_acc 0, density 1, {bounds[1]:.0f} params"))
    return {"table": table, "per": per, "grid": grid}


def _against_tpe(arm: dict[str, Any], tpe: dict[str, Any] | None) -> str:
    """Seed by seed, the arm's final hypervolume minus TPE's (no early stopping) after as many
    trial-epochs as the arm spent: where early stopping pays, this is positive."""
    if tpe is None or arm is tpe or len(tpe["by_epoch"]) != len(arm["final"]):
        return "-"
    width = tpe["by_epoch"].shape[1]
    same = np.array([curve[min(int(e), width) - 1] for curve, e in zip(tpe["by_epoch"], arm["spent"])])
    diff = arm["final"] - same
    sem = diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else math.nan
    return f"{diff.mean():+.3f} ± {sem:.3f} ({int((diff > 0).sum())}/{len(diff)})"


def _frac(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.2f}"


def plot(summary: dict[str, Any], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for arm, p in summary["per"].items():
        panels = ((axes[0], "by_trial", np.arange(1, args.trials + 1)), (axes[1], "by_epoch", summary["grid"]))
        for ax, key, x in panels:
            data = p[key]
            mean = data.mean(axis=0)
            sem = data.std(axis=0, ddof=1) / math.sqrt(len(data)) if len(data) > 1 else np.zeros_like(mean)
            ax.plot(x, mean, label=arm, drawstyle="steps-post")
            ax.fill_between(x, mean - sem, mean + sem, alpha=0.15, step="post")
    axes[0].set_xlabel("trials")
    axes[1].set_xlabel("trial-epochs spent")
    axes[0].set_ylabel("normalised hypervolume (mean ± s.e.)")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"lorsp search efficiency: quickstart space, {args.epochs} epochs per trial")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=Path, default=REPO / "search_spaces" / "quickstart.yaml")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2, help="logical CPUs of the embedded Ray")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the study file")
    parser.add_argument("--json", type=Path, help="write every trial of every study here")
    parser.add_argument("--plot", type=Path, help="write the hypervolume curves here (PNG)")
    parser.add_argument("--quick", action="store_true", help="two arms, two seeds of two 2-epoch trials")
    args = parser.parse_args(argv)
    if args.quick:
        args.arms, args.seeds, args.trials, args.epochs = ["random", "tpe+pareto_asha"], 2, 2, 2
        args.set = [*args.set, "data.max_train=200"]
    if "random" not in args.arms:
        args.arms = ["random", *args.arms]  # the baseline every figure is measured against

    from lorsp.config import load_study
    from lorsp.ray_session import init_ray, shutdown_ray

    bounds = parameter_bounds(load_study(args.space, args.set))
    init_ray(None, num_cpus=args.cpus)
    runs = []
    tick = time.time()
    try:
        with tempfile.TemporaryDirectory(prefix="lorsp-search-bench-") as root:
            # Every study reads the same snapshot of the study file, however long the run and whatever
            # happens to the file meanwhile.
            space = Path(root) / "space.yaml"
            space.write_text(args.space.read_text())
            for seed in range(args.seeds):
                for arm in args.arms:
                    run = run_arm(space, arm, seed, args, Path(root))
                    runs.append(run)
                    states = [t["state"] for t in run["trials"]]
                    print(f"[{time.time() - tick:.0f}s] {arm} seed {seed}: {states.count('COMPLETE')} complete, "
                          f"{states.count('PRUNED')} stopped, {states.count('FAIL')} failed in {run['wall_s']:.0f}s",
                          flush=True)
    finally:
        shutdown_ray()
    summary = summarise(runs, args, bounds)
    print(f"wall time {time.time() - tick:.0f}s; machine: {U.machine_line(__import__('torch').device('cpu'))}")
    if args.plot:
        plot(summary, args, args.plot)
    if args.json:
        U.dump_json(args.json, {"args": {k: str(v) for k, v in vars(args).items()}, "bounds": bounds, "runs": runs,
                                "table": summary["table"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
