"""Trial overhead and trials per hour of a real study (``lorsp.tune.run_study``).

    python benchmarks/trials.py                                  # quickstart, 4 trials x 2 epochs, 1 and 2 at a time
    python benchmarks/trials.py --modes ray_train,tuned,inline --trials 6 --epochs 2 --concurrency 1,2
    python benchmarks/trials.py --gpu-share 1,2,4                # on a GPU machine with Ray: 1, 2, 4 trials per GPU

Each (mode, concurrency) runs the quickstart study (``search_spaces/quickstart.yaml``) with a
fresh temporary ``tracking.root`` and its own local Ray cluster (own temp dir, so a cluster
someone else runs on this machine is never joined). Torch threads per trial come from the CPU
allocation: ``cpus_per_worker = cores / concurrency`` and ``train.threads = null``, so
``lorsp.trial`` sets the threads (quickstart.yaml pins ``threads: 1``).

Trial start -> first training step is measured from what a study reports anyway, with no patching
of lorsp: a Tune callback (``run_study(callbacks=...)``) notes on the driver when each trial starts
and when its results arrive; the first result minus its ``epoch_time_s`` is when the first step
began, and the ``setup_s`` that ``train_loop`` reports splits that wait into the framework's part
(Tune or Ray Train starting processes, imports, fetching the data) and lorsp's own (building the
model, moving the data to the device). A trial's total overhead is its wall time minus the sum of
its ``epoch_time_s``.

Modes (``resources.launcher`` of the study, see lorsp/config/sections.py):
  ray_train  every trial fits a Ray Train ``TorchTrainer`` (Train V2 defaults): a controller and
             fresh worker processes per trial, each importing torch and timm.
  tuned      ray_train + Train V2 settings that cut per-trial work: no preemption-watcher actor,
             controller poll every 0.2 s instead of 2 s, no Train metrics / structured logging /
             state reconciliation (``TUNED_ENV``).
  inline     the default for one-worker trials: ``train_loop`` runs in the Tune trial process,
             which Tune reuses (``reuse_actors``), so torch/timm are imported once per process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import _util as U  # noqa: E402

QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"

#: Ray Train V2 knobs (all in ray.train.v2._internal.constants.ENV_VARS_TO_PROPAGATE, so the
#: trial process passes them on to the controller and the workers).
TUNED_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # one actor process less per trial
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",  # controller poll: start-up and reports seen sooner
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING": "0",
    "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0",
    "RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION": "0",
}

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timing_callback(events: dict[str, dict[str, Any]]) -> Any:
    """A Tune callback that keeps, per trial, its start time and its results (on the driver)."""
    from ray.tune import Callback

    class TimingCallback(Callback):
        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            events.setdefault(trial.trial_id, {"results": []})["start"] = time.time()

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            events.setdefault(trial.trial_id, {"results": []})["results"].append(
                {"t": time.time(), "epoch_time_s": result.get("epoch_time_s"), "setup_s": result.get("setup_s"),
                 "pid": result.get("pid")})

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            events.setdefault(trial.trial_id, {"results": []})["end"] = time.time()

        on_trial_error = on_trial_complete

    return TimingCallback()


def run_one(mode: str, concurrency: int, args: argparse.Namespace, gpus_per_trial: float = 0.0) -> dict[str, Any]:
    """One study in a fresh local Ray cluster; returns wall time and per-trial timings."""
    import ray

    from lorsp.config import load_study
    from lorsp.tune import run_study

    work = Path(tempfile.mkdtemp(prefix="lb-trials-"))
    cores = args.cpus or os.cpu_count() or 1
    cpus = cores / concurrency
    overrides = [
        f"name=bench-{mode}-c{concurrency}-{int(time.time())}", f"tracking.root={work / 'runs'}",
        f"search.num_samples={args.trials}", f"search.max_concurrent={concurrency}", f"train.epochs={args.epochs}",
        "train.threads=null", f"resources.cpus_per_worker={cpus}", f"resources.gpus_per_worker={gpus_per_trial}",
        f"resources.launcher={'inline' if mode == 'inline' else 'ray_train'}",
    ]
    overrides += args.set
    study = load_study(args.space, overrides)

    # With more than one Ray instance on the machine, Ray Train's PlacementGroupCleaner (state API,
    # address "auto") cannot tell which one is its own and fails; naming the dashboard avoids it.
    dashboard_port = free_port()
    env = {"RAY_TRAIN_V2_ENABLED": "1", "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}"}
    if mode == "tuned":
        env.update(TUNED_ENV)
    os.environ.update(env)  # Train reads its knobs from the environment
    tick = time.time()
    ray.init(address="local", num_cpus=cores, num_gpus=1 if gpus_per_trial else None,
             _temp_dir=f"/tmp/lbray{os.getpid()}{mode[0]}{concurrency}", logging_level="WARNING",
             include_dashboard=True, dashboard_port=dashboard_port,
             log_to_driver=True, runtime_env={"env_vars": env})
    ray_init_s = time.time() - tick
    events: dict[str, dict[str, Any]] = {}
    try:
        tick = time.time()
        records = run_study(study, callbacks=[timing_callback(events)], log=lambda m: None).records
        wall = time.time() - tick
    finally:
        ray.shutdown()
        for key in env:
            os.environ.pop(key, None)
    return {"mode": mode, "concurrency": concurrency, "cpus_per_trial": cpus, "gpus_per_trial": gpus_per_trial,
            "wall_s": wall, "ray_init_s": ray_init_s, "events": events,
            "states": [r.state for r in records], "work": str(work)}


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    per_trial = []
    for ev in run["events"].values():
        results = ev["results"]
        if "start" not in ev or not results:
            continue
        first = results[0]
        epochs = [r["epoch_time_s"] for r in results if r.get("epoch_time_s") is not None]
        first_step = first["t"] - ev["start"] - (first["epoch_time_s"] or 0.0)
        setup = first.get("setup_s") or 0.0
        end = ev.get("end", results[-1]["t"])
        per_trial.append({
            "start_to_first_step": first_step,
            "framework_start": first_step - setup,
            "lorsp_setup": setup,
            "wall": end - ev["start"],
            "overhead": end - ev["start"] - sum(epochs),
            "epoch_time": statistics.mean(epochs) if epochs else float("nan"),
            "pid": first.get("pid"),
        })

    def mean(key: str) -> float:
        xs = [r[key] for r in per_trial if r[key] == r[key]]
        return statistics.mean(xs) if xs else float("nan")

    n = len(run["states"])
    return {
        "trials": n, "done": sum(s == "COMPLETE" for s in run["states"]), "per_trial": per_trial,
        "trials_per_hour": 3600 * n / run["wall_s"],
        **{k: mean(k) for k in ("start_to_first_step", "framework_start", "lorsp_setup", "wall", "overhead",
                                "epoch_time")},
        "trial_processes": len({r["pid"] for r in per_trial}),
    }


PIECES = r"""
import json, time, os
t = {}
s = time.time(); import torch; t["import torch"] = time.time() - s
s = time.time(); import timm; t["import timm (+torchvision)"] = time.time() - s
s = time.time(); import lorsp.train; t["import lorsp.train (rest)"] = time.time() - s
s = time.time(); import ray, ray.train, ray.tune; t["import ray, ray.train, ray.tune"] = time.time() - s
from lorsp.config import load_study
from lorsp.model import build_model
study = load_study(os.environ["SPACE"]).resolved()
s = time.time(); build_model(study, 10); t["build_model (quickstart)"] = time.time() - s
import torch.distributed as dist
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000))
s = time.time(); dist.init_process_group("gloo", rank=0, world_size=1)
t["gloo process group, world 1"] = time.time() - s
dist.destroy_process_group()
print(json.dumps(t))
"""


def pieces(space: str) -> dict[str, float]:
    """What the worker's start-up pieces cost alone, in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", PIECES], capture_output=True, text=True,
                         env={**os.environ, "SPACE": space}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default=str(QUICKSTART))
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--concurrency", default="1,2", help="max_concurrent values, e.g. 1,2")
    parser.add_argument("--modes", default="ray_train,tuned,inline")
    parser.add_argument("--cpus", type=int, default=None, help="CPUs Ray may use (default: all cores)")
    parser.add_argument("--gpu-share", default=None,
                        help="GPU fractional sharing: trials per GPU, e.g. 1,2,4 (gpus_per_worker 1/n); needs CUDA")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra study override, e.g. --set backbone.kwargs.depth=4")
    parser.add_argument("--no-pieces", action="store_true", help="skip the stand-alone start-up costs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import torch

    device = torch.device("cuda" if args.gpu_share else "cpu")
    if args.gpu_share and not torch.cuda.is_available():
        parser.error("--gpu-share needs a CUDA device")
    print(f"# benchmarks/trials.py: {U.machine_line(device)}; study {args.space}, {args.trials} trials x "
          f"{args.epochs} epochs")
    runs = []
    if args.gpu_share:
        for share in [int(s) for s in args.gpu_share.split(",")]:
            for mode in args.modes.split(","):
                print(f"  running {mode}, {share} trial(s) per GPU ...", file=sys.stderr, flush=True)
                runs.append(run_one(mode, share, args, gpus_per_trial=1.0 / share))
    else:
        for c in [int(s) for s in args.concurrency.split(",")]:
            for mode in args.modes.split(","):
                print(f"  running {mode}, {c} at a time ...", file=sys.stderr, flush=True)
                runs.append(run_one(mode, c, args))
    summaries = [summarise(r) for r in runs]

    rows = []
    for r, s in zip(runs, summaries):
        share = f"{r['concurrency']}/GPU" if r["gpus_per_trial"] else f"{r['concurrency']}"
        rows.append([r["mode"], share, f"{r['cpus_per_trial']:g}", f"{s['done']}/{s['trials']}", f"{r['wall_s']:.0f}",
                     f"{s['trials_per_hour']:.0f}", f"{s['start_to_first_step']:.1f}", f"{s['framework_start']:.1f}",
                     f"{s['lorsp_setup']:.1f}", f"{s['overhead']:.1f}", f"{s['epoch_time']:.1f}",
                     f"{s['trial_processes']}"])
    print(U.table(["mode", "at a time", "CPUs/trial", "done", "study wall s", "trials/hour", "start->1st step s",
                   "of which framework s", "of which lorsp setup s", "overhead/trial s", "epoch s", "trial procs"],
                  rows, title="Trials: overhead and throughput (means over trials)"))
    piece_costs = {}
    if not args.no_pieces:
        piece_costs = pieces(args.space)
        print(U.table(["piece (fresh interpreter, alone)", "s"], [[k, f"{v:.2f}"] for k, v in piece_costs.items()],
                      title="Start-up pieces measured alone"))
    U.dump_json(args.json, {"runs": runs, "summaries": summaries, "pieces": piece_costs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
