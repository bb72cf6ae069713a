"""Ctrl-C, SIGTERM and SIGHUP reach lorsp.tune's one handler: the first asks the study to stop, a second stops
at once. Real signals sent to this process; the end-to-end stop and --resume of a study driver is in
tests/test_tune.py (with SIGTERM, the signal Ray itself also installs a handler for)."""

from __future__ import annotations

import os
import signal

import pytest

from lorsp.tune import Interruption


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_first_signal_asks_to_stop_and_a_second_stops_at_once(sig: signal.Signals, capsys) -> None:
    before = signal.getsignal(sig)
    with Interruption() as interruption:
        # Starting Ray installs its own SIGTERM handler; arm() must take the signal back.
        signal.signal(sig, lambda *_: pytest.fail("the handler installed after Interruption() ran"))
        interruption.arm()
        os.kill(os.getpid(), sig)  # handled before os.kill returns (Python runs handlers in the main thread)
        assert interruption.signal == sig and interruption.exit_code == 128 + sig
        assert f"{sig.name}: stopping the study" in capsys.readouterr().err
        assert interruption.stopper().stop_all()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), sig)
        assert interruption.signal == sig  # the second signal does not change the exit code
    assert signal.getsignal(sig) is before  # the caller's handler is back


def test_a_signal_before_the_study_loop_stops_at_once() -> None:
    with Interruption() as interruption, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)  # not armed: nothing to stop cleanly yet
    assert interruption.exit_code == 128 + signal.SIGTERM
    assert not Interruption().stopper().stop_all()


def test_tune_settings_last_only_while_tune_runs(monkeypatch) -> None:
    """Ray Tune takes some settings only from the environment: lorsp sets them for its Tuner and gives the
    caller's process back as it was, a user's own value kept where lorsp only has a default."""
    from lorsp.ray_session import tune_environment

    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")
    monkeypatch.delenv("TUNE_DISABLE_STRICT_METRIC_CHECKING", raising=False)
    monkeypatch.delenv("TUNE_DISABLE_SIGINT_HANDLER", raising=False)
    with tune_environment({"RAY_AIR_NEW_OUTPUT": "0"}, {"TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}):
        assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1"
        assert os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] == "1"
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1" and "TUNE_DISABLE_STRICT_METRIC_CHECKING" not in os.environ
    with Interruption():
        assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"  # Tune's own SIGINT handler stays off
    assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ


def test_tunes_slow_operation_threshold_takes_effect_although_ray_read_it_at_import(monkeypatch) -> None:
    """lorsp's quiet console asks for 10 s before Tune's "operation took 0.6 s" warnings; Ray reads the
    variable when ray.tune is imported, so setting it later alone would change nothing."""
    from ray.tune.utils import warn_if_slow

    from lorsp.ray_session import QUIET_TUNE_CONSOLE, tune_environment

    monkeypatch.delenv("TUNE_WARN_THRESHOLD_S", raising=False)
    before = warn_if_slow.DEFAULT_THRESHOLD
    with tune_environment(QUIET_TUNE_CONSOLE):
        assert warn_if_slow.DEFAULT_THRESHOLD == 10.0
        assert warn_if_slow("an MLflow call").threshold == 10.0
    assert warn_if_slow.DEFAULT_THRESHOLD == before
