"""What people read about a study's trials: the front table, Parquet/CSV files and the plots.

A consumer of :mod:`lorsp.pareto` (the maths); used by `python -m lorsp.pareto`, by MLflow
recording and by the end of a search. The front is chosen on validation metrics; the test
accuracy of each member is shown beside them for reporting only.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lorsp.pareto import FrontSummary, TrialRecord, group_fronts, group_key

Objectives = Sequence[tuple[str, str]]


# ---------------------------------------------------------------- tables and files
def trial_rows(records: list[TrialRecord], objectives: Objectives) -> list[dict[str, Any]]:
    """One flat row per trial (params, metrics, state, Pareto rank) for tables and files."""
    params = sorted({k for r in records for k in r.params})
    metrics = list(dict.fromkeys([m for m, _ in objectives] + sorted({k for r in records for k in r.values})))
    rows = []
    for r in sorted(records, key=lambda r: r.number):
        row: dict[str, Any] = {"trial": r.number, "state": r.state, "epochs_done": r.epochs_done,
                               "pareto": r.pareto, "pareto_rank": r.pareto_rank, "tune_trial_id": r.tune_trial_id}
        row.update({f"param_{k}": r.params.get(k) for k in params})
        row.update({m: r.values.get(m) for m in metrics})
        rows.append(row)
    return rows


def write_table(rows: list[dict[str, Any]], folder: str | Path, stem: str) -> list[Path]:
    """Write rows as `<stem>.parquet` (pyarrow) and `<stem>.csv`; returns both paths."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = pa.Table.from_pylist([{c: _plain(row.get(c)) for c in columns} for row in rows])
    parquet = folder / f"{stem}.parquet"
    pq.write_table(table, parquet)
    csv_path = folder / f"{stem}.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    return [parquet, csv_path]


