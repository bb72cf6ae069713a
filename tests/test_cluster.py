"""lorsp on Ray clusters: the deployment files in cluster/, and real clusters on this machine.

The first tests read the cloud configs and hold them to Ray's own cluster-config schema and to each
other (images, volumes, secrets, service names). The others start real processes through
`cluster/local_cluster.py`, the tool behind `cluster/local.sh` (PostgreSQL, an MLflow server, a Ray
head and worker nodes, each a separate raylet with token auth), submit real studies with `ray job
submit`, lose a worker node in the middle of a study, stop and resume the study driver, and check
what ended up in PostgreSQL and MLflow. PostgreSQL comes from the system (`apt-get install -y
postgresql`): without it these tests are skipped here and fail in CI.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lorsp.config import load_study
from lorsp.ports import free_port
from tests.conftest import REPO

CLUSTER = REPO / "cluster"
# The local-cluster tool is a script in cluster/, not part of the lorsp package: import it the way
# `python cluster/local_cluster.py` (what local.sh runs) finds its modules, with its folder on sys.path.
sys.path.insert(0, str(CLUSTER))
cluster = importlib.import_module("local_cluster")

KUBERAY = CLUSTER / "kuberay"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
RAY = str(Path(sys.executable).parent / "ray")

# Small trials: ~2 s an epoch on one CPU (batch 8 makes 25 steps of 200 images), so a worker node
# can be lost in the middle of one.
SMALL = ["--set", "data.max_train=200", "--set", "data.batch_size=8"]
TRIALS = 4  # of the multi-node study: two at a time, so the first two run on w1 and w2
EPOCHS = 4  # of each trial of the multi-node study


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# ================================================================ the deployment files
def test_launcher_config_passes_ray_validation():
    import jsonschema  # Ray's schema check raises its errors
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    full = prepare_config(copy.deepcopy(raw))  # merges Ray's AWS defaults, as `ray up` does
    validate_config(full)                      # Ray's JSON schema for cluster configs
    assert full["provider"]["type"] == "aws"
    types = full["available_node_types"]
    head = types[full["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "the head must not take training workers"
    (gpu,) = [t for name, t in types.items() if name != full["head_node_type"]]
    assert gpu["resources"]["GPU"] >= 1 and gpu["min_workers"] == 0 < gpu["max_workers"]
    setup = "\n".join(full["setup_commands"])
    assert "pip install" in setup and "-e ~/lorsp" in setup  # lorsp's dependencies bring the PostgreSQL driver
    assert "/mnt/lorsp" in setup, "checkpoints need storage shared by all nodes"
    assert full["file_mounts"]["~/lorsp"] == "." and "~/.ray/auth_token" in full["file_mounts"]
    for command in (full["head_start_ray_commands"][-1], full["worker_start_ray_commands"][-1]):
        assert "RAY_AUTH_MODE=token ray start" in command
    assert "docker compose" in "\n".join(full["head_setup_commands"])
    # The check is real: a broken value is refused.
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["ray.worker.gpu"]["resources"] = "GPU"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_kuberay_manifests_parse_and_agree():
    kinds = {p.name: sorted(d["kind"] for d in _docs(p)) for p in KUBERAY.glob("*.yaml")}
    assert kinds["raycluster.yaml"] == ["RayCluster"]
    assert kinds["rayjob.yaml"] == ["RayJob"]
    assert kinds["storage.yaml"] == ["PersistentVolumeClaim"]
    assert {"Secret", "StatefulSet", "Deployment", "Service", "Job", "ConfigMap"} <= set(kinds["services.yaml"])
    for path in KUBERAY.glob("*.yaml"):
        for doc in _docs(path):
            assert doc["apiVersion"] and doc["metadata"]["name"], path

    (rc,) = _docs(KUBERAY / "raycluster.yaml")
    (job,) = _docs(KUBERAY / "rayjob.yaml")
    assert rc["apiVersion"] == job["apiVersion"] == "ray.io/v1"
    spec = rc["spec"]
    # The RayJob creates a cluster of exactly the RayCluster's shape.
    assert job["spec"]["rayClusterSpec"] == spec
    assert spec["authOptions"] == {"mode": "token"} and spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = spec["workerGroupSpecs"]
    assert len(groups) == 1
    gpu_group = groups[0]
    assert gpu_group["minReplicas"] == 0 < gpu_group["maxReplicas"]
    (worker,) = gpu_group["template"]["spec"]["containers"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    for group in [spec["headGroupSpec"], *groups]:  # KubeRay wants every rayStartParams value a string
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())

    # Names that must line up across files: image, volume claim, Secret keys, Service names.
    services = _docs(KUBERAY / "services.yaml")
    by_kind: dict[str, list[dict]] = {}
    for doc in services:
        by_kind.setdefault(doc["kind"], []).append(doc)
    (secret,) = by_kind["Secret"]
    service_names = {s["metadata"]["name"] for s in by_kind["Service"]}
    (pvc,) = _docs(KUBERAY / "storage.yaml")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    pods = [spec["headGroupSpec"]["template"]["spec"], gpu_group["template"]["spec"]]
    images = {c["image"] for pod in pods for c in pod["containers"]}
    images |= {c["image"] for d in by_kind["Deployment"] for c in d["spec"]["template"]["spec"]["containers"]
               if c["name"] == "mlflow"}
    assert len(images) == 1, f"one lorsp image everywhere, got {images}"
    for pod in pods:
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        assert claims == {pvc["metadata"]["name"]}
    head_env = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    for var in head_env:
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]

    # The RayJob runs the ViT study against the shared services.
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:5] == ["python", "-m", "lorsp.tune", "--space", "search_spaces/vit.yaml"]
    tracking = argv[argv.index("--tracking-uri") + 1]
    storage = argv[argv.index("--storage") + 1]
    assert tracking.startswith("http://") and tracking.split("//")[1].split(":")[0] in service_names
    assert storage.startswith("postgresql://") and storage.split("@")[1].split(":")[0] in service_names
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    study = load_study(REPO / "search_spaces" / "vit.yaml", sets)
    assert study.tracking.root.startswith("/mnt/lorsp")  # the shared volume
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    assert "/mnt/lorsp" in mounts


def test_services_compose_file():
    compose = yaml.safe_load((CLUSTER / "services" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "mlflow"} <= set(services)
    command = services["mlflow"]["command"]
    assert "--backend-store-uri postgresql://" in command and "--artifacts-destination s3://" in command
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    init = [v for v in services["postgres"]["volumes"] if "init-optuna.sql" in v]
    assert init and "CREATE DATABASE optuna" in (CLUSTER / "services" / "init-optuna.sql").read_text()
    env = (CLUSTER / "services" / "env.example").read_text()
    assert "POSTGRES_PASSWORD=" in env and "MINIO_ROOT_PASSWORD=" in env
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        # The compose client checks the file without a running engine.
        out = subprocess.run([docker, "compose", "--env-file", str(CLUSTER / "services" / "env.example"), "-f",
                              str(CLUSTER / "services" / "compose.yaml"), "config", "-q"],
                             capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stderr


def test_every_cluster_file_is_documented_and_the_script_runs():
    readme = (CLUSTER / "README.md").read_text()
    for path in sorted(CLUSTER.rglob("*")):
        if path.is_file() and path.name not in ("README.md", ".gitignore") and "__pycache__" not in path.parts:
            assert str(path.relative_to(CLUSTER)) in readme, f"cluster/README.md does not mention {path.name}"
    script = CLUSTER / "local.sh"
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and all(verb in out.stdout for verb in ("up", "status", "down", "kill-node"))


@pytest.mark.parametrize("name", ["multinode", "resnet"])
def test_cluster_study_files_load(name):
    study = load_study(REPO / "search_spaces" / f"{name}.yaml")
    assert study.resources.gpus_per_worker >= 1 and study.search.max_concurrent >= 1
    if name == "multinode":
        assert study.resources.workers_per_trial > 1  # one trial spans nodes


# ================================================================ real clusters on this machine
def _need_postgres() -> None:
    if cluster.pg_bindir() is None:
        reason = ("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin): "
                  "apt-get update && apt-get install -y postgresql")
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)


def _state_folder(prefix: str) -> Path:
    # Under /tmp and world-traversable: as root, PostgreSQL runs as the `postgres` user.
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    folder.chmod(0o755)
    return folder / "state"


@pytest.fixture(scope="module")
def postgres() -> Iterator[dict[str, Any]]:
    """A private PostgreSQL with the databases `mlflow` and `optuna`, started by the cluster tool's own
    helpers but without Ray or an MLflow server: seconds instead of a cluster's minute."""
    _need_postgres()
    folder = _state_folder("lorsp-pg-")
    state = {"postgres": {"bindir": str(cluster.pg_bindir()), "root": str(folder / "postgres"),
                          "port": free_port(), "password": secrets.token_hex(12)}}
    env = dict(os.environ)
    try:
        cluster._pg_init(state, env)
        cluster._pg_start(state, env)
        yield state
    finally:
        cluster._pg_stop(state)
        shutil.rmtree(folder.parent, ignore_errors=True)


