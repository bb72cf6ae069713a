"""Each method's best configuration of a finished study, re-trained on fresh seeds, and whether it
sits at an edge of the range it was searched in.

A comparison study (search_spaces/compare.yaml) gives every method the same trial budget; this
script answers the two questions left after it: is each method's best more than one lucky seed, and
was any method searched in a range that cuts off its good values (its best at an edge)? It reads
the stored study (no Ray), re-trains each method's best full-budget trial by validation accuracy
(grouped by method, and by `lorsp_mode` where the study balances it) in this process with
`train.seed` = each of `--seeds` (the splits stay those of `data.seed`), and prints the mean and
[min, max] of validation and test accuracy and the prompt's density, then the range-edge check of
`lorsp.edges`.

    python -m lorsp.tune --space search_spaces/compare.yaml
    python benchmarks/methods.py --name compare --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorsp.config import StudyConfig  # noqa: E402
from lorsp.edges import describe, method_of, range_edges  # noqa: E402
from lorsp.pareto import TrialRecord  # noqa: E402
from lorsp.search import open_stored_study, trial_records  # noqa: E402

COLUMNS = ("val_acc", "test_acc", "prompt_density")


def group_of(study: StudyConfig, record: TrialRecord) -> str:
    """The method, and LoRSP's reading where the study balances it (each is a budget of its own)."""
    method = method_of(study, record)
    mode = record.params.get("lorsp_mode")
    return f"{method} ({mode})" if method == "lorsp" and mode is not None else method


def best_per_group(study: StudyConfig, records: list[TrialRecord]) -> dict[str, TrialRecord]:
    best: dict[str, TrialRecord] = {}
    for r in sorted(records, key=lambda r: r.number):
        if r.state != "COMPLETE" or "val_acc" not in r.values:
            continue
        key = group_of(study, r)
        if key not in best or r.values["val_acc"] > best[key].values["val_acc"]:
            best[key] = r
    return best


def retrain(study: StudyConfig, record: TrialRecord, seed: int) -> dict[str, float]:
    from lorsp.train import train_loop

    run = study.with_params(record.params)
    run.train.seed = seed
    with tempfile.TemporaryDirectory() as out:
        return train_loop(run, out_dir=out, verbose=False)


def _spread(values: list[float]) -> str:
    return f"{sum(values) / len(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def _params(record: TrialRecord) -> str:
    shown = {k: v for k, v in record.params.items() if k not in ("method", "lorsp_mode")}
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(shown.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="compare", help="study name (default compare)")
    parser.add_argument("--root", default=None, help="the study's tracking.root (default lorsp-runs)")
    parser.add_argument("--storage", default=None, help="Optuna RDB URI (default ROOT/optuna.db)")
    parser.add_argument("--seeds", default="0,1,2", help="train.seed values to re-train with (default 0,1,2)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    study, storage, _ = open_stored_study(args.name, args.storage, args.root)
    records = trial_records(study, storage)
    best = best_per_group(study, records)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for group, record in sorted(best.items()):
        runs = [retrain(study, record, seed) for seed in seeds]
        rows.append({"group": group, "trial": record.number, "search_val": record.values["val_acc"],
                     "params": _params(record),
                     **{c: _spread([float(r.get(c, float("nan"))) for r in runs]) for c in COLUMNS}})
        print(f"  {group}: trial {record.number} re-trained on seeds {seeds} "
              f"({time.perf_counter() - started:.0f}s)", flush=True)
    print(f"\nstudy '{study.name}': each method's best trial by val_acc, re-trained with train.seed in {seeds}"
          " (mean [min, max])\n")
    print("| method | trial | its knobs | val_acc in the search | val_acc | test_acc | prompt density |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['group']} | {row['trial']} | {row['params']} | {row['search_val']:.3f} | "
              f"{row['val_acc']} | {row['test_acc']} | {row['prompt_density']} |")
    print("\nwhere each method's best sits in the range it was searched in (lorsp.edges):")
    for line in describe(range_edges(study, records)):
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
