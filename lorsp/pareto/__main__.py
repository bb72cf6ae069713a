"""`python -m lorsp.pareto`: a stored study's Pareto front in the terminal and as Parquet/CSV/PNG.

`--by method` adds one front per method on the same axes, the fair comparison of methods that a
study with a `method` knob (e.g. search_spaces/compare.yaml) is for. When `lorsp.confirm` has
re-trained the front with fresh seeds, the table shows the means, intervals and `confirmed`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lorsp.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorsp.pareto", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="study name (the Optuna study / MLflow experiment)")
    parser.add_argument("--storage", help="Optuna RDB URI (default: sqlite ROOT/optuna.db)")
    parser.add_argument("--root", help="folder of the embedded stores (default: lorsp-runs)")
    parser.add_argument("--out", help="where to write front.parquet/.csv and trials.parquet/.csv (default ROOT/pareto/NAME)")
    parser.add_argument("--by", metavar="PARAM[,PARAM]",
                        help="also one front per value of these parameters, e.g. --by method or --by method,lorsp_mode")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    args = parser.parse_args(argv)

    from lorsp.confirm import confirmed_columns
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
    summary = summarise(records, objectives)
    out = Path(args.out) if args.out else root / "pareto" / study.name
    rows = trial_rows(records, objectives)
    written = write_table([r for r in rows if r["pareto"]], out, "front") + write_table(rows, out, "trials")
    if not args.no_plot and summary.eligible:
        written.append(plot_front(records, objectives, out / "front.png", title=study.name))
        if by:
            written.append(plot_fronts_by(records, objectives, by, out / f"front_by_{'_'.join(by)}.png",
                                          title=f"{study.name}: one front per {' '.join(by)}"))
    print_front(study.name, records, summary,
                confirmations=confirmed_columns(study, existing_study(storage, study.name), records))
    if by:
        print_fronts_by(records, objectives, by)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