def _plain(value: Any) -> Any:
    """Parquet columns need one type: nested values become JSON strings."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value)
    return value


# ---------------------------------------------------------------- plots
def _axes(objectives: Objectives) -> tuple[Any, Any, list[tuple[int, int]]]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    pairs = [(i, j) for i in range(len(objectives)) for j in range(i + 1, len(objectives))] or [(0, 0)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4.2), squeeze=False)
    return plt, fig, list(zip(axes[0], pairs))


def _save(plt: Any, fig: Any, png: str | Path, title: str) -> Path:
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def plot_front(records: list[TrialRecord], objectives: Objectives, png: str | Path, title: str = "") -> Path:
    """Pairwise scatter plots of the objectives: the Pareto front as red stars labelled with their
    trial numbers, the other full-budget trials in grey, trials stopped early as hollow markers."""
    objectives = list(objectives)
    plt, fig, panels = _axes(objectives)
    groups = {
        "stopped early (not eligible)": [r for r in records if r.state == "PRUNED"],
        "dominated": [r for r in records if r.pareto_rank not in (None, 0)],
        "Pareto front": [r for r in records if r.pareto],
    }
    styles = {
        "stopped early (not eligible)": dict(facecolors="none", edgecolors="0.6", marker="o", s=30),
        "dominated": dict(c="0.45", marker="o", s=30),
        "Pareto front": dict(c="tab:red", marker="*", s=110, zorder=3),
    }
    for ax, (i, j) in panels:
        (mx, dx), (my, dy) = objectives[i], objectives[j]
        for label, group in groups.items():
            pts = [(r.values.get(mx), r.values.get(my), r.number) for r in group]
            pts = [p for p in pts if p[0] is not None and p[1] is not None]
            if not pts:
                continue
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=label, **styles[label])
            if label == "Pareto front":  # trial numbers; trials at the same point share one label
                labels: dict[tuple[float, float], list[str]] = {}
                for x, y, n in pts:
                    labels.setdefault((x, y), []).append(str(n))
                for (x, y), numbers in labels.items():
                    ax.annotate(",".join(numbers), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(f"{mx} ({dx})")
        ax.set_ylabel(f"{my} ({dy})")
        ax.grid(alpha=0.3)
    panels[0][0].legend(fontsize=8)
    return _save(plt, fig, png, title)


def plot_fronts_by(records: list[TrialRecord], objectives: Objectives, by: Sequence[str], png: str | Path,
                   title: str = "") -> Path:
    """One front per value of `by` (e.g. per method) on the same axes: each group's trials in its
    own colour, its own Pareto-optimal ones joined by a line, so methods compare at a glance."""
    objectives = list(objectives)
    fronts = group_fronts(records, objectives, by)
    plt, fig, panels = _axes(objectives)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (i, j) in panels:
        (mx, dx), (my, dy) = objectives[i], objectives[j]
        for k, (key, front) in enumerate(sorted(fronts.items(), key=lambda kv: str(kv[0]))):
            colour = colours[k % len(colours)]
            group = [r for r in records if r.state == "COMPLETE" and group_key(r.params, by) == key]
            ax.scatter([r.values[mx] for r in group], [r.values[my] for r in group], color=colour, alpha=0.35, s=22)
            # A 2-D slice of a 3-objective front need not be monotone: join the points in x order.
            pts = sorted((r.values[mx], r.values[my]) for r in front)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-*", color=colour, markersize=9,
                    label=f"{key} ({len(front)} of {len(group)})")
        ax.set_xlabel(f"{mx} ({dx})")
        ax.set_ylabel(f"{my} ({dy})")
        ax.grid(alpha=0.3)
    panels[0][0].legend(fontsize=8, title=f"{' '.join(by)}: front (of trials)")
    return _save(plt, fig, png, title)


# ---------------------------------------------------------------- the terminal
def _console() -> Any:
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def print_front(name: str, records: list[TrialRecord], summary: FrontSummary, console: Any = None,
                confirmations: dict[int, Any] | None = None) -> None:
    """Counts, hypervolume and the table of Pareto-optimal trials (with seed-confirmed columns
    when `lorsp.confirm` has run: mean ± 95 % interval of the objectives and `confirmed`)."""
    from rich.table import Table

    console = console or _console()
    partial = sum(1 for r in records if r.state == "PRUNED")
    failed = sum(1 for r in records if r.state == "FAIL")
    waiting = sum(1 for r in records if r.state in ("WAITING", "RUNNING"))
    console.print(
        f"study '{name}': {len(records)} trials, {len(summary.eligible)} ran their full budget "
        f"({partial} stopped early, {failed} failed, {waiting} interrupted); front of {len(summary.front)}; "
        f"hypervolume {summary.hypervolume:.6g} (normalised {summary.hypervolume_normalised:.4f}) "
        f"w.r.t. reference {summary.reference_text()}"
    )
    if not summary.front:
        return
    objective_names = [m for m, _ in summary.objectives]
    params = sorted({k for r in summary.front for k in r.params})
    metrics = list(dict.fromkeys(objective_names + [m for m in ("test_acc", "firing_rate")
                                                    if any(m in r.values for r in summary.front)]))
    confirmations = confirmations or {}
    table = Table(title="Pareto-optimal trials (selected on validation; test_acc for reporting only)")
    table.add_column("trial", justify="right")
    for p in params:
        table.add_column(p, justify="right")
    for m in metrics:
        table.add_column(m, justify="right", style="bold" if m in objective_names else "")
    if confirmations:
        table.add_column("seeds", justify="right")
        table.add_column(f"{objective_names[0]} mean ± ci", justify="right")
        table.add_column("confirmed")
    for r in summary.front:
        cells = [str(r.number), *[_cell(r.params.get(p)) for p in params], *[_cell(r.values.get(m)) for m in metrics]]
        if confirmations:
            c = confirmations.get(r.number)
            interval = c.intervals.get(objective_names[0]) if c is not None else None
            cells += [str(len(c.ok_seeds)) if c is not None else "-",
                      f"{interval[0]:.4g} ± {(interval[2] - interval[1]) / 2:.2g}" if interval else "-",
                      {True: "yes", False: "no", None: "-"}[c.confirmed if c is not None else None]]
        table.add_row(*cells)
    console.print(table)


def print_fronts_by(records: list[TrialRecord], objectives: Objectives, by: Sequence[str],
                    console: Any = None) -> None:
    """One table per value of `by` (e.g. per method): that group's own Pareto-optimal trials."""
    from rich.table import Table

    console = console or _console()
    names = [m for m, _ in objectives]
    for key, front in sorted(group_fronts(records, objectives, by).items(), key=lambda kv: str(kv[0])):
        params = sorted({k for r in front for k in r.params} - set(by))
        table = Table(title=f"{' '.join(by)} = {key}: its own Pareto front")
        for column in ["trial", *params, *names, "test_acc"]:
            table.add_column(column, justify="right")
        for r in front:
            table.add_row(str(r.number), *[_cell(r.params.get(p)) for p in params],
                          *[_cell(r.values.get(m)) for m in [*names, "test_acc"]])
        console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() and abs(value) >= 10 else f"{value:.4g}"
    return str(value)
