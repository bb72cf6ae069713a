"""`python -m lorsp.pareto`: a stored study's Pareto front in the terminal and as Parquet/CSV/PNG.

The command line of the Pareto maths, kept out of the :mod:`lorsp.pareto` package so that the maths
stays pure numpy and every module may import it (``lorsp/pareto/__main__.py`` only calls :func:`main`).

`--by method` adds one front per method on the same axes, the fair comparison of methods that a
study with a `method` knob (e.g. search_spaces/compare.yaml) is for. `--gallery` puts the front's
prompt galleries (lorsp.gallery: the same validation images in every trial) side by side in one
picture. `--importance` says which knobs matter for each objective, per method (:mod:`lorsp.importance`),
and logs the table and its plot to the study's parent MLflow run. `--edges` says, per method,
where its best trial's knobs sit in the range it was searched in (:mod:`lorsp.edges`): a best at an
edge means the range may cut that method off, and the comparison is not yet fair. When `lorsp.confirm` has re-trained
the front with fresh seeds, the table shows the
means, intervals and `confirmed`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from lorsp.config import ConfigError

GALLERY_MAX = 12
"""At most this many galleries side by side (the best by the first objective): each is ~700 px wide."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorsp.pareto", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="study name (the Optuna study / MLflow experiment)")
    parser.add_argument("--storage", help="Optuna RDB URI (default: sqlite ROOT/optuna.db)")
    parser.add_argument("--root", help="folder of the embedded stores (default: lorsp-runs)")
    parser.add_argument("--out", help="where to write front.parquet/.csv and trials.parquet/.csv "
                                      "(default ROOT/pareto/NAME)")
    parser.add_argument("--by", metavar="PARAM[,PARAM]",
                        help="also one front per value of these parameters, e.g. --by method or --by method,lorsp_mode")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    parser.add_argument("--gallery", action="store_true",
                        help=f"put the front's prompt galleries side by side in OUT/front_gallery.png "
                             f"(the best {GALLERY_MAX} by the first objective)")
    parser.add_argument("--importance", action="store_true",
                        help="which knobs matter for each objective, per method (fANOVA); also written to "
                             "OUT/importance.csv and .png and logged to the study's parent MLflow run")
    parser.add_argument("--edges", action="store_true",
                        help="per method, where its best trial's knobs sit in its own range (a best at an edge "
                             "means the range may cut that method off)")
    args = parser.parse_args(argv)

    from lorsp.confirmations import confirmed_columns
    from lorsp.metrics import is_bounded
    from lorsp.pareto import summarise
    from lorsp.report import plot_front, plot_fronts_by, print_front, print_fronts_by, trial_rows, write_table
    from lorsp.search import existing_study, open_stored_study, trial_records

    try:
        study, storage, root = open_stored_study(args.name, args.storage, args.root)
        records = trial_records(study, storage)
        if not records:
            raise ConfigError(f"study '{args.name}' has no trials yet; run it with python -m lorsp.tune")
        by = [name for name in (args.by or "").split(",") if name]
        if by and not any(by[0] in r.params for r in records):
            known = sorted({k for r in records for k in r.params})
            raise ConfigError(f"--by {by[0]}: no trial of study '{args.name}' has that parameter; "
                              f"choose one of {', '.join(known)}")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    objectives = [(o.metric, o.mode) for o in study.objectives]
    summary = summarise(records, objectives, is_bounded)
    out = Path(args.out) if args.out else root / "pareto" / study.name
    rows = trial_rows(records, objectives)
    written = write_table([r for r in rows if r["pareto"]], out, "front") + write_table(rows, out, "trials")
    if not args.no_plot and summary.eligible:
        written.append(plot_front(records, objectives, out / "front.png", title=study.name))
        if by:
            written.append(plot_fronts_by(records, objectives, by, out / f"front_by_{'_'.join(by)}.png",
                                          title=f"{study.name}: one front per {' '.join(by)}"))
    if args.gallery:
        picture = front_gallery(study, summary.front, objectives, out / "front_gallery.png")
        if picture is not None:
            written.append(picture)
    print_front(study.name, records, summary,
                confirmations=confirmed_columns(study, existing_study(storage, study.name), records))
    if by:
        print_fronts_by(records, objectives, by)
    if args.edges:
        from lorsp.edges import describe, range_edges

        print("where each method's best (by val_acc) sits in the range it was searched in:")
        for line in describe(range_edges(study, records)):
            print("  " + line)
    if args.importance:
        written += knob_importance(study, existing_study(storage, study.name), out)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def front_gallery(study: Any, front: list[Any], objectives: list[tuple[str, str]], png: Path) -> Path | None:
    """The galleries of the front's trials side by side, best first by the first objective; None
    (with a line saying why) when no member of the front has one."""
    from lorsp.gallery import side_by_side
    from lorsp.tracking.files import fetch_gallery, open_tracking

    metric, mode = objectives[0]
    ranked = sorted(front, key=lambda r: (-1 if mode == "max" else 1) * float(r.values.get(metric, 0.0)))
    shown = ranked[:GALLERY_MAX]
    if len(ranked) > len(shown):
        print(f"--gallery: showing the best {len(shown)} of the {len(ranked)} trials on the front by {metric}")
    store, runs, _ = open_tracking(study, None, required=False)
    with tempfile.TemporaryDirectory(prefix="lorsp-gallery-") as tmp:
        found, missing = [], []
        for record in shown:
            folder = Path(tmp) / str(record.number)
            folder.mkdir()
            picture = fetch_gallery(study, record, runs.get(record.number), store, folder)
            if picture is None:
                missing.append(record.number)
                continue
            values = "  ".join(f"{m} {record.values[m]:.3g}" for m, _ in objectives if m in record.values)
            found.append((f"trial {record.number}: {record.params.get('method', study.prompt.method)}\n{values}",
                          picture))
        if missing:
            print(f"--gallery: no gallery for trial(s) {', '.join(map(str, missing))} (drawn after a trial's last "
                  "epoch; studies recorded before galleries existed have none)")
        if not found:
            return None
        return side_by_side(found, png, title=f"{study.name}: Pareto front (validation), best {metric} first")


def knob_importance(study: Any, stored: Any, out: Path) -> list[Path]:
    """Print which knobs matter, write the table and plot under `out`, log both to the parent run."""
    from lorsp import importance
    from lorsp.tracking.files import open_tracking

    rows = importance.knob_importances(stored, [o.metric for o in study.objectives])
    if not rows:
        print(f"--importance: no method has {importance.MIN_TRIALS} or more full-budget trials yet")
        return []
    importance.print_table(rows)
    files = [importance.write_csv(rows, out / "importance.csv"),
             importance.plot(rows, out / "importance.png", f"{study.name}: which knobs matter")]
    store, _, parent = open_tracking(study, None, required=False)
    if store is not None and parent is not None:
        for file in files:
            store.client.log_artifact(parent, str(file), artifact_path="importance")
        print(f"--importance: logged to the parent run {parent} (artifacts importance/)")
    return files
