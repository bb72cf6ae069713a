"""Credentials never leave the command line: no password in a console line, an MLflow run, the Optuna
study, a checkpoint, the Ray experiment folder or an export (:mod:`lorsp.uris`).

The first tests hold the redaction itself to many URI forms in milliseconds. The last one runs a real
study on a real PostgreSQL (the cluster tests' own private instance) with a password in both URIs,
interrupts it, resumes it with the command it printed, confirms and exports it, and then reads every
byte lorsp wrote or printed (console, both databases as dumped by pg_dump, the study folder with its
MLflow artifacts and Ray trial folders, the export): the password is nowhere.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import shlex
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from lorsp.config import ConfigError, StudyConfig
from lorsp.uris import MASK, hint, is_masked, redact, redact_arg, require_secret, scrub, secrets_of
from tests.conftest import QUICKSTART, REPO, wait_until

# ================================================================ the redaction, in milliseconds
SPECIAL = "p@ss/w:rd%"  # every character that must be percent-encoded in the password of a URI
ENCODED = urllib.parse.quote(SPECIAL, safe="")

REDACTED = [
    ("postgresql://lorsp:s3cret-pw@127.0.0.1:55432/optuna", "postgresql://lorsp:***@127.0.0.1:55432/optuna"),
    ("postgresql+psycopg://lorsp:s3cret-pw@db.example.org/optuna?sslmode=require",
     "postgresql+psycopg://lorsp:***@db.example.org/optuna?sslmode=require"),
    ("mysql+pymysql://lorsp:s3cret-pw@db:3306/mlflow?charset=utf8mb4",
     "mysql+pymysql://lorsp:***@db:3306/mlflow?charset=utf8mb4"),
    (f"postgresql://lorsp:{ENCODED}@127.0.0.1:5432/optuna", "postgresql://lorsp:***@127.0.0.1:5432/optuna"),
    (f"mysql+pymysql://lorsp:{ENCODED}@db/mlflow", "mysql+pymysql://lorsp:***@db/mlflow"),
    ("http://user:s3cret-pw@mlflow.example.org:5000", "http://user:***@mlflow.example.org:5000"),
    (f"https://user:{ENCODED}@mlflow.example.org/", "https://user:***@mlflow.example.org/"),
    ("ray://admin:s3cret-pw@head:10001", "ray://admin:***@head:10001"),
    ("postgresql://:s3cret-pw@db/optuna", "postgresql://:***@db/optuna"),  # a password without a user name
    # Written without percent-encoding, as people do: still hidden whole, whichever parser misreads it.
    ("postgresql://lorsp:pa@ss@db/optuna", "postgresql://lorsp:***@db/optuna"),
    ("postgresql://lorsp:pa/ss@db/optuna", "postgresql://lorsp:***@db/optuna"),
    # A password passed to the driver as a query parameter.
    ("postgresql://lorsp@db/optuna?password=s3cret-pw&sslmode=require",
     "postgresql://lorsp@db/optuna?password=***&sslmode=require"),
]
UNCHANGED = [
    "sqlite:////abs/lorsp-runs/optuna.db",
    "sqlite:///relative.db",
    "sqlite:////tmp/odd:name@folder/mlflow.db",  # ':' and '@' in a path are not a password
    "postgresql://lorsp@127.0.0.1:5432/optuna",  # the password comes from PGPASSWORD or ~/.pgpass
    "http://127.0.0.1:5000",
    "https://mlflow.example.org/path/a:b@c",
    "file:///tmp/mlartifacts",
    "databricks",
    "",
    None,
]


@pytest.mark.parametrize(("uri", "shown"), REDACTED)
def test_redact_hides_the_password_and_keeps_the_rest(uri, shown):
    assert redact(uri) == shown
    assert is_masked(shown) and not is_masked(uri)
    for secret in secrets_of(uri):
        if len(secret) > 2:  # the misread one-letter password of 'pa@ss' is part of every word
            assert secret not in shown
    assert redact(shown) == shown  # redacting twice changes nothing


@pytest.mark.parametrize("uri", UNCHANGED)
def test_uri_without_a_password_is_left_alone(uri):
    assert redact(uri) == uri
    assert not is_masked(uri) and secrets_of(uri) == []


def test_every_form_of_a_special_password_is_known_and_scrubbed():
    uri = f"postgresql://lorsp:{ENCODED}@127.0.0.1:5432/optuna"
    assert set(secrets_of(uri)) >= {SPECIAL, ENCODED}
    message = f"could not connect to {uri} (user lorsp, password {SPECIAL}, quoted {ENCODED})"
    cleaned = scrub(message, uri)
    assert SPECIAL not in cleaned and ENCODED not in cleaned
    assert "postgresql://lorsp:***@127.0.0.1:5432/optuna" in cleaned and "user lorsp" in cleaned


def test_a_redacted_uri_never_connects():
    for flag, uri in (("--storage", "postgresql://lorsp:***@127.0.0.1:5432/optuna"),
                      ("--tracking-uri", "http://user:***@mlflow:5000")):
        with pytest.raises(ConfigError) as err:
            require_secret(uri, flag)
        text = str(err.value)
        assert "\n" not in text and flag in text and "hidden" in text
        ways = ("PGPASSWORD", "~/.pgpass") if flag == "--storage" else ("MLFLOW_TRACKING_PASSWORD",)
        assert all(way in text for way in ways)
    require_secret("postgresql://lorsp@127.0.0.1:5432/optuna", "--storage")  # no password at all: fine
    require_secret(None, "--storage")


def test_tools_refuse_a_redacted_uri_before_connecting(tmp_path):
    from lorsp.search import rdb_storage
    from lorsp.tracking import connect

    study = StudyConfig.model_validate({"name": "hidden", "tracking": {"root": str(tmp_path)}})
    tick = time.perf_counter()
    with pytest.raises(ConfigError, match=r"--storage .*PGPASSWORD"):
        rdb_storage("postgresql://lorsp:***@192.0.2.1:5432/optuna")  # TEST-NET: a connection would hang
    recorded = study.model_copy(update={"tracking": study.tracking.model_copy(
        update={"uri": "postgresql://lorsp:***@192.0.2.1:5432/mlflow"})})
    with pytest.raises(ConfigError, match=r"--tracking-uri .*PGPASSWORD"):
        connect(recorded)  # the study's stored URI: refused, not tried
    assert time.perf_counter() - tick < 5


def test_storage_errors_name_the_uri_without_its_password():
    from lorsp.ports import free_port
    from lorsp.search import rdb_storage

    uri = f"postgresql://lorsp:{ENCODED}@127.0.0.1:{free_port()}/optuna"  # nothing listens there
    with pytest.raises(ConfigError) as err:
        rdb_storage(uri)
    assert redact(uri) in str(err.value)
    assert not [s for s in secrets_of(uri) if s in str(err.value)]


def test_resume_command_masks_the_password_and_says_how_to_give_it():
    from lorsp.tune import resume_command

    storage = f"postgresql://lorsp:{ENCODED}@db:5432/optuna"
    line = resume_command(["--space", "s.yaml", "--storage", storage, "--set", f"tracking.uri={storage}x"])
    command, _, note = line.partition("  # ")
    assert not [s for s in secrets_of(storage) if s in line]
    assert shlex.split(command) == ["python", "-m", "lorsp.tune", "--space", "s.yaml", "--storage",
                                    redact(storage), "--set", f"tracking.uri={redact(storage)}x", "--resume"]
    assert MASK in note and "PGPASSWORD" in note and "~/.pgpass" in note
    assert shlex.split(line, comments=True) == shlex.split(command)  # the line pastes into a shell as is
    plain = resume_command(["--space", "s.yaml", "--storage", "postgresql://lorsp@db/optuna"])
    assert plain.endswith("--resume") and "#" not in plain  # nothing hidden, nothing to explain


def test_redact_arg_and_hint_read_key_value_arguments():
    assert redact_arg("--storage=postgresql://u:pw12@h/db") == "--storage=postgresql://u:***@h/db"
    assert redact_arg("tracking.uri=http://u:pw12@h:5000") == "tracking.uri=http://u:***@h:5000"
    assert redact_arg("train.lr=0.1") == "train.lr=0.1"
    assert "MLFLOW_TRACKING_USERNAME" in hint("tracking.uri=http://u:pw12@h:5000")
    assert hint("postgresql://u@h/db", None) == ""


def test_ui_hint_names_the_right_command_for_the_store(tmp_path):
    from lorsp.search import default_root
    from lorsp.tracking import ui_command

    study = StudyConfig.model_validate({"name": "ui", "tracking": {"root": str(tmp_path / "runs")}})
    embedded = f"sqlite:///{default_root(study) / 'mlflow.db'}"
    assert ui_command(study, embedded) == f"python -m lorsp.ui --root {tmp_path / 'runs'}"
    database = "postgresql://lorsp:s3cret-pw@127.0.0.1:5432/mlflow"
    line = ui_command(study, database)
    assert shlex.split(line, comments=True) == ["python", "-m", "lorsp.ui", "--tracking-uri", redact(database)]
    assert "s3cret-pw" not in line and "PGPASSWORD" in line
    server = "http://user:s3cret-pw@mlflow:5000"
    line = ui_command(study, server)
    assert shlex.split(line, comments=True)[-2:] == ["--tracking-uri", redact(server)]
    assert "s3cret-pw" not in line and "MLFLOW_TRACKING_PASSWORD" in line
    other = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert ui_command(study, other) == f"python -m lorsp.ui --tracking-uri {other}"


def test_recorded_study_has_no_password_and_keeps_everything_else():
    study = StudyConfig.model_validate({"name": "s", "tracking": {
        "uri": "postgresql://lorsp:s3cret-pw@db/mlflow", "storage": "postgresql://lorsp:s3cret-pw@db/optuna"}})
    shown = study.redacted()
    assert shown.tracking.uri == "postgresql://lorsp:***@db/mlflow"
    assert shown.tracking.storage == "postgresql://lorsp:***@db/optuna"
    assert "s3cret-pw" not in shown.model_dump_json()
    assert shown.model_dump(exclude={"tracking"}) == study.model_dump(exclude={"tracking"})
    assert study.tracking.uri.endswith("s3cret-pw@db/mlflow")  # the driver's own copy still connects
    plain = StudyConfig.model_validate({"name": "s"})
    assert plain.redacted() is plain


def test_the_mlflow_callback_pickles_without_the_password_and_copies_with_it(tmp_path):
    """Tune pickles its callbacks into the experiment folder (tuner.pkl) and copies them in-process."""
    from lorsp.tracking.callback import MLflowCallback

    uri = f"postgresql://lorsp:{ENCODED}@127.0.0.1:5432/mlflow"
    study = StudyConfig.model_validate({"name": "cb", "tracking": {"uri": uri, "root": str(tmp_path)}})
    callback = MLflowCallback(study, uri, "1", "parent")
    data = pickle.dumps(callback)
    assert not [s for s in secrets_of(uri) if s.encode() in data]
    assert redact(uri).encode() in data
    copy = pickle.loads(data)
    assert copy.uri == uri  # in this process, the copy connects as the original does
    assert copy.study.tracking.uri == redact(uri)


# ================================================================ a real study on a real PostgreSQL
from tests.test_cluster import cluster, postgres  # noqa: E402, F401  (the cluster tests' private PostgreSQL)

NAME = "secret"
EPOCHS = 30  # as tests/test_tune.py's interrupted study: a wide window to stop a trial in
ROLE = "lorsp_secret"


def _create_role(pg: dict, password: str) -> None:
    """A login role with `password` (any characters) owning two fresh databases."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(host="127.0.0.1", port=pg["port"], user=cluster.PG_USER, password=pg["password"],
                         dbname="postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(password)))
        for db in ("sec_optuna", "sec_mlflow"):
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(ROLE)))


