"""`python -m lorsp.confirm`: re-train the front's configurations with fresh seeds, so that a front
made of single runs is told apart from noise.

A search trains every configuration once. On a few hundred validation images one image moves the
accuracy by a fraction of a point, and the front (and the winner's curse of picking the best of
many noisy runs) reflects that noise. Confirmation re-trains each Pareto-optimal configuration (or
the top K by validation accuracy) with N fresh `train.seed`s — new initialisation and data order,
the same splits (`data.seed`) — reports the mean and a 95 % interval of each objective and of the
test accuracy, recomputes the front on the means and marks each configuration `confirmed`.

The original run is not among the seeds: it was selected for being good, so counting it would
bias the mean upwards. Results are kept per (trial, seed) in the study's Optuna storage, so a
second call adds only the seeds not yet done. Everything is recorded in MLflow under the study's
parent run: one run per configuration (`confirm-trial-<n>`, the means and intervals) with one
nested run per seed, and a `confirm/` table and plot on the parent.

Reading the kept results and judging them (means, intervals, the front on the means) is
:mod:`lorsp.confirmations`; this module trains the missing seeds, reports and records.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from lorsp.config import ConfigError, StudyConfig
from lorsp.confirmations import (
    REPORTED,
    Confirmation,
    fresh_seeds,
    judge,
    load_confirmations,
    store_result,
)


# ---------------------------------------------------------------- running
def _jobs(study: StudyConfig, confirmations: list[Confirmation], seeds: list[int]) -> list[dict[str, Any]]:
    from lorsp.keys import TRIAL_KEY

    jobs = []
    for c in confirmations:
        for seed in seeds:
            if seed not in c.runs:
                jobs.append({**c.params, "train.seed": seed,
                             TRIAL_KEY: {"number": c.trial, "seed": seed, "resume_from": None}})
    return jobs


def run_confirmation(study: StudyConfig, found: Any, confirmations: list[Confirmation], seeds: list[int],
                     *, address: str | None = None, callbacks: list[Any] | None = None) -> int:
    """Train every (configuration, seed) not yet done as one Ray Tune run; returns how many ran."""
    from ray import tune

    from lorsp.keys import TRIAL_KEY
    from lorsp.layout import ray_folder
    from lorsp.metrics import reported
    from lorsp.outcome import outcome_of
    from lorsp.ray_session import QUIET_TUNE_CONSOLE, init_ray, tune_environment
    from lorsp.trial import JOB_KEY, TRIAL_RETRIES, share_data, trainable

    jobs = _jobs(study, confirmations, seeds)
    if not jobs:
        return 0
    init_ray(address)
    splits_ref, streaming = share_data(study, lambda line: print(f"confirm: {line}", flush=True))
    by_trial = {c.trial: c for c in confirmations}

    class Record(tune.Callback):
        """Keeps each finished run in the Optuna storage at once: an interruption loses nothing done."""

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._store(trial, errored=False)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._store(trial, errored=True)

        def _store(self, trial: Any, errored: bool) -> None:
            job = trial.config[JOB_KEY][TRIAL_KEY]
            result = trial.last_result or {}
            outcome = outcome_of(result, errored=errored)
            metrics = {k: float(result[k]) for k in reported(result)
                       if isinstance(result[k], (int, float)) and not isinstance(result[k], bool)}
            if outcome.state != "COMPLETE":
                metrics = {"failed": 1.0, "error": outcome.error or outcome.reason}
            store_result(found, job["number"], job["seed"], metrics)
            by_trial[job["number"]].runs[job["seed"]] = metrics
            shown = "  ".join(f"{m} {metrics[m]:.4g}" for m in ("val_acc", "test_acc") if m in metrics)
            print(f"confirm: trial {job['number']} seed {job['seed']} {outcome.reason}  {shown}", flush=True)

    storage_path = str(ray_folder(study))
    print(f"confirm: {len(jobs)} runs ({len(confirmations)} configurations x seeds {seeds}, "
          f"{study.search.max_concurrent} at a time)", flush=True)
    with tune_environment(QUIET_TUNE_CONSOLE):
        tuner = tune.Tuner(
            trainable(study, splits_ref, storage_path, jobs=True, streaming=streaming),
            param_space={JOB_KEY: tune.grid_search(jobs)},
            tune_config=tune.TuneConfig(max_concurrent_trials=study.search.max_concurrent,
                                        reuse_actors=not study.resources.uses_ray_train),
            run_config=tune.RunConfig(name=f"{study.name}-confirm", storage_path=storage_path, verbose=0,
                                      callbacks=[Record(), *(callbacks or [])],
                                      failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES)),
        )
        tuner.fit()
    return len(jobs)


# ---------------------------------------------------------------- reporting
def rows(study: StudyConfig, confirmations: list[Confirmation]) -> list[dict[str, Any]]:
    out = []
    for c in confirmations:
        row: dict[str, Any] = {"trial": c.trial, "confirmed": c.confirmed, "seeds": len(c.ok_seeds),
                               "failed_seeds": len(c.runs) - len(c.ok_seeds)}
        row.update({f"param_{k}": v for k, v in sorted(c.params.items())})
        for metric, (mean, low, high) in c.intervals.items():
            row[f"{metric}_search"] = c.original.get(metric)
            row[f"{metric}_mean"] = mean
            row[f"{metric}_ci95_low"] = low
            row[f"{metric}_ci95_high"] = high
        out.append(row)
    return out


def print_table(study: StudyConfig, confirmations: list[Confirmation]) -> None:
    from rich.console import Console
    from rich.table import Table

    objective_names = [o.metric for o in study.objectives]
    names = objective_names + [m for m in REPORTED if m not in objective_names]
    table = Table(title=f"{study.name}: configurations re-trained with fresh seeds (mean ± 95 % interval; "
                        "confirmed = Pareto-optimal on the means)")
    table.add_column("trial", justify="right")
    table.add_column("seeds", justify="right")
    for m in names:
        table.add_column(f"{m} (search)", justify="right")
        table.add_column(f"{m} mean ± ci", justify="right")
    table.add_column("confirmed")
    for c in confirmations:
        cells = []
        for m in names:
            cells.append(_num(c.original.get(m)))
            if m in c.intervals:
                mean, low, high = c.intervals[m]
                cells.append(f"{_num(mean)} ± {_num((high - low) / 2)}" if math.isfinite(high) else _num(mean))
            else:
                cells.append("-")
        table.add_row(str(c.trial), str(len(c.ok_seeds)), *cells,
                      {True: "yes", False: "no", None: "-"}[c.confirmed])
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def _num(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    return f"{value:,.0f}" if value.is_integer() and abs(value) >= 10 else f"{value:.4g}"


def plot(study: StudyConfig, confirmations: list[Confirmation], png: Path) -> Path | None:
    """Each pair of objectives: the search's value (hollow) and the mean with its interval (filled)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    objectives = [o.metric for o in study.objectives]
    shown = [c for c in confirmations if all(m in c.intervals for m in objectives)]
    if not shown:
        return None
    pairs = [(i, j) for i in range(len(objectives)) for j in range(i + 1, len(objectives))] or [(0, 0)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4.2), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs):
        mx, my = objectives[i], objectives[j]
        for c in shown:
            (x, xl, xh), (y, yl, yh) = c.intervals[mx], c.intervals[my]
            colour = "tab:red" if c.confirmed else "0.45"
            ax.errorbar([x], [y], xerr=[[x - xl], [xh - x]] if math.isfinite(xh) else None,
                        yerr=[[y - yl], [yh - y]] if math.isfinite(yh) else None, fmt="o", color=colour, capsize=3)
            ax.scatter([c.original.get(mx)], [c.original.get(my)], facecolors="none", edgecolors=colour, s=40)
            ax.annotate(str(c.trial), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(mx)
        ax.set_ylabel(my)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{study.name}: seed confirmation (filled: mean ± 95 % interval, hollow: the search's run; "
                 "red: confirmed)", fontsize=9)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def record_in_mlflow(study: StudyConfig, confirmations: list[Confirmation], files: list[Path],
                     uri: str | None = None) -> None:
    """Under the study's parent run: `confirm-trial-<n>` runs with nested seed runs, and `confirm/` files."""
    from lorsp.tracking import PARENT_ID, ROLE, STUDY, connect
    from lorsp.uris import redact

    store = connect(study, uri)
    parent = store.find_parent()
    if parent is None:
        raise ConfigError(f"study '{study.name}' has no parent run in {redact(store.uri)}; re-log it with "
                          f"python -m lorsp.tracking relog --name {study.name}")
    parent_id = parent.info.run_id
    existing = {r.data.tags.get("lorsp.confirm_trial"): r for r in
                store.search_runs(f"tags.`{ROLE}` = 'confirm'") if r.data.tags.get(PARENT_ID) == parent_id}
    for c in confirmations:
        run = existing.get(str(c.trial))
        if run is None:
            tags = {PARENT_ID: parent_id, ROLE: "confirm", STUDY: study.name, "lorsp.confirm_trial": str(c.trial)}
            run_id = store.client.create_run(store.experiment_id, run_name=f"confirm-trial-{c.trial}",
                                             tags=tags).info.run_id
            store.log_params(run_id, c.params)
        else:
            run_id = run.info.run_id
        seeds = {r.data.tags.get("lorsp.seed") for r in store.search_runs(f"tags.`{PARENT_ID}` = '{run_id}'")}
        for seed, metrics in sorted(c.runs.items()):
            if str(seed) in seeds:
                continue
            child = store.client.create_run(store.experiment_id, run_name=f"trial-{c.trial}-seed-{seed}", tags={
                PARENT_ID: run_id, ROLE: "confirm_seed", STUDY: study.name, "lorsp.seed": str(seed)}).info.run_id
            numbers = {k: v for k, v in metrics.items() if isinstance(v, float)}
            store.log_metrics(child, numbers, 0)
            store.client.set_terminated(child, "FAILED" if metrics.get("failed") else "FINISHED")
        summary = {}
        for metric, (mean, low, high) in c.intervals.items():
            summary[f"{metric}_mean"] = mean
            if math.isfinite(high):
                summary[f"{metric}_ci95_low"], summary[f"{metric}_ci95_high"] = low, high
        store.log_metrics(run_id, summary, len(c.ok_seeds))
        store.set_tags(run_id, {"confirmed": str(c.confirmed).lower(), "seeds": ",".join(map(str, c.ok_seeds))})
        store.client.set_terminated(run_id, "FINISHED")
    for file in files:
        store.client.log_artifact(parent_id, str(file), "confirm")


# ---------------------------------------------------------------- CLI
def confirm(name: str, *, seeds: int = 5, top: int | None = None, storage: str | None = None,
            root: str | None = None, tracking: str | None = None, address: str | None = None,
            out: str | None = None) -> list[Confirmation]:
    from lorsp.lease import StudyLease
    from lorsp.report import write_table
    from lorsp.search import engine_kwargs, existing_study, open_stored_study, trial_records

    if seeds < 2:
        raise ConfigError(f"--seeds {seeds}: an interval needs at least 2 seeds")
    study, opened, root_path = open_stored_study(name, storage, root)
    uri = opened.url  # the database open_stored_study opened
    # The study's driver lease: a front still being searched is not the one to confirm, and two
    # confirmations of one study would train the same seeds twice.
    with StudyLease(uri, study.name, engine_kwargs(uri)):
        found = existing_study(opened, study.name)
        records = trial_records(study, opened)
        confirmations = load_confirmations(study, found, records, top)
        if not confirmations:
            raise ConfigError(f"study '{name}' has no full-budget trial to confirm; run or --resume it first")
        wanted = fresh_seeds(study, seeds)
        ran = run_confirmation(study, found, confirmations, wanted, address=address)
    if not ran:
        print(f"confirm: every configuration already has seeds {wanted}; nothing to run", flush=True)
    confirmations = judge(study, confirmations)
    folder = Path(out) if out else root_path / "pareto" / study.name
    files = write_table(rows(study, confirmations), folder, "confirm")
    picture = plot(study, confirmations, folder / "confirm.png")
    files += [picture] if picture else []
    print_table(study, confirmations)
    try:
        record_in_mlflow(study, confirmations, files, tracking)
    except ConfigError as err:
        print(f"warning: {err}; the results are in the Optuna storage and {folder}", file=sys.stderr)
    print("wrote " + ", ".join(str(f) for f in files))
    return confirmations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorsp.confirm", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="study name")
    parser.add_argument("--seeds", type=int, default=5, help="fresh seeds per configuration (default 5)")
    parser.add_argument("--top", type=int, help="confirm the top K trials by val_acc instead of the Pareto front")
    parser.add_argument("--storage", help="Optuna RDB URI (default: sqlite ROOT/optuna.db)")
    parser.add_argument("--root", help="folder of the embedded stores (default lorsp-runs)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: the study's)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--out", help="folder for confirm.{csv,parquet,png} (default ROOT/pareto/NAME)")
    args = parser.parse_args(argv)
    try:
        confirm(args.name, seeds=args.seeds, top=args.top, storage=args.storage, root=args.root,
                tracking=args.tracking_uri, address=args.address, out=args.out)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished seeds are kept; run the same command again to add the rest", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
