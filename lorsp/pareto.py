"""Pareto selection over a study's objectives.

Only trials that ran their full training budget take part: a trial that ASHA stopped after two
epochs reports the accuracy of two epochs, and putting it on the front beside trials that trained
for twenty would compare unlike things (Optuna itself records such trials as COMPLETE).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _as_minimisation(values: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    signs = np.array([-1.0 if m == "max" else 1.0 for m in modes])
    return np.asarray(values, dtype=float) * signs


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """True when `a` is at least as good as `b` in every objective and better in one."""
    x, y = _as_minimisation(np.array([a]), modes)[0], _as_minimisation(np.array([b]), modes)[0]
    return bool(np.all(x <= y) and np.any(x < y))


def non_dominated_ranks(values: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """Rank 0 for the Pareto front, 1 for the front once rank 0 is removed, and so on.

    Plain O(M·N²) sorting: a study has hundreds of trials at most, so clarity wins over the
    bookkeeping of the fast variant.
    """
    points = _as_minimisation(np.asarray(values, dtype=float).reshape(len(values), -1), modes)
    n = len(points)
    ranks = np.full(n, -1, dtype=int)
    if n == 0:
        return ranks
    better_eq = np.all(points[:, None, :] <= points[None, :, :], axis=2)
    strictly = np.any(points[:, None, :] < points[None, :, :], axis=2)
    dom = better_eq & strictly  # dom[i, j]: i dominates j
    remaining = np.ones(n, dtype=bool)
    rank = 0
    while remaining.any():
        dominated = (dom & remaining[:, None]).any(axis=0)
        front = remaining & ~dominated
        ranks[front] = rank
        remaining &= ~front
        rank += 1
    return ranks


def hypervolume(values: np.ndarray, modes: Sequence[str], reference: Sequence[float]) -> float:
    """Volume dominated by `values` and bounded by `reference` (a point worse than all of them).

    Exact, by recursive slicing on the first objective (fine for the 2–4 objectives and the few
    dozen front points of a study).
    """
    pts = _as_minimisation(np.asarray(values, dtype=float).reshape(len(values), -1), modes)
    ref = _as_minimisation(np.asarray([reference], dtype=float), modes)[0]
    pts = pts[np.all(pts < ref, axis=1)]
    return _hv(pts, ref)


def _hv(pts: np.ndarray, ref: np.ndarray) -> float:
    if len(pts) == 0:
        return 0.0
    if pts.shape[1] == 1:
        return float(ref[0] - pts[:, 0].min())
    order = np.argsort(pts[:, 0])
    pts = pts[order]
    volume = 0.0
    for i in range(len(pts)):
        upper = pts[i + 1, 0] if i + 1 < len(pts) else ref[0]
        width = upper - pts[i, 0]
        if width > 0:
            volume += width * _hv(pts[: i + 1, 1:], ref[1:])
    return float(volume)


@dataclass
class TrialRecord:
    """One finished search trial as the Pareto step and the tables see it."""

    number: int
    params: dict[str, Any]
    values: dict[str, float]
    full_budget: bool
    state: str
    attrs: dict[str, Any] = field(default_factory=dict)
    pareto_rank: int | None = None

    @property
    def pareto(self) -> bool:
        return self.pareto_rank == 0


def rank_trials(trials: list[TrialRecord], objectives: Sequence[tuple[str, str]]) -> list[TrialRecord]:
    """Set `pareto_rank` on every full-budget complete trial; others keep None (never on the front)."""
    eligible = [t for t in trials if t.state == "COMPLETE" and t.full_budget
                and all(m in t.values for m, _ in objectives)]
    for t in trials:
        t.pareto_rank = None
    if eligible:
        values = np.array([[t.values[m] for m, _ in objectives] for t in eligible])
        for t, r in zip(eligible, non_dominated_ranks(values, [mode for _, mode in objectives])):
            t.pareto_rank = int(r)
    return trials


# ---------------------------------------------------------------- reference point and summaries
BOUNDED_UNIT = frozenset({"val_acc", "test_acc", "train_acc", "prompt_density", "firing_rate"})
"""Metrics that live in [0, 1] by construction: their worst and best values are known in advance."""

REFERENCE_RULE = (
    "worst value per objective: 0 for a maximised [0,1] metric (val_acc), 1 for a minimised [0,1] "
    "metric (prompt_density, firing_rate), 1.1 x the largest value among eligible trials for an "
    "unbounded minimised metric (trainable_params), 0 for an unbounded maximised one"
)


def reference_point(objectives: Sequence[tuple[str, str]], values: np.ndarray) -> np.ndarray:
    """The hypervolume reference: a point no trial can be worse than (see :data:`REFERENCE_RULE`).

    Bounded metrics use their natural worst value, so the hypervolume of a [0,1]-only study is
    comparable across studies. An unbounded metric has no natural worst value: the largest value
    seen times 1.1 keeps every eligible trial strictly inside the box (a trial *on* the
    reference contributes no volume), and is logged next to the hypervolume so that two numbers
    are only compared when their references agree.
    """
    values = np.asarray(values, dtype=float).reshape(-1, len(objectives))
    ref = []
    for j, (metric, mode) in enumerate(objectives):
        column = values[:, j] if len(values) else np.zeros(1)
        if metric in BOUNDED_UNIT:
            ref.append(0.0 if mode == "max" else 1.0)
        elif mode == "min":
            top = float(np.max(column))
            ref.append(top * 1.1 if top > 0 else (1.0 if top == 0 else top * 0.9))
        else:
            low = float(np.min(column))
            ref.append(0.0 if low >= 0 else low * 1.1)
    return np.array(ref, dtype=float)


def ideal_point(objectives: Sequence[tuple[str, str]], values: np.ndarray) -> np.ndarray:
    """Best conceivable value per objective (1 / 0 for [0,1] metrics, 0 for a minimised count)."""
    values = np.asarray(values, dtype=float).reshape(-1, len(objectives))
    ideal = []
    for j, (metric, mode) in enumerate(objectives):
        if metric in BOUNDED_UNIT:
            ideal.append(1.0 if mode == "max" else 0.0)
        elif mode == "min":
            ideal.append(min(0.0, float(np.min(values[:, j]))) if len(values) else 0.0)
        else:
            ideal.append(float(np.max(values[:, j])) if len(values) else 1.0)
    return np.array(ideal, dtype=float)


@dataclass
class FrontSummary:
    """What the Pareto step reports about a study: the front, its hypervolume and the reference."""

    objectives: list[tuple[str, str]]
    eligible: list[TrialRecord]
    front: list[TrialRecord]
    reference: np.ndarray
    hypervolume: float
    hypervolume_normalised: float

    def reference_text(self) -> str:
        return ", ".join(f"{m}={_short(v)}" for (m, _), v in zip(self.objectives, self.reference))


def summarise(records: list[TrialRecord], objectives: Sequence[tuple[str, str]]) -> FrontSummary:
    """Front, reference point and hypervolume (raw and normalised to the ideal-reference box)."""
    objectives = [(m, mode) for m, mode in objectives]
    eligible = [r for r in records if r.pareto_rank is not None]
    front = sorted((r for r in eligible if r.pareto), key=lambda r: r.number)
    modes = [mode for _, mode in objectives]
    values = np.array([[r.values[m] for m, _ in objectives] for r in eligible], dtype=float).reshape(-1, len(objectives))
    ref = reference_point(objectives, values)
    front_values = np.array([[r.values[m] for m, _ in objectives] for r in front], dtype=float).reshape(-1, len(objectives))
    hv = hypervolume(front_values, modes, ref) if len(front) else 0.0
    box = float(np.prod(np.abs(ref - ideal_point(objectives, values))))
    return FrontSummary(objectives=objectives, eligible=eligible, front=front, reference=ref, hypervolume=hv,
                        hypervolume_normalised=hv / box if box > 0 else 0.0)


def _short(value: float) -> str:
    return f"{value:.6g}"


def trial_rows(records: list[TrialRecord], objectives: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """One flat row per trial (params, metrics, budget, Pareto rank) for tables and files."""
    params = sorted({k for r in records for k in r.params})
    metrics = list(dict.fromkeys([m for m, _ in objectives] + sorted({k for r in records for k in r.values})))
    rows = []
    for r in sorted(records, key=lambda r: r.number):
        row: dict[str, Any] = {"trial": r.number, "state": r.state, "full_budget": r.full_budget,
                               "pareto": r.pareto, "pareto_rank": r.pareto_rank,
                               "tune_trial_id": r.attrs.get("tune_trial_id")}
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
    """Parquet columns need one type: mixed params (e.g. categorical) become strings."""
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (list, dict, tuple)):
        import json

        return json.dumps(value)
    return value


def plot_front(records: list[TrialRecord], objectives: Sequence[tuple[str, str]], png: str | Path,
               html: str | Path | None = None, title: str = "") -> list[Path]:
    """Pairwise scatter plots of the objectives: Pareto front in red, other eligible trials in
    grey, trials stopped early (not eligible) as hollow markers. Returns the files written (the
    HTML only when plotly is importable)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    objectives = list(objectives)
    pairs = [(i, j) for i in range(len(objectives)) for j in range(i + 1, len(objectives))] or [(0, 0)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4.2), squeeze=False)
    groups = {
        "stopped early / not eligible": [r for r in records if r.pareto_rank is None and r.state == "COMPLETE"],
        "dominated": [r for r in records if r.pareto_rank not in (None, 0)],
        "Pareto front": [r for r in records if r.pareto],
    }
    styles = {
        "stopped early / not eligible": dict(facecolors="none", edgecolors="0.6", marker="o", s=30),
        "dominated": dict(c="0.45", marker="o", s=30),
        "Pareto front": dict(c="tab:red", marker="*", s=110, zorder=3),
    }
    for ax, (i, j) in zip(axes[0], pairs):
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
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    written = [png]
    if html is not None:
        try:
            import plotly.express as px
        except ImportError:
            return written
        rows = trial_rows(records, objectives)
        for row in rows:
            row["group"] = "Pareto front" if row["pareto"] else ("dominated" if row["pareto_rank"] is not None else "not eligible")
        names = [m for m, _ in objectives]
        if len(names) >= 3:
            figure = px.scatter_3d(rows, x=names[0], y=names[1], z=names[2], color="group", hover_data=["trial"], title=title)
        else:
            figure = px.scatter(rows, x=names[0], y=names[-1], color="group", hover_data=["trial"], title=title)
        figure.write_html(str(html), include_plotlyjs="cdn")
        written.append(Path(html))
    return written