def _sql(state: dict[str, Any], db: str, query: str) -> list[tuple[Any, ...]]:
    """Rows read with SQL from PostgreSQL itself, not through the API under test."""
    import psycopg

    pg = state["postgres"]
    with psycopg.connect(host="127.0.0.1", port=pg["port"], user=cluster.PG_USER, password=pg["password"],
                         dbname=db) as conn, conn.cursor() as cursor:
        cursor.execute(query)
        return cursor.fetchall()


def test_plain_postgresql_uri_opens_the_optuna_storage_and_the_mlflow_store(postgres, tmp_path, monkeypatch):
    """`--storage postgresql://...` and `--tracking-uri postgresql://...` as users type them.

    SQLAlchemy maps the plain form to its default PostgreSQL driver; lorsp must install that one.
    psycopg2 is made unimportable here, as on a fresh install of lorsp that no longer carries it,
    so a dependency that disagrees with SQLAlchemy's default fails this test.
    """
    import optuna
    from mlflow import MlflowClient

    from lorsp.config import StudyConfig
    from lorsp.search import rdb_storage
    from lorsp.tracking import connect

    monkeypatch.setitem(sys.modules, "psycopg2", None)  # `import psycopg2` now raises ImportError
    pg = postgres["postgres"]

    def uri(db: str) -> str:
        return f"postgresql://{cluster.PG_USER}:{pg['password']}@127.0.0.1:{pg['port']}/{db}"

    assert cluster.pg_uri(postgres, "optuna") == uri("optuna")  # what `up` prints is the plain form

    storage = rdb_storage(uri("optuna"))
    assert storage.engine.dialect.driver == "psycopg"
    study = optuna.create_study(study_name="plain-uri", storage=storage, directions=["maximize"])
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=3)
    reread = optuna.load_study(study_name="plain-uri", storage=rdb_storage(uri("optuna")))
    assert [t.state.name for t in reread.trials] == ["COMPLETE"] * 3
    assert _sql(postgres, "optuna", "SELECT count(*) FROM trials") == [(3,)]

    config = StudyConfig.model_validate({"name": "plain-uri", "tracking": {"root": str(tmp_path / "runs")}})
    store = connect(config, uri("mlflow"))
    client = MlflowClient(tracking_uri=uri("mlflow"))
    run = client.create_run(store.experiment_id)
    client.log_metric(run.info.run_id, "val_acc", 0.75, step=1)
    client.set_terminated(run.info.run_id)
    assert _sql(postgres, "mlflow", "SELECT name FROM experiments WHERE name = 'plain-uri'") == [("plain-uri",)]
    assert _sql(postgres, "mlflow", "SELECT key, value FROM metrics") == [("val_acc", 0.75)]