def _dump(pg: dict, password: str, db: str) -> str:
    """The whole database as pg_dump writes it (every table, every row, as text)."""
    out = subprocess.run([str(Path(pg["bindir"]) / "pg_dump"), "-h", "127.0.0.1", "-p", str(pg["port"]),
                          "-U", ROLE, "--no-owner", db], env={**os.environ, "PGPASSWORD": password},
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _files_text(folder: Path) -> dict[Path, bytes]:
    """Every file under `folder`, as bytes; a Parquet file also as its decoded rows (its pages are compressed)."""
    import pyarrow.parquet as pq

    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        out[path] = path.read_bytes()
        if path.suffix == ".parquet":
            out[path.with_suffix(".parquet.rows")] = str(pq.read_table(path).to_pylist()).encode()
    return out


def _interrupt(args: list[str], storage_object, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the study and send it SIGTERM once its first trial has a checkpoint of an epoch in
    [2, EPOCHS - 10] (read from the Optuna storage, as tests/test_tune.py does)."""
    import optuna

    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    wait_until(lambda: any(t.state.name == "RUNNING" and 2 <= t.user_attrs.get("epochs_done", 0) <= EPOCHS - 10
                           for t in optuna.load_study(study_name=NAME, storage=storage_object).trials), proc)
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.mark.slow
def test_no_password_anywhere_after_a_study_on_postgresql(postgres, tmp_path, local_ray,  # noqa: F811
                                                          capfd, monkeypatch):
    import optuna
    from mlflow import MlflowClient

    from lorsp.confirm import main as confirm_main
    from lorsp.export import main as export_main
    from lorsp.fronts import main as pareto_main
    from lorsp.search import rdb_storage, stored_config

    pg = postgres["postgres"]
    token = secrets.token_hex(8)  # in every form of the password: what the search below looks for
    password = f"Pw@/:%{token}"  # '@', '/', ':' and '%' all need percent-encoding in a URI
    _create_role(pg, password)

    def uri(db: str, with_password: bool = True) -> str:
        secret = f":{urllib.parse.quote(password, safe='')}" if with_password else ""
        return f"postgresql://{ROLE}{secret}@127.0.0.1:{pg['port']}/{db}"

    storage, tracking = uri("sec_optuna"), uri("sec_mlflow")
    assert is_masked(redact(storage)) and secrets_of(storage)
    root, exported = tmp_path / "runs", tmp_path / "export"
    storage_object = rdb_storage(storage)  # creates the schema before the driver polls it
    console: list[str] = []
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
    env["PYTHONUNBUFFERED"] = "1"

    # 1. The study as users type it, stopped in the middle of its first trial.
    args = [sys.executable, "-m", "lorsp.tune", "--space", str(QUICKSTART), "--name", NAME, "--num-samples", "2",
            "--max-concurrent", "1", "--set", "data.max_train=320", "--set", "data.batch_size=40",
            "--set", f"train.epochs={EPOCHS}", "--set", f"tracking.root={root}",
            "--storage", storage, "--tracking-uri", tracking]
    stopped = _interrupt(args, storage_object, env)
    console += [stopped.stdout, stopped.stderr]
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert f"storage {redact(storage)}" in stopped.stdout
    (line,) = [x for x in stopped.stderr.splitlines() if x.startswith("interrupted:")]
    command = line.split("continue with: ", 1)[1]
    assert f"{ROLE}:***@" in command and "PGPASSWORD" in command and "~/.pgpass" in command

    # 2. Resumed with the very command it printed: the storage's password left out of the URI and given
    # in PGPASSWORD, as its note says; the tracking URI's typed in again.
    argv = shlex.split(command, comments=True)
    assert argv[:3] == ["python", "-m", "lorsp.tune"] and argv[-1] == "--resume"
    argv = [sys.executable, *argv[1:]]
    argv[argv.index("--storage") + 1] = uri("sec_optuna", with_password=False)
    argv[argv.index("--tracking-uri") + 1] = tracking
    resumed = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600,
                             env={**env, "PGPASSWORD": password})
    console += [resumed.stdout, resumed.stderr]
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "interrupted to resume" in resumed.stdout
    trials = optuna.load_study(study_name=NAME, storage=storage_object).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[0].user_attrs.get("interruptions") == 1  # the stopped trial finished, under its number
    (browse,) = [x for x in resumed.stdout.splitlines() if x.startswith("MLflow: study")]
    assert f"recorded in {redact(tracking)}" in browse
    assert f"python -m lorsp.ui --tracking-uri '{redact(tracking)}'" in browse and "PGPASSWORD" in browse

    # 3. Confirmed and exported with the password in both URIs.
    assert confirm_main(["--name", NAME, "--seeds", "2", "--top", "1", "--storage", storage,
                         "--tracking-uri", tracking]) == 0
    assert export_main(["--name", NAME, "--pareto", "--out", str(exported), "--storage", storage,
                        "--tracking-uri", tracking]) == 0
    out = capfd.readouterr()
    console += [out.out, out.err]
    assert "hidden" not in out.err and "warning: tracking.uri" not in out.err, out.err[-2000:]
    meta = json.loads(next(exported.glob("trial-*/lorsp.json")).read_text())
    assert meta["weights_from"].startswith("mlflow run")  # read through the URI given, not the recorded one
    assert meta["tracking_uri"] == redact(tracking) == meta["hyperparameters"]["tracking"]["uri"]

    # The recorded URIs cannot connect: the tools say what to pass instead, in one line.
    assert export_main(["--name", NAME, "--pareto", "--out", str(tmp_path / "export-without"),
                        "--storage", storage]) == 0  # no --tracking-uri: the checkpoint folders serve
    out = capfd.readouterr()
    console += [out.out, out.err]
    (warning,) = [x for x in out.err.splitlines() if x.startswith("warning:")]
    assert "--tracking-uri" in warning and "PGPASSWORD" in warning and redact(tracking) in warning
    assert export_main(["--name", NAME, "--pareto", "--out", str(tmp_path / "export-masked"),
                        "--storage", redact(storage)]) == 2
    out = capfd.readouterr()
    console += [out.out, out.err]
    assert out.err.count("\n") == 1 and "--storage" in out.err and "hidden" in out.err

    # The Pareto tool with the password in a ~/.pgpass file (PGPASSFILE points at one) and none in the URI.
    pgpass = tmp_path / "pgpass"
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    pgpass.write_text(f"127.0.0.1:{pg['port']}:*:{ROLE}:{escaped}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    assert pareto_main(["--name", NAME, "--storage", uri("sec_optuna", with_password=False),
                        "--out", str(tmp_path / "pareto"), "--no-plot"]) == 0
    out = capfd.readouterr()
    console += [out.out, out.err]

    # What lorsp recorded about where the study lives: the URIs without their secret.
    assert stored_config(storage_object, NAME).tracking.uri == redact(tracking)
    client = MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name(NAME)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`lorsp.role` = 'study'")
    assert parent.data.params["tracking.uri"] == redact(tracking)
    checkpoints = list(root.glob("ray/*/*/checkpoint_*/config.yaml"))
    assert checkpoints and all(f"{ROLE}:***@" in c.read_text() for c in checkpoints)

    # 4. Every byte lorsp wrote or printed: the password is nowhere, in any form.
    forms = {password, urllib.parse.quote(password, safe=""), urllib.parse.quote(password), token}
    records: dict[str, bytes] = {f"console {i}": text.encode() for i, text in enumerate(console)}
    for db in ("sec_optuna", "sec_mlflow"):
        dump = _dump(pg, password, db)
        assert "lorsp_study_config" in dump if db == "sec_optuna" else "tracking.uri" in dump
        records[f"pg_dump {db}"] = dump.encode()
    for folder in (root, exported, tmp_path / "export-without", tmp_path / "pareto"):
        records.update({str(path): data for path, data in _files_text(folder).items()})
    assert any("/ray/" in name and name.endswith("tuner.pkl") for name in records)  # Ray's folders are in
    assert any("mlartifacts" in name and name.endswith("study.yaml") for name in records)
    leaks = sorted({name for name, data in records.items() for form in forms if form.encode() in data})
    assert not leaks, f"the password is in: {leaks}"
    assert sum(f"{ROLE}:***@".encode() in data for data in records.values()) >= 5  # it is there, redacted


def test_an_mlflow_server_gets_its_database_uri_in_its_environment_not_on_its_command_line(tmp_path):
    """Every user of the machine can read a process's command line (ps), not its environment."""
    from lorsp.mlflow_server import server_command

    uri = "postgresql://lorsp:Secret%40pw@127.0.0.1:5432/mlflow"
    argv, env = server_command(uri, tmp_path / "artifacts", 5077)
    assert "Secret" not in " ".join(argv) and env["MLFLOW_BACKEND_STORE_URI"] == uri