# ---------------------------------------------------------------- `python -m lorsp.pareto`
def main(argv: list[str] | None = None) -> int:
    """Print a stored study's Pareto front and write it (and every trial) as Parquet and CSV."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m lorsp.pareto",
                                     description="Show the Pareto front of a stored study and write it as Parquet + CSV.")
    parser.add_argument("--name", required=True, help="study name (the Optuna study / MLflow experiment)")
    parser.add_argument("--storage", help="Optuna RDB URI (default: sqlite ROOT/optuna.db)")
    parser.add_argument("--root", help="folder of the embedded stores (default: the study's tracking.root, lorsp-runs)")
    parser.add_argument("--out", help="where to write front.parquet/.csv and trials.parquet/.csv (default ROOT/pareto/NAME)")
    parser.add_argument("--no-plot", action="store_true", help="skip front.png")
    args = parser.parse_args(argv)

    from lorsp.config import ConfigError

    try:
        study, storage, root = open_stored_study(args.name, args.storage, args.root)
        from lorsp.search import trial_records

        records = trial_records(study, storage)
        if not records:
            raise ConfigError(f"study '{args.name}' has no trials yet; run it with python -m lorsp.tune")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    objectives = [(o.metric, o.mode) for o in study.objectives]
    summary = summarise(records, objectives)
    out = Path(args.out) if args.out else root / "pareto" / study.name
    rows = trial_rows(records, objectives)
    written = write_table([r for r in rows if r["pareto"]], out, "front") + write_table(rows, out, "trials")
    if not args.no_plot and summary.eligible:
        written += plot_front(records, objectives, out / "front.png", out / "front.html", title=study.name)
    print_front(study.name, records, summary)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def open_stored_study(name: str, storage: str | None, root: str | None):  # noqa: ANN201
    """(StudyConfig, Optuna storage, root folder) of a study stored by `lorsp.tune`.

    The root is `--root`, else the stored study's `tracking.root`; the Optuna storage is
    `--storage`, else the stored `tracking.storage`, else `ROOT/optuna.db`. When `--root` is
    given, the returned config's `tracking.root` is set to it (absolute), so every tool finds the
    MLflow store and the Ray checkpoints beside the Optuna database.
    """
    from lorsp.config import ConfigError
    from lorsp.search import rdb_storage, stored_config

    base = Path(root or "lorsp-runs").expanduser().resolve()
    defaulted = storage is None
    if storage is None:
        db = base / "optuna.db"
        if not db.is_file():
            raise ConfigError(f"no Optuna database at {db}; pass --root DIR (the study's tracking.root) or --storage URI")
        storage = f"sqlite:///{db}"
    opened = rdb_storage(storage)
    study = stored_config(opened, name)
    if root is not None or defaulted:
        study = study.model_copy(update={"tracking": study.tracking.model_copy(update={"root": str(base)})})
    return study, opened, Path(study.tracking.root).expanduser().resolve()


def print_front(name: str, records: list[TrialRecord], summary: FrontSummary, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    import sys

    console = console or Console(width=None if sys.stdout.isatty() else 160)
    partial = sum(1 for r in records if r.state == "COMPLETE" and not r.full_budget)
    failed = sum(1 for r in records if r.state == "FAIL")
    console.print(
        f"study '{name}': {len(records)} trials, {len(summary.eligible)} ran their full budget "
        f"({partial} stopped early, {failed} failed); front of {len(summary.front)}; "
        f"hypervolume {summary.hypervolume:.6g} (normalised {summary.hypervolume_normalised:.4f}) "
        f"w.r.t. reference {summary.reference_text()}"
    )
    if not summary.front:
        return
    params = sorted({k for r in summary.front for k in r.params})
    metrics = [m for m, _ in summary.objectives] + [m for m in ("test_acc", "firing_rate")
                                                  if any(m in r.values for r in summary.front)]
    metrics = list(dict.fromkeys(metrics))
    table = Table(title="Pareto-optimal trials (selected on validation; test_acc for reporting only)")
    table.add_column("trial", justify="right")
    for p in params:
        table.add_column(p, justify="right")
    for m in metrics:
        table.add_column(m, justify="right", style="bold" if m in {o for o, _ in summary.objectives} else "")
    for r in summary.front:
        table.add_row(str(r.number), *[_cell(r.params.get(p)) for p in params], *[_cell(r.values.get(m)) for m in metrics])
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() and abs(value) >= 10 else f"{value:.4g}"
    return str(value)


if __name__ == "__main__":
    import sys

    sys.exit(main())