def _ray_env(state: dict[str, Any]) -> dict[str, str]:
    """The environment of Ray's CLI for this cluster: its own token, whatever HOME and the shell hold."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    return {**env, **cluster.client_env(state)}


def _submit(state: dict[str, Any], args: list[str], *, wait: bool, timeout: float = 480) -> str:
    """`ray job submit` of a lorsp.tune study, exactly as `up` prints it; returns the submission id."""
    sid = f"lorsp-test-{secrets.token_hex(4)}"
    cmd = cluster.submit_command(state, extra=args, working_dir=str(REPO))
    cmd = [RAY, *cmd[1:3], "--submission-id", sid, *(["--no-wait"] if not wait else []), *cmd[3:]]
    out = subprocess.run(cmd, env=_ray_env(state), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                         check=False)
    assert out.returncode == 0, f"ray job submit failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return sid


_JOB_CLIENTS: dict[str, Any] = {}


def _jobs(state: dict[str, Any]) -> Any:
    """Ray's JobSubmissionClient for this cluster, built once (it checks the server's version twice)."""
    url = state["dashboard_url"]
    if url not in _JOB_CLIENTS:
        _JOB_CLIENTS[url] = cluster.job_client(state)
    return _JOB_CLIENTS[url]


def _job_status(state: dict[str, Any], sid: str) -> str:
    """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    return _jobs(state).get_job_status(sid).value


