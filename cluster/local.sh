#!/usr/bin/env bash
# A multi-node Ray cluster on this one machine, with PostgreSQL and an MLflow server: the same
# shape as the cloud configs (head + GPU-less worker nodes + shared services), for trying a study,
# its dashboards and its fault tolerance before paying for nodes. See cluster/README.md.
#
#   cluster/local.sh up [--workers 2] [--worker-cpus 1] [--head-cpus 0] [--no-services]
#                       prints RAY_ADDRESS, the dashboard URL, the MLflow tracking URI, the Optuna
#                       storage URI and the exact `ray job submit` line of a study
#   cluster/local.sh status            what runs; exit 0 when every part answers
#   cluster/local.sh down [--purge]    stops every process it started and checks none is left
#   cluster/local.sh add-node          one more worker node (scale out, or replace a lost one)
#   cluster/local.sh kill-node w1      lose a worker node (SIGKILL its raylet and workers)
#   cluster/local.sh env               export lines: eval "$(cluster/local.sh env)"
#
# State (ports, databases, artifacts, checkpoints) lives in ./lorsp-cluster/ (--state DIR or
# $LORSP_CLUSTER_STATE to change it). This script only finds the Python that has lorsp installed
# and runs cluster/local_cluster.py with it, which does the work.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
if [[ -n "${LORSP_PYTHON:-}" ]]; then
  py="$LORSP_PYTHON"
elif [[ -x "$repo/.venv/bin/python" ]]; then
  py="$repo/.venv/bin/python"          # the repository's virtual environment (README setup)
elif [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
  py="$VIRTUAL_ENV/bin/python"
else
  py="$(command -v python3 || command -v python)"
fi
if ! "$py" -c "import lorsp.mlflow_server, lorsp.ports" 2>/dev/null; then
  echo "error: $py cannot import lorsp; install it first: python -m pip install -e \"$repo\" (or set LORSP_PYTHON)" >&2
  exit 1
fi
exec "$py" "$here/local_cluster.py" "$@"
