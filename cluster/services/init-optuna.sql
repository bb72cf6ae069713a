-- Runs once, when the PostgreSQL volume is first initialised (docker-entrypoint-initdb.d):
-- the Optuna study storage lives in its own database beside MLflow's, owned by the same user.
-- Optuna creates its tables on first use (lorsp.tune --storage postgresql://lorsp:...@host:5432/optuna).
CREATE DATABASE optuna OWNER lorsp;
