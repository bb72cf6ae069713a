"""`cluster/local.sh up|status|down`: a multi-node Ray cluster with its services, on one machine.

Deployment tooling, not part of the `lorsp` library: it lives with the other deployments in `cluster/`
and runs as a script (`python cluster/local_cluster.py`, which `local.sh` calls with the repository's
Python). It uses lorsp only for what the library itself needs too: `lorsp.ports`,
`lorsp.mlflow_server` and `lorsp.children` (SIGTERM and SIGHUP stop a command as Ctrl-C does: an
`up` cut short by any of them takes down what it had started).

What `up` starts, all under one state folder (default `./lorsp-cluster/`):

* a Ray **head** node (no CPUs by default: it hosts the dashboard, the job drivers and the trial
  drivers, never a training worker) and N Ray **worker** nodes. Each node is a separate `ray start`:
  its own raylet, object store, temp dir, node id and node name (`head`, `w1`, `w2`, ...), so Ray
  schedules across them exactly as across machines, and losing one (`kill-node w1`) is a real node loss;
* a private **PostgreSQL** instance (`initdb` / `pg_ctl` on a data folder in the state folder, run as
  the `postgres` user when invoked as root) holding two databases: `mlflow` (the MLflow backend)
  and `optuna` (the Optuna study storage);
* an **MLflow tracking server** on 127.0.0.1 backed by that PostgreSQL, serving artifacts from a
  folder in the state folder.

Token auth is on, with the cluster's own token in the state folder (`auth_token`), passed to every
node, job and client as RAY_AUTH_TOKEN_PATH; the dashboard is reached through Ray's own clients
(`JobSubmissionClient`, the state API's `StateApiClient`) given that token.

Every process it starts carries `LORSP_CLUSTER_ID=<id>` (and `LORSP_CLUSTER_NODE=<node>`) in its
environment, inherited by everything Ray forks from it (raylets, workers, job drivers). `down` and
`kill-node` find their processes by that mark, never by a process name, so Ray clusters of other
users on the same machine are left alone, and `down` checks that nothing of the cluster is left.

The data (PostgreSQL, artifacts, Ray results and checkpoints under `runs/`) outlives `down`: a later
`up` on the same state folder continues, and a study continues with `lorsp.tune --resume`.
`down --purge` removes it all. Ports are picked free at each `up`, so read them from `status`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorsp.children import Stopped, stop_signals
from lorsp.mlflow_server import answers, server_command, wait_until_up
from lorsp.ports import free_port

if TYPE_CHECKING:  # Ray is imported where it is used: `--help` and `down` answer without it
    from ray.job_submission import JobSubmissionClient

DEFAULT_STATE = "lorsp-cluster"
STATE_FILE = "cluster.json"
TOKEN_FILE = "auth_token"
ID_VAR = "LORSP_CLUSTER_ID"
NODE_VAR = "LORSP_CLUSTER_NODE"
PG_USER = "lorsp"
PG_DATABASES = ("mlflow", "optuna")
DEFAULT_SPACE = "search_spaces/quickstart.yaml"

# Faster node-failure detection than Ray's defaults: the GCS pings every raylet each second and declares
# a node dead after 8 failed pings in a row. A killed raylet refuses at once, so its node is dead
# within ~10 s and its trials move on; a raylet that is merely slow (a loaded laptop) gets 3 s a ping.
HEALTH_CHECK_ENV = {
    "RAY_health_check_initial_delay_ms": "2000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "3000",
    "RAY_health_check_failure_threshold": "8",
}
# `ray job stop` sends the study driver SIGTERM and, by Ray's default, SIGKILL 3 s later: too soon for
# lorsp.tune to stop its trials, put them back in the Optuna queue and close their MLflow runs. The
# head's job supervisor waits this long instead; a driver that ends sooner is not kept waiting.
JOB_STOP_ENV = {"RAY_JOB_STOP_WAIT_TIME_S": "60"}


class ClusterError(RuntimeError):
    """Something the user can act on, phrased as one line."""


# ---------------------------------------------------------------------------------------- state
def state_dir(path: str | os.PathLike[str] | None = None) -> Path:
    return Path(path or os.environ.get("LORSP_CLUSTER_STATE") or DEFAULT_STATE).expanduser().resolve()


def load_state(folder: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    file = state_dir(folder) / STATE_FILE
    if not file.is_file():
        return None
    return json.loads(file.read_text())


def _save_state(state: dict[str, Any]) -> None:
    file = Path(state["state_dir"]) / STATE_FILE
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.chmod(0o600)  # holds the PostgreSQL password
    tmp.replace(file)


def token_file(state: dict[str, Any]) -> Path:
    """The cluster's own Ray auth token, in its state folder.

    Every node, job and client of this cluster reads it (RAY_AUTH_TOKEN_PATH) instead of
    ~/.ray/auth_token: `ray start` refuses token auth without a token and does not create one, so a
    cluster that relied on the user's home folder failed on a fresh machine (CI, an empty HOME), and
    it never touches a token the user keeps for other clusters. It outlives `down` (a shell that
    exported it stays valid for the next `up`) and goes with `down --purge`.
    """
    return Path(state["state_dir"]) / TOKEN_FILE


def _ensure_token(root: Path) -> None:
    """Create the cluster's token once, readable by its owner only (256 random bits, as Ray's own)."""
    file = root / TOKEN_FILE
    if file.is_file() and file.read_text().strip():
        return
    tmp = file.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(secrets.token_hex(32))
    tmp.replace(file)


def client_env(state: dict[str, Any]) -> dict[str, str]:
    """What a Ray client of this cluster (`ray job submit`, `ray job stop`, a job's `ray.init`) needs."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file(state))}


def auth_headers(state: dict[str, Any]) -> dict[str, str]:
    """The header that Ray's HTTP clients (jobs, state API) send to this cluster's dashboard.

    Given to them explicitly: left alone they take the token of whatever Ray this process saw first
    (a process-wide cache), which is not this cluster's when a test or a shell talks to several.
    """
    return {"Authorization": f"Bearer {token_file(state).read_text().strip()}"}


def _ray_temp_root(folder: Path) -> Path:
    """Ray's per-node temp dirs: short, because Ray's unix socket paths must stay under 107 bytes."""
    digest = hashlib.sha1(str(folder).encode()).hexdigest()[:8]
    return Path("/tmp") / f"lorsp-ray-{digest}"


# ---------------------------------------------------------------------------------------- processes
def _proc_env(pid: int) -> list[bytes] | None:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None


def _alive(pid: int) -> bool:
    """True for a running process; a zombie (already dead, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] not in ("Z", "X")


def _parents() -> dict[int, int]:
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            out[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return out


def cluster_pids(cluster_id: str, node: str | None = None) -> list[int]:
    """Live processes of this cluster (of one node of it): marked in their environment, or forked by one
    that is (PostgreSQL's backends overwrite their environment with their process title)."""
    mark = f"{ID_VAR}={cluster_id}".encode()
    node_mark = f"{NODE_VAR}={node}".encode() if node else None
    me = os.getpid()
    marked = set()
    parents = _parents()
    for pid in parents:
        env = _proc_env(pid)
        if env and mark in env and (node_mark is None or node_mark in env):
            marked.add(pid)
    found = set(marked)
    for pid in parents:  # descendants of a marked process
        chain, p = [], pid
        while p > 1 and p not in found and len(chain) < 64:
            chain.append(p)
            p = parents.get(p, 0)
        if p in found:
            found.update(chain)
    return sorted(p for p in found if p != me and _alive(p))


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    left = [p for p in pids if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [p for p in left if _alive(p)]
    return left


def stop_processes(cluster_id: str, node: str | None = None, grace: float = 5.0, hard: bool = False) -> int:
    """SIGTERM (SIGKILL when `hard`) every process of the cluster / node, then SIGKILL what is left.

    After the grace period, marked processes are SIGKILLed until none is found (a dying raylet may
    still fork a worker); returns how many processes were signalled.
    """
    pids = cluster_pids(cluster_id, node)
    total = len(pids)
    _signal_all(pids, signal.SIGKILL if hard else signal.SIGTERM)
    _wait_gone(pids, 2.0 if hard else grace)
    for _ in range(10):
        left = cluster_pids(cluster_id, node)
        if not left:
            return total
        total += len(set(left) - set(pids))
        pids = sorted(set(pids) | set(left))
        _signal_all(left, signal.SIGKILL)
        _wait_gone(left, 5.0)
    left = cluster_pids(cluster_id, node)
    if left:
        raise ClusterError(f"processes {left} of the cluster survived SIGKILL; check them with `ps -fp {left[0]}`")
    return total


def _tail(file: Path, lines: int = 15) -> str:
    try:
        return "\n".join(file.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _base_env(state: dict[str, Any], node: str) -> dict[str, str]:
    # RAY_AUTH_TOKEN would win over the cluster's token file: a token exported for another cluster.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", ID_VAR, NODE_VAR)}
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")  # `python` in a job = this interpreter
    env.update(client_env(state))  # token auth, always, with the cluster's own token
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray's own helpers (Train's placement-group cleaner, the state API) find "the" cluster on their
    # own and fail when another Ray runs on this machine: point them at ours.
    env["RAY_API_SERVER_ADDRESS"] = state["dashboard_url"]
    env[ID_VAR] = state["id"]
    env[NODE_VAR] = node
    # Temporary files of the cluster's processes (e.g. a checkpoint being written when its node is
    # killed) stay under the cluster's temp root, which `down` empties.
    tmp = Path(state["ray_temp"]) / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    tmp.chmod(0o1777)  # PostgreSQL (as `postgres`) writes here too
    env["TMPDIR"] = str(tmp)
    return env


# ---------------------------------------------------------------------------------------- PostgreSQL
def pg_bindir() -> Path | None:
    """The folder of initdb/pg_ctl: from PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return versions[-1].parent if versions else None


def _pg_owner() -> tuple[int, int] | None:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` user (Debian creates it)."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterError("running as root and there is no `postgres` user for PostgreSQL to run as; "
                           "install Debian's postgresql package or `useradd -r postgres`") from None
    return user.pw_uid, user.pw_gid


def _pg_cmd(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if _pg_owner() else cmd


def _pg_init(state: dict[str, Any], env: dict[str, str]) -> None:
    bindir = Path(state["postgres"]["bindir"])
    root = Path(state["postgres"]["root"])
    data = root / "data"
    if (data / "PG_VERSION").is_file():
        return
    root.mkdir(parents=True, exist_ok=True)
    owner = _pg_owner()
    if owner:
        os.chown(root, *owner)
        probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(root)],
                               capture_output=True, check=False)
        if probe.returncode:
            raise ClusterError(f"the postgres user cannot write {root}: a parent folder is not traversable; "
                               "choose a --state folder under a world-readable path (e.g. /srv or /tmp)")
    root.chmod(0o700)
    pwfile = root / "initdb.pw"
    pwfile.write_text(state["postgres"]["password"] + "\n")
    pwfile.chmod(0o600)
    if owner:
        os.chown(pwfile, *owner)
    try:
        out = subprocess.run(_pg_cmd([str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=scram-sha-256",
                                      f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C"]),
                             env=env, capture_output=True, text=True, check=False)
    finally:
        pwfile.unlink(missing_ok=True)
    if out.returncode:
        raise ClusterError(f"initdb failed: {(out.stderr or out.stdout).strip()[-500:]}")
    with open(data / "postgresql.conf", "a") as conf:
        # TCP on loopback only; no unix socket (its path would be too long inside a deep state folder).
        conf.write("\n# cluster/local.sh\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n")


def _pg_start(state: dict[str, Any], env: dict[str, str]) -> None:
    pg = state["postgres"]
    bindir, root = Path(pg["bindir"]), Path(pg["root"])
    out = subprocess.run(_pg_cmd([str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "postgres.log"),
                                  "-o", f"-p {pg['port']}", "-w", "-t", "60", "start"]),
                         env=env, capture_output=True, text=True, start_new_session=True, check=False)
    if out.returncode:
        raise ClusterError(f"PostgreSQL did not start: {(out.stderr or out.stdout).strip()[-300:]}\n"
                           f"{_tail(root / 'postgres.log')}")
    client_env = {**env, "PGPASSWORD": pg["password"]}
    for db in PG_DATABASES:
        q = subprocess.run([str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(pg["port"]), "-U", PG_USER,
                            "-d", "postgres", "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{db}'"],
                           env=client_env, capture_output=True, text=True, check=False)
        if q.returncode:
            raise ClusterError(f"cannot query PostgreSQL: {q.stderr.strip()}")
        if q.stdout.strip() != "1":
            c = subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(pg["port"]), "-U", PG_USER, db],
                               env=client_env, capture_output=True, text=True, check=False)
            if c.returncode:
                raise ClusterError(f"createdb {db} failed: {c.stderr.strip()}")


def _pg_stop(state: dict[str, Any]) -> None:
    pg = state.get("postgres")
    if not pg or not (Path(pg["root"]) / "data" / "postmaster.pid").exists():
        return
    subprocess.run(_pg_cmd([str(Path(pg["bindir"]) / "pg_ctl"), "-D", str(Path(pg["root"]) / "data"), "-m", "fast",
                            "-w", "-t", "30", "stop"]), capture_output=True, text=True, check=False)


def _pg_ready(state: dict[str, Any]) -> bool:
    pg = state["postgres"]
    out = subprocess.run([str(Path(pg["bindir"]) / "pg_isready"), "-h", "127.0.0.1", "-p", str(pg["port"]), "-q"],
                         check=False)
    return out.returncode == 0


def pg_uri(state: dict[str, Any], db: str) -> str:
    pg = state["postgres"]
    return f"postgresql://{PG_USER}:{pg['password']}@127.0.0.1:{pg['port']}/{db}"


# ---------------------------------------------------------------------------------------- MLflow
def _mlflow_start(state: dict[str, Any], env: dict[str, str]) -> subprocess.Popen:
    folder = Path(state["state_dir"])
    (folder / "artifacts").mkdir(exist_ok=True)
    cmd, env = server_command(pg_uri(state, "mlflow"), folder / "artifacts", state["ports"]["mlflow"], env=env)
    with open(folder / "logs" / "mlflow.log", "ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _wait_mlflow(state: dict[str, Any], proc: subprocess.Popen, timeout: float = 180.0) -> None:
    if not wait_until_up(state["tracking_uri"], proc, timeout):
        log = Path(state["state_dir"]) / "logs" / "mlflow.log"
        raise ClusterError(f"the MLflow server did not come up on {state['tracking_uri']}; see {log}:\n{_tail(log)}")


# ---------------------------------------------------------------------------------------- Ray nodes
def _ray_bin() -> str:
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


def _start_node(state: dict[str, Any], name: str, *, head: bool, cpus: float, gpus: int, object_store_mb: int,
                env_extra: dict[str, str] | None = None) -> subprocess.Popen:
    folder = Path(state["state_dir"])
    ports = state["ports"]
    cmd = [_ray_bin(), "start", "--temp-dir", str(Path(state["ray_temp"]) / name),
           "--num-cpus", f"{cpus:g}", "--num-gpus", str(gpus), "--object-store-memory", str(object_store_mb * 1024**2),
           # Workers bind ports the OS picks: other Ray clusters on this machine use 10002-19999 too.
           "--min-worker-port", "0", "--max-worker-port", "0",
           # Every agent port fixed up front (free now): Ray's defaults collide between nodes of one
           # host, and with port 0 the raylet waits a fixed ~15 s for the agents to report theirs,
           # which a loaded machine can miss (the raylet then aborts).
           "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
           "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
           "--node-name", name, "--resources", json.dumps({f"lorsp_node_{name}": 1}), "--disable-usage-stats"]
    if head:
        cmd += ["--head", "--port", str(ports["gcs"]), "--dashboard-host", "127.0.0.1", "--dashboard-port",
                str(ports["dashboard"]), "--ray-client-server-port", str(ports["client"]),
                "--include-dashboard", "true"]
    else:
        cmd += ["--address", f"127.0.0.1:{ports['gcs']}"]
    env = {**_base_env(state, name), **(env_extra or {})}
    with open(folder / "logs" / f"ray-start-{name}.log", "ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _finish_node(state: dict[str, Any], name: str, proc: subprocess.Popen, timeout: float = 180.0) -> dict[str, Any]:
    log = Path(state["state_dir"]) / "logs" / f"ray-start-{name}.log"
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise ClusterError(f"`ray start` for node {name} hung for {timeout:.0f}s; see {log}") from None
    if rc:
        raise ClusterError(f"`ray start` for node {name} failed (exit {rc}); see {log}:\n{_tail(log)}")
    node_id = None
    for pid in cluster_pids(state["id"], name):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"/raylet"):
            node_id = next((a.split(b"=", 1)[1].decode() for a in args if a.startswith(b"--node_id=")), None)
    if node_id is None:
        raise ClusterError(f"node {name} started but its raylet is not running; see {log}")
    if "ip" not in state:
        found = re.findall(r"ray start --address='([\d.]+):\d+'", log.read_text(errors="replace"))
        state["ip"] = found[-1] if found else "127.0.0.1"  # the address Ray registered this host under
    return {"node_id": node_id, "alive": True}


def _retry_node(state: dict[str, Any], name: str, **shape: Any) -> dict[str, Any]:
    """A worker that failed to start (a port taken meanwhile, an agent too slow on a loaded machine):
    clear what it left and start it once more, on fresh ports."""
    stop_processes(state["id"], name, hard=True)
    shutil.rmtree(Path(state["ray_temp"]) / name, ignore_errors=True)
    return _finish_node(state, name, _start_node(state, name, head=False, **shape))


# ---------------------------------------------------------------------------------------- verbs
def up(folder: str | os.PathLike[str] | None = None, *, workers: int = 2, head_cpus: float = 0,
       worker_cpus: float = 1, worker_gpus: int = 0, object_store_mb: int = 512, services: bool = True,
       quiet: bool = False) -> dict[str, Any]:
    """Start the cluster (or report the one already running on this state folder); returns its state."""
    root = state_dir(folder)
    old = load_state(root)
    if old and cluster_pids(old["id"]):
        if not quiet:
            print(f"already up (state {root}); `down` first to change its shape\n")
            print(describe(old))
        return old
    if services and pg_bindir() is None:
        raise ClusterError("PostgreSQL is not installed (no initdb): `apt-get install -y postgresql`, "
                           "or pass --no-services for a Ray-only cluster")
    root.mkdir(parents=True, exist_ok=True)
    (root / ".gitignore").write_text("# state of cluster/local.sh: never commit, never upload\n*\n")
    (root / "logs").mkdir(exist_ok=True)
    (root / "runs").mkdir(exist_ok=True)
    _ensure_token(root)
    state: dict[str, Any] = {
        "state_dir": str(root), "id": (old or {}).get("id") or secrets.token_hex(6),
        "ray_temp": str(_ray_temp_root(root)), "running": True, "services": services,
        "ports": {"gcs": free_port(), "dashboard": free_port(), "client": free_port(), "mlflow": free_port()},
        "shape": {"head_cpus": head_cpus, "worker_cpus": worker_cpus, "worker_gpus": worker_gpus,
                  "object_store_mb": object_store_mb},
        "nodes": {}, "runs": str(root / "runs"),
    }
    if services:
        state["postgres"] = {"bindir": str(pg_bindir()), "root": str(root / "postgres"), "port": free_port(),
                             "password": ((old or {}).get("postgres") or {}).get("password") or secrets.token_hex(12)}
        state["tracking_uri"] = f"http://127.0.0.1:{state['ports']['mlflow']}"
        state["storage_uri"] = pg_uri(state, "optuna")
    state["dashboard_url"] = f"http://127.0.0.1:{state['ports']['dashboard']}"
    Path(state["ray_temp"]).mkdir(parents=True, exist_ok=True)
    link = root / "ray-logs"
    if not link.is_symlink():
        link.symlink_to(state["ray_temp"])
    _save_state(state)  # from here on `down` can clean up whatever this call started
    try:
        mlflow = None
        if services:
            env = _base_env(state, "services")
            env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no GenAI job runners: 7 fewer processes
            _pg_init(state, env)
            _pg_start(state, env)
            mlflow = _mlflow_start(state, env)  # its schema migrations run while Ray starts
        head = _start_node(state, "head", head=True, cpus=head_cpus, gpus=0, object_store_mb=object_store_mb,
                           env_extra={**HEALTH_CHECK_ENV, **JOB_STOP_ENV})
        state["nodes"]["head"] = {**_finish_node(state, "head", head), "cpus": head_cpus, "gpus": 0}
        state["ray_address"] = f"{state['ip']}:{state['ports']['gcs']}"
        starting = {f"w{i}": _start_node(state, f"w{i}", head=False, cpus=worker_cpus, gpus=worker_gpus,
                                         object_store_mb=object_store_mb) for i in range(1, workers + 1)}
        for name, proc in starting.items():
            try:
                node = _finish_node(state, name, proc)
            except ClusterError:
                node = _retry_node(state, name, cpus=worker_cpus, gpus=worker_gpus, object_store_mb=object_store_mb)
            state["nodes"][name] = {**node, "cpus": worker_cpus, "gpus": worker_gpus}
        if mlflow is not None:
            _wait_mlflow(state, mlflow)
        _save_state(state)
    except BaseException:
        down(root, quiet=True)
        raise
    if not quiet:
        print(describe(state))
    return state


def add_node(folder: str | os.PathLike[str] | None = None, *, cpus: float | None = None, gpus: int | None = None,
             quiet: bool = False) -> str:
    """Start one more worker node (a replacement after `kill-node`, or to scale out); returns its name."""
    state = _require_up(folder)
    n = 1
    while f"w{n}" in state["nodes"]:
        n += 1
    name = f"w{n}"
    shape = state["shape"]
    cpus = shape["worker_cpus"] if cpus is None else cpus
    gpus = shape["worker_gpus"] if gpus is None else gpus
    proc = _start_node(state, name, head=False, cpus=cpus, gpus=gpus, object_store_mb=shape["object_store_mb"])
    try:
        node = _finish_node(state, name, proc)
    except ClusterError:
        node = _retry_node(state, name, cpus=cpus, gpus=gpus, object_store_mb=shape["object_store_mb"])
    state["nodes"][name] = {**node, "cpus": cpus, "gpus": gpus}
    _save_state(state)
    if not quiet:
        print(f"node {name} joined ({cpus:g} CPU, {gpus} GPU): {state['nodes'][name]['node_id']}")
    return name


def kill_node(folder: str | os.PathLike[str] | None, name: str, *, graceful: bool = False, quiet: bool = False) -> int:
    """Lose a worker node: SIGKILL its raylet, object store, agents and workers (SIGTERM with `graceful`)."""
    state = _require_up(folder)
    if name == "head":
        raise ClusterError("the head node holds the GCS and every driver: `down` stops it")
    if name not in state["nodes"]:
        raise ClusterError(f"no node {name}; nodes are {', '.join(state['nodes'])}")
    count = stop_processes(state["id"], name, hard=not graceful)
    state["nodes"][name]["alive"] = False
    _save_state(state)
    if not quiet:
        print(f"node {name} {'stopped' if graceful else 'killed'} ({count} processes)")
    return count


def down(folder: str | os.PathLike[str] | None = None, *, purge: bool = False, quiet: bool = False) -> None:
    """Stop everything the cluster started and check that none of it is still running."""
    root = state_dir(folder)
    state = load_state(root)
    if state is None:
        if not quiet:
            print(f"nothing to stop: no cluster state in {root}")
        return
    _pg_stop(state)
    count = stop_processes(state["id"])
    if cluster_pids(state["id"]):
        raise ClusterError("some processes of the cluster are still running")
    state["running"] = False
    for node in state.get("nodes", {}).values():
        node["alive"] = False
    shutil.rmtree(Path(state["ray_temp"]) / "tmp", ignore_errors=True)
    if purge:
        shutil.rmtree(state["ray_temp"], ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    else:
        _save_state(state)
    if not quiet:
        kept = "state removed" if purge else f"data kept in {root} (`down --purge` removes it)"
        print(f"cluster stopped: {count} processes ended, none left running; {kept}")


def status(folder: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Liveness of every part; `ok` is True when all of them answer."""
    root = state_dir(folder)
    state = load_state(root)
    if state is None or not state.get("running"):
        return {"ok": False, "up": False, "state_dir": str(root)}
    report: dict[str, Any] = {"up": True, "state_dir": str(root), "processes": len(cluster_pids(state["id"])),
                              "nodes": {}}
    alive_ids = _ray_alive_node_ids(state)
    for name, node in state["nodes"].items():
        report["nodes"][name] = {"node_id": node["node_id"], "processes": len(cluster_pids(state["id"], name)),
                                 "ray_alive": node["node_id"] in alive_ids if alive_ids is not None else None,
                                 "cpus": node["cpus"], "gpus": node["gpus"]}
    report["dashboard"] = alive_ids is not None
    try:
        report["jobs"] = [j for j in job_client(state).list_jobs() if j.status in ("PENDING", "RUNNING")]
    except dashboard_errors():
        report["jobs"] = []
    if state.get("services"):
        report["postgres"] = _pg_ready(state)
        report["mlflow"] = answers(state["tracking_uri"])
    ok = report["processes"] > 0 and report.get("postgres", True) and report.get("mlflow", True)
    for name, n in report["nodes"].items():
        if state["nodes"][name].get("alive", True):  # a node lost on purpose (`kill-node`) does not count
            ok = ok and n["processes"] > 0 and n["ray_alive"] is not False
    report["ok"] = bool(ok)
    return report


# ---------------------------------------------------------------------------------------- Ray's clients
@contextlib.contextmanager
def _given_address_only() -> Iterator[None]:
    """Ray's HTTP clients take RAY_API_SERVER_ADDRESS or RAY_ADDRESS over the address they are given
    (and resolve it once, when built): a shell that `eval`ed another cluster's `env` must not turn
    `status --state X` into a report on that other cluster."""
    hidden = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(hidden)


def job_client(state: dict[str, Any]) -> JobSubmissionClient:
    """Ray's job client on this cluster's dashboard, with its token: status, logs, stop, list of jobs."""
    from ray.job_submission import JobSubmissionClient

    with _given_address_only():
        return JobSubmissionClient(state["dashboard_url"], headers=auth_headers(state))


def list_state(state: dict[str, Any], resource: str, filters: list[tuple[str, str, Any]] | None = None,
               timeout: int = 30) -> list[Any]:
    """Ray's state API on this cluster: what `ray.util.state.list_nodes`/`list_actors` return, for
    `resource` "nodes", "actors", ...; those functions take no headers, so their client is used directly."""
    from ray.util.state import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    with _given_address_only():
        client = StateApiClient(state["dashboard_url"], headers=auth_headers(state))
    options = ListApiOptions(limit=10_000, timeout=timeout, filters=filters or [])
    return client.list(StateResource(resource), options=options, raise_on_missing_output=False)


def dashboard_errors() -> tuple[type[BaseException], ...]:
    """What Ray's clients raise when the dashboard does not answer (yet), fails a request or refuses it."""
    from ray.exceptions import AuthenticationError
    from ray.util.state.exception import RayStateApiException

    # OSError: refused connections (ConnectionError) and every `requests` failure; RuntimeError: an
    # HTTP error status from the job API.
    return (OSError, RuntimeError, AuthenticationError, RayStateApiException)


def _ray_alive_node_ids(state: dict[str, Any]) -> set[str] | None:
    """Node ids the cluster lists as ALIVE; None when the dashboard does not answer."""
    try:
        return {n.node_id for n in list_state(state, "nodes", [("state", "=", "ALIVE")], timeout=10)}
    except dashboard_errors():
        return None


def _require_up(folder: str | os.PathLike[str] | None) -> dict[str, Any]:
    state = load_state(folder)
    if state is None or not state.get("running"):
        raise ClusterError(f"no running cluster in {state_dir(folder)}; start one with `up`")
    return state


def submit_command(state: dict[str, Any], space: str = DEFAULT_SPACE, extra: list[str] | None = None,
                   working_dir: str = ".") -> list[str]:
    """The `ray job submit` command line that runs a study on this cluster, as a list of arguments."""
    cmd = ["ray", "job", "submit", "--address", state["dashboard_url"], "--working-dir", working_dir, "--",
           "python", "-m", "lorsp.tune", "--space", space]
    if state.get("services"):
        cmd += ["--tracking-uri", state["tracking_uri"], "--storage", state["storage_uri"]]
    # Ray results and checkpoints in a folder every node reaches (on one machine: the state folder).
    cmd += ["--set", f"tracking.root={state['runs']}", *(extra or [])]
    return cmd


def submit_line(state: dict[str, Any], space: str = DEFAULT_SPACE, extra: list[str] | None = None) -> str:
    """The shell line that submits a study: `ray job submit` with the cluster's token in its environment."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in client_env(state).items())
    return f"{env} {shlex.join(submit_command(state, space, extra))}"


def describe(state: dict[str, Any]) -> str:
    nodes = " + ".join(f"{name} ({n['cpus']:g} CPU" + (f", {n['gpus']} GPU)" if n["gpus"] else ")")
                       for name, n in state["nodes"].items())
    lines = [
        f"lorsp local cluster up (state {state['state_dir']})",
        f"  nodes          {nodes}",
        f"  RAY_ADDRESS    {state['ray_address']}",
        f"  dashboard      {state['dashboard_url']}   (Ray dashboard; jobs are submitted here)",
    ]
    if state.get("services"):
        lines += [
            f"  tracking URI   {state['tracking_uri']}   (MLflow UI and API)",
            f"  storage URI    {state['storage_uri']}",
        ]
    lines += [
        f"  runs folder    {state['runs']}   (Ray results and trial checkpoints)",
        "",
        "run the quickstart study on it (from the repository root):",
        "  " + submit_line(state),
        "",
        "watch it: the dashboard (Jobs, Cluster) and the MLflow UI above; `cluster/local.sh status`.",
        "continue an interrupted study: the same command with --resume.",
        "stop: cluster/local.sh down" + (f" --state {state['state_dir']}" if _non_default(state) else ""),
    ]
    return "\n".join(lines)


def _non_default(state: dict[str, Any]) -> bool:
    return Path(state["state_dir"]) != state_dir(None)


def env_lines(state: dict[str, Any]) -> str:
    """Shell lines that point Ray's CLI and lorsp at this cluster (`eval "$(cluster/local.sh env)"`)."""
    out = {**client_env(state), "RAY_ADDRESS": state["ray_address"], "RAY_API_SERVER_ADDRESS": state["dashboard_url"]}
    if state.get("services"):
        out["MLFLOW_TRACKING_URI"] = state["tracking_uri"]
        out["LORSP_STORAGE"] = state["storage_uri"]
    # A RAY_AUTH_TOKEN exported for another cluster would win over this cluster's token file.
    return "\n".join(["unset RAY_AUTH_TOKEN", *(f"export {k}={shlex.quote(v)}" for k, v in out.items())])


# ---------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cluster/local.sh", description=__doc__.splitlines()[0])
    state_help = f"state folder (default: $LORSP_CLUSTER_STATE or ./{DEFAULT_STATE})"
    parser.add_argument("--state", help=state_help)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state", default=argparse.SUPPRESS, help=state_help)  # also after the verb
    sub = parser.add_subparsers(dest="verb", required=True)
    p_up = sub.add_parser("up", parents=[common],
                          help="start head + workers + PostgreSQL + MLflow; print how to submit a study")
    p_up.add_argument("--workers", type=int, default=2, help="worker nodes (default 2)")
    p_up.add_argument("--head-cpus", type=float, default=0, help="CPUs the head offers to tasks (default 0)")
    p_up.add_argument("--worker-cpus", type=float, default=1, help="CPUs per worker node (default 1)")
    p_up.add_argument("--worker-gpus", type=int, default=0, help="GPUs per worker node (default 0)")
    p_up.add_argument("--object-store-mb", type=int, default=512, help="object store per node in MiB (default 512)")
    p_up.add_argument("--no-services", action="store_true", help="Ray only: no PostgreSQL, no MLflow server")
    sub.add_parser("status", parents=[common], help="what is running; exit 0 when every part answers")
    p_down = sub.add_parser("down", parents=[common], help="stop everything; check that nothing is left running")
    p_down.add_argument("--purge", action="store_true",
                        help="also delete the state folder (databases, artifacts, runs)")
    p_add = sub.add_parser("add-node", parents=[common],
                           help="start one more worker node (scale out, or replace a lost one)")
    p_add.add_argument("--cpus", type=float)
    p_add.add_argument("--gpus", type=int)
    p_kill = sub.add_parser("kill-node", parents=[common],
                            help="lose a worker node (SIGKILL its raylet and workers) to try fault tolerance")
    p_kill.add_argument("name", help="w1, w2, ...")
    p_kill.add_argument("--graceful", action="store_true", help="SIGTERM instead: the node leaves cleanly")
    sub.add_parser("env", parents=[common], help="print export lines for RAY_ADDRESS etc. (use with eval)")
    p_cmd = sub.add_parser("submit-command", parents=[common],
                           help="print the `ray job submit` line of a study; extra arguments go to lorsp.tune")
    p_cmd.add_argument("--space", default=DEFAULT_SPACE)
    args, rest = parser.parse_known_args(argv)
    if rest and args.verb != "submit-command":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        with stop_signals():  # SIGTERM, SIGHUP as Ctrl-C: an `up` they cut short takes down what it started
            if args.verb == "up":
                up(args.state, workers=args.workers, head_cpus=args.head_cpus, worker_cpus=args.worker_cpus,
                   worker_gpus=args.worker_gpus, object_store_mb=args.object_store_mb,
                   services=not args.no_services)
            elif args.verb == "down":
                down(args.state, purge=args.purge)
            elif args.verb == "status":
                return _print_status(args.state)
            elif args.verb == "add-node":
                add_node(args.state, cpus=args.cpus, gpus=args.gpus)
            elif args.verb == "kill-node":
                kill_node(args.state, args.name, graceful=args.graceful)
            elif args.verb == "env":
                print(env_lines(_require_up(args.state)))
            elif args.verb == "submit-command":
                print(submit_line(_require_up(args.state), args.space, rest))
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Stopped as stop:
        return stop.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


def _print_status(folder: str | None) -> int:
    report = status(folder)
    if not report["up"]:
        print(f"down (state {report['state_dir']})")
        return 3
    state = _require_up(folder)
    print(describe(state).split("\n\n")[0])
    for name, n in report["nodes"].items():
        alive = {True: "alive", False: "DEAD", None: "unknown"}[n["ray_alive"]]
        lost = "" if state["nodes"][name].get("alive", True) else "  (killed with kill-node)"
        print(f"  node {name:<5} {alive:<7} {n['processes']:>3} processes  {n['node_id'][:16]}{lost}")
    parts = [f"dashboard {'answers' if report['dashboard'] else 'DOES NOT ANSWER'}"]
    if "postgres" in report:
        parts.append(f"PostgreSQL {'ready' if report['postgres'] else 'DOWN'}")
        parts.append(f"MLflow {'answers' if report['mlflow'] else 'DOES NOT ANSWER'}")
    print("  " + "; ".join(parts))
    for job in report.get("jobs", []):
        print(f"  job {job.submission_id}  {job.status.value}  {job.entrypoint[:90]}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
