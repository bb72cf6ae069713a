"""The one private Ray Train name lorsp's trial runtime reads (`lorsp.trial._quiet_reports`), held so
that a Ray upgrade that moves it fails here, loudly, instead of silently bringing back one console line
per worker per epoch (a failed trial's with its whole traceback). The other private uses have their own:
tests/test_embedded_ray.py (token auth), tests/test_capacity.py (the autoscaler's node types),
tests/test_search.py (the NSGA-II sampler's pickle)."""

from __future__ import annotations

import logging


def test_ray_trains_report_logger_is_where_lorsp_quiets_it():
    from ray.train.v2._internal.execution import context

    from lorsp.trial import _quiet_reports

    assert context.logger.name == context.__file__  # named after the file, outside `ray.train`
    before = logging.getLogger(context.__file__).level
    try:
        _quiet_reports()
        assert context.logger.getEffectiveLevel() == logging.WARNING
    finally:
        logging.getLogger(context.__file__).setLevel(before)