def _job_logs(state: dict[str, Any], sid: str) -> str:
    try:
        return _jobs(state).get_job_logs(sid)[-4000:]
    except cluster.dashboard_errors() as err:
        return f"(no logs: {err})"


def _wait(what: str, check: Callable[[], Any], timeout: float, state: dict[str, Any], sid: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        try:
            status = _job_status(state, sid)
        except cluster.dashboard_errors():
            status = None  # a dashboard slow to answer on a busy machine: ask again next round
        if status in ("FAILED", "STOPPED", "SUCCEEDED"):
            found = check()
            if found:
                return found
            pytest.fail(f"job {sid} ended {status} before {what}:\n{_job_logs(state, sid)}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}:\n{_job_logs(state, sid)}")


def _trial_results(state: dict[str, Any], study: str, timeout: float = 60.0) -> dict[str, list[dict[str, Any]]]:
    """Every result each Tune trial reported, per trial id, over all drivers (jobs) of the study.

    Tune's driver appends each result to result.json in its staging folder on the head (flushed at
    once) and copies the folder to the runs folder from time to time and at the end; both are read,
    and for each trial the longer record wins. These are Tune's working files, not a store: while a
    driver runs, Tune moves and replaces them, so a file (or a folder) found by the glob may be gone
    by the time it is read. Then the whole snapshot is taken again, until `timeout`; the moved file
    is found at its new place.

    Only what no store records is read here: the node each *epoch* was reported from. Which trials
    exist, their state and values come from the Optuna storage and MLflow, the study's records.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _read_trial_results(state, study)
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _read_trial_results(state: dict[str, Any], study: str) -> dict[str, list[dict[str, Any]]]:
    files = [*Path(state["runs"]).glob(f"ray/{study}-2*/*/result.json"),
             *Path(state["ray_temp"]).glob(f"head/session_*/artifacts/*/{study}-2*/driver_artifacts/*/result.json")]
    out: dict[str, list[dict[str, Any]]] = {}
    for file in files:
        rows: dict[str, list[dict[str, Any]]] = {}
        for line in file.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line being written
            rows.setdefault(row["trial_id"], []).append(row)
        for trial_id, found in rows.items():
            if len(found) > len(out.get(trial_id, [])):
                out[trial_id] = found
    return out


@pytest.fixture(scope="module")
def study_on_cluster(tmp_path_factory: pytest.TempPathFactory):
    """One study on head + 2 worker nodes, PostgreSQL and MLflow; a worker lost mid-trial; driver resumed.

    With HOME an empty folder, as on a fresh CI machine: `ray start` finds no ~/.ray/auth_token there
    and does not make one, so the cluster must bring its own token to every node and client.

    1. `ray job submit --no-wait` of the quickstart study (4 trials, 4 epochs, 2 at a time) with
       `resources.launcher=ray_train`.
    2. As soon as a trial on w1 has reported (and checkpointed) an epoch, w1 is killed (SIGKILL of
       its raylet, object store, agents and workers), and a replacement node joins, as an
       autoscaler would add one.
    3. Once that trial is complete and another one runs, the driver is stopped (`ray job stop`),
       and the study is submitted again with --resume. (Should the driver end before a trial could
       be interrupted, the study is extended by one trial, so that there is a running one to stop.)
    Everything the tests check is read before `down`; `down` runs last, and what it left is kept.
    """
    _need_postgres()
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HOME", str(home))  # inherited by `up`'s nodes and by `ray job submit`
        out = _run_study_on_cluster()
    out["home_token"] = (home / ".ray" / "auth_token").exists()
    print(f"\nmulti-node study on the local cluster: {out['wall_s']:.0f}s wall (up to down); "
          f"unfinished at the stop (number: state, epoch): {out.get('unfinished_at_stop')}", file=sys.stderr)
    yield out


def _auth_probe(state: dict[str, Any]) -> dict[str, int]:
    """HTTP status of the job API without and with the cluster's token."""
    codes = {}
    try:
        urllib.request.urlopen(state["dashboard_url"] + "/api/jobs/", timeout=10)
        codes["without"] = 200
    except urllib.error.HTTPError as refused:
        codes["without"] = refused.code
    with urllib.request.urlopen(urllib.request.Request(state["dashboard_url"] + "/api/jobs/",
                                                       headers=cluster.auth_headers(state)), timeout=10) as ok:
        codes["with"] = ok.status
    return codes


def _run_study_on_cluster() -> dict[str, Any]:
    folder = _state_folder("lorsp-cluster-")
    started = time.monotonic()
    state = cluster.up(folder, workers=2, head_cpus=0, worker_cpus=1, object_store_mb=256, quiet=True)
    out: dict[str, Any] = {"state": state, "study": "multinode", "nodes_at_start": dict(state["nodes"]),
                           "total": TRIALS}

    def study_args(total: int) -> list[str]:
        # Ray Train trials, though they have one worker each: this study checks that topology
        # (drivers on the head, workers lost with their node); inline trials are tested in test_tune.
        return [*SMALL, "--set", f"train.epochs={EPOCHS}", "--set", "resources.launcher=ray_train",
                "--num-samples", str(total), "--max-concurrent", "2", "--name", out["study"]]

    try:
        import optuna

        def stored_trials() -> list[Any]:
            return optuna.load_study(study_name=out["study"], storage=state["storage_uri"]).get_trials(deepcopy=False)

        token = cluster.token_file(state)
        out["token"] = (token.parent == folder, token.stat().st_mode & 0o777)
        out["auth"] = _auth_probe(state)
        first = _submit(state, study_args(TRIALS), wait=False)
        w1 = state["nodes"]["w1"]["node_id"]

        def running_on_w1() -> str | None:
            # At least two epochs still to run: however late this poll sees the report and however
            # slow the machine, the kill below lands in the middle of the trial, not after its end.
            for trial_id, rows in _trial_results(state, out["study"]).items():
                last = rows[-1]
                early = 1 <= last.get("epoch", 0) <= EPOCHS - 2
                if last.get("node_id") == w1 and not last.get("finished") and early:
                    return trial_id
            return None

        out["victim"] = _wait("a trial reporting from w1", running_on_w1, 400, state, first)
        out["actors_at_kill"] = _live_actors(state)
        cluster.kill_node(folder, "w1", quiet=True)
        out["killed_after_epoch"] = _trial_results(state, out["study"])[out["victim"]][-1]["epoch"]
        cluster.add_node(folder, quiet=True)  # w3: the replacement

        def victim_complete() -> bool:
            return any(t.user_attrs.get("tune_trial_id") == out["victim"] and t.state.name == "COMPLETE"
                       for t in stored_trials())

        _wait("the trial that lost its node to complete", victim_complete, 500, state, first)
        active = ("PENDING", "RUNNING")
        running = first
        for _ in range(3):
            if _job_status(state, running) in active:
                # Stop the driver while a trial runs that has a checkpoint and epochs still to go, so
                # that the resumed trial must continue from it (or once the driver has ended).
                _wait("a running trial with a checkpoint to interrupt",
                      lambda sid=running: (_job_status(state, sid) not in active
                                           or any(_checkpointed_midway(t) for t in stored_trials())),
                      400, state, running)
            if _job_status(state, running) not in active:
                out["total"] += 1
                known = {t.number for t in stored_trials()}
                running = _submit(state, [*study_args(out["total"]), "--resume"], wait=False)
                _wait("a trial of the extended study to checkpoint an epoch",
                      lambda known=known: any(t.number not in known and _checkpointed_midway(t)
                                              for t in stored_trials()),
                      400, state, running)
            stop = subprocess.run([RAY, "job", "stop", "--address", state["dashboard_url"], running],
                                  env=_ray_env(state), capture_output=True, text=True, timeout=120, check=False)
            assert stop.returncode == 0, stop.stderr[-2000:]
            out["stopped_status"] = _job_status(state, running)
            # What the stop left unfinished: WAITING when the driver put its trials back in the queue,
            # RUNNING when it was killed first; --resume continues both. Their epochs_done is the
            # epoch of their last checkpoint, where the resumed trial must continue.
            out["unfinished_at_stop"] = {t.number: (t.state.name, int(t.user_attrs.get("epochs_done", 0) or 0))
                                         for t in stored_trials() if t.state.name in ("RUNNING", "WAITING")}
            if out["stopped_status"] == "STOPPED" and any(e >= 1 for _, e in out["unfinished_at_stop"].values()):
                break
            # The driver ended on its own, or its checkpointed trials did, in the seconds `ray job stop`
            # takes: nothing with a checkpoint was interrupted. Extend the study by a trial and stop again.
        out["complete_before_resume"] = {t.number: t.values for t in stored_trials() if t.state.name == "COMPLETE"}

        second = _submit(state, [*study_args(out["total"]), "--resume"], wait=True)
        out["second_status"] = _job_status(state, second)
        out["second_logs"] = _job_logs(state, second)
        out["results"] = _trial_results(state, out["study"])
        out["trials"] = optuna.load_study(study_name=out["study"], storage=state["storage_uri"]).trials
        out["mlflow"] = _mlflow_runs(state["tracking_uri"], out["study"])
        out["postgres"] = _postgres_counts(state)
        out["status_report"] = cluster.status(folder)
    finally:
        out["wall_s"] = time.monotonic() - started
        try:
            cluster.down(folder, quiet=True)
        finally:
            out["left_running"] = cluster.cluster_pids(state["id"])
            cluster.down(folder, purge=True, quiet=True)
            shutil.rmtree(folder.parent, ignore_errors=True)
    return out


def _checkpointed_midway(trial: Any) -> bool:
    """A RUNNING Optuna trial with a checkpoint of at least one epoch and at least two epochs to go."""
    return trial.state.name == "RUNNING" and 1 <= int(trial.user_attrs.get("epochs_done", 0) or 0) <= EPOCHS - 2


def _live_actors(state: dict[str, Any]) -> list[Any]:
    """Ray's own record of the actors alive now (ray.util.state's ActorState: class_name, node_id, ...)."""
    return cluster.list_state(state, "actors", [("state", "=", "ALIVE")])


def _mlflow_runs(uri: str, name: str) -> dict[str, Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return {"experiment": None, "children": []}
    children = []
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        if "mlflow.parentRunId" not in run.data.tags:
            continue
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        children.append({"tags": dict(run.data.tags), "status": run.info.status, "val_acc_steps": steps})
    return {"experiment": experiment.experiment_id, "children": children}


def _postgres_counts(state: dict[str, Any]) -> dict[str, int]:
    """Row counts read with SQL from the PostgreSQL databases themselves (not through the APIs)."""
    import psycopg

    pg = state["postgres"]
    counts = {}
    for db, query in (("mlflow", "SELECT count(*) FROM runs"), ("optuna", "SELECT count(*) FROM trials")):
        with psycopg.connect(host="127.0.0.1", port=pg["port"], user=cluster.PG_USER, password=pg["password"],
                              dbname=db) as conn, conn.cursor() as cursor:
            cursor.execute(query)
            counts[db] = cursor.fetchone()[0]
    return counts


@pytest.mark.slow
@pytest.mark.cluster
def test_study_runs_on_both_worker_nodes_and_records_in_postgres(study_on_cluster):
    out = study_on_cluster
    assert out["second_status"] == "SUCCEEDED", out["second_logs"]
    nodes = out["nodes_at_start"]
    first_node = {tid: rows[0]["node_id"] for tid, rows in out["results"].items()}
    assert {nodes["w1"]["node_id"], nodes["w2"]["node_id"]} <= set(first_node.values()), first_node
    assert nodes["head"]["node_id"] not in first_node.values(), "the head (0 CPUs) must not train"
    # Optuna storage and MLflow backend are the PostgreSQL databases.
    assert out["state"]["storage_uri"].startswith("postgresql://")
    assert out["postgres"]["optuna"] == len(out["trials"]) > 0
    assert out["postgres"]["mlflow"] >= 1
    mlflow = out["mlflow"]
    if mlflow["children"] or mlflow["experiment"] is not None:
        # One child run per trial, tagged with the Tune trial that ran it (the last one, for a trial
        # resumed after the driver stopped) and the node that Tune trial started on.
        assert out["postgres"]["mlflow"] == len(mlflow["children"]) + 1  # + the study's parent run
        tagged = {c["tags"]["tune_trial_id"]: c["tags"].get("node_id") for c in mlflow["children"]}
        assert set(tagged) <= set(first_node), (sorted(tagged), sorted(first_node))
        for tid, node in tagged.items():
            assert node == first_node[tid], (tid, tagged)
        # The Tune trials no run names any more are the ones the stop interrupted, later resumed.
        interruptions = sum(int(t.user_attrs.get("interruptions", 0)) for t in out["trials"])
        assert len(set(first_node) - set(tagged)) <= interruptions
        assert nodes["w1"]["node_id"] in tagged.values()  # the trial that lost w1 finished under its first Tune trial
    else:
        pytest.fail("no MLflow experiment for the study: is lorsp.tracking recording (tune_callbacks)?")


@pytest.mark.slow
@pytest.mark.cluster
def test_trial_drivers_run_on_the_head(study_on_cluster):
    """A trial's driver (Tune's function actor) and its Ray Train controller live on the head, so losing
    a worker node takes only training workers, which Ray Train restarts elsewhere."""
    out = study_on_cluster
    head = out["nodes_at_start"]["head"]["node_id"]
    drivers = [a for a in out["actors_at_kill"] if a["class_name"] in ("ImplicitFunc", "TrainController")]
    workers = [a for a in out["actors_at_kill"] if a["class_name"] == "RayTrainWorker"]
    assert drivers and workers
    assert {a["node_id"] for a in drivers} == {head}, [(a["class_name"], a["node_id"][:8]) for a in drivers]
    assert head not in {a["node_id"] for a in workers}


@pytest.mark.slow
@pytest.mark.cluster
def test_lost_node_trial_resumes_from_its_checkpoint(study_on_cluster):
    out = study_on_cluster
    w1 = out["nodes_at_start"]["w1"]["node_id"]
    rows = out["results"][out["victim"]]
    epochs = [int(r["epoch"]) for r in rows]
    assert epochs == list(range(1, len(epochs) + 1)), f"epochs must continue, never restart: {epochs}"
    assert epochs[-1] == EPOCHS and rows[-1]["finished"] == 1.0
    on_w1 = [r for r in rows if r["node_id"] == w1]
    after = [r for r in rows if r["node_id"] != w1]
    assert on_w1 and after, [(r["epoch"], r["node_id"][:8]) for r in rows]
    assert rows.index(after[0]) == len(on_w1), "once w1 is gone, no result comes from it"
    # Resumed from the checkpoint of its last epoch on w1, not from zero.
    assert int(after[0]["epoch"]) == int(on_w1[-1]["epoch"]) + 1 > 1
    assert int(out["killed_after_epoch"]) >= 1
    (trial,) = [t for t in out["trials"] if t.user_attrs.get("tune_trial_id") == out["victim"]]
    assert trial.state.name == "COMPLETE" and trial.user_attrs["epochs_done"] == EPOCHS  # COMPLETE = full budget


@pytest.mark.slow
@pytest.mark.cluster
def test_stopped_driver_resumes_and_nothing_is_lost_or_recorded_twice(study_on_cluster):
    """`ray job stop` mid-study, then the same submit line with --resume: every trial number ends
    COMPLETE exactly once, the interrupted ones continued (from their checkpoint), nothing is left
    RUNNING or WAITING in Optuna or RUNNING in MLflow, and MLflow holds one child run per trial."""
    out = study_on_cluster
    assert out["stopped_status"] == "STOPPED"
    assert out["second_status"] == "SUCCEEDED", out["second_logs"]
    trials = out["trials"]
    table = [(t.number, t.state.name, t.user_attrs.get("interruptions")) for t in trials]
    assert sorted(t.number for t in trials) == list(range(out["total"])), table
    assert all(t.state.name == "COMPLETE" for t in trials), table  # nothing RUNNING, WAITING or FAIL left
    # Every trial the stop left unfinished was resumed under its own number, and only those were.
    unfinished = out["unfinished_at_stop"]
    assert any(epoch >= 1 for _, epoch in unfinished.values()), f"no checkpointed trial was interrupted: {unfinished}"
    # `ray job stop` let the driver put its trials back in the queue itself (cluster/local_cluster.py's
    # JOB_STOP_ENV) rather than leave them RUNNING for --resume to recover.
    assert {st for st, _ in unfinished.values()} == {"WAITING"}, unfinished
    resumed = {t.number for t in trials if int(t.user_attrs.get("interruptions", 0)) >= 1}
    assert resumed == set(unfinished), (resumed, unfinished)
    # A resumed trial continues after the epoch of its last checkpoint, never from epoch 1 again.
    for t in trials:
        if t.number in unfinished:
            rows = out["results"].get(t.user_attrs["tune_trial_id"], [])
            _, checkpointed = unfinished[t.number]
            assert rows and int(rows[0]["epoch"]) == checkpointed + 1, (t.number, unfinished[t.number],
                                                                       [r["epoch"] for r in rows])
            assert int(rows[-1]["epoch"]) == EPOCHS and t.user_attrs["epochs_done"] == EPOCHS
    # Trials finished before the driver stopped are still there, unchanged.
    after = {t.number: t.values for t in trials}
    for number, values in out["complete_before_resume"].items():
        assert after[number] == values
    ids = [t.user_attrs.get("tune_trial_id") for t in trials if t.user_attrs.get("tune_trial_id")]
    assert len(ids) == len(set(ids)), "a Tune trial recorded in two Optuna trials"
    for tid, rows in out["results"].items():  # every epoch reported once
        epochs = [int(r["epoch"]) for r in rows]
        assert len(epochs) == len(set(epochs)), (tid, epochs)
    children = out["mlflow"]["children"]
    numbers = [c["tags"].get("optuna_trial") for c in children]
    assert sorted(numbers, key=int) == [str(n) for n in range(out["total"])], f"one MLflow run per trial: {numbers}"
    assert [c["status"] for c in children if c["status"] != "FINISHED"] == [], "an MLflow run left open"
    for child in children:
        assert len(child["val_acc_steps"]) == len(set(child["val_acc_steps"])), child["tags"].get("optuna_trial")
        if child["tags"].get("resumed") == "true":  # reopened, not duplicated, when its trial resumed
            assert int(child["tags"]["optuna_trial"]) in unfinished, child["tags"]


@pytest.mark.slow
@pytest.mark.cluster
def test_the_cluster_brings_its_own_token(study_on_cluster):
    """Token auth is on, with the token `up` wrote beside the cluster's state (not in HOME, empty here)."""
    out = study_on_cluster
    assert out["token"] == (True, 0o600)
    assert out["auth"] == {"without": 401, "with": 200}  # the cluster's own token is the one its head checks
    assert not out["home_token"], "the cluster used its own token, not one made in HOME"


@pytest.mark.slow
@pytest.mark.cluster
def test_down_leaves_no_process_of_the_cluster(study_on_cluster):
    out = study_on_cluster
    assert out["status_report"]["ok"], out["status_report"]
    assert out["left_running"] == []
