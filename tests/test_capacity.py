"""What a trial asks of the cluster, and the one-line refusal of a request no cluster node can meet
(:mod:`lorsp.capacity`): pure rules over node resources, so they are held here in milliseconds; the
end-to-end refusal by `lorsp.tune` on a real 2-CPU Ray is in tests/test_driver.py."""

from __future__ import annotations

import pytest

from lorsp.capacity import check_fits, trial_bundles, tune_bundles
from lorsp.config import ConfigError, ResourcesConfig

TWO_CPUS = [{"CPU": 2.0, "memory": 8e9, "node:__internal_head__": 1.0}]


def test_a_streaming_trial_that_asks_for_more_cpus_than_the_machine_is_refused_naming_the_knobs():
    res = ResourcesConfig(cpus_per_worker=1, stream_cpus=2)
    with pytest.raises(ConfigError) as err:
        check_fits(res, streaming=True, nodes=TWO_CPUS)
    line = str(err.value)
    assert "\n" not in line and "3 CPUs" in line and "resources.stream_cpus" in line
    assert "resources.cpus_per_worker" in line and "has 2 in all" in line
    check_fits(res, streaming=False, nodes=TWO_CPUS)  # without streaming the same trial fits


def test_the_default_streaming_trial_fits_a_two_core_machine():
    check_fits(ResourcesConfig(), streaming=True, nodes=TWO_CPUS)


def test_a_gpu_trial_on_a_cluster_without_gpus_is_refused():
    with pytest.raises(ConfigError, match=r"resources.gpus_per_worker 1: a worker needs 1 GPUs on one node.*has 0"):
        check_fits(ResourcesConfig(gpus_per_worker=1), streaming=False, nodes=TWO_CPUS)


def test_a_worker_larger_than_every_node_is_refused_though_the_cluster_has_enough_in_all():
    nodes = [{"CPU": 4.0}, {"CPU": 4.0}]
    with pytest.raises(ConfigError, match=r"resources.cpus_per_worker 6: .*largest node of this Ray cluster has 4"):
        check_fits(ResourcesConfig(cpus_per_worker=6), streaming=False, nodes=nodes)


def test_ddp_workers_count_against_the_whole_cluster():
    nodes = [{"CPU": 4.0, "node:__internal_head__": 1.0}, {"CPU": 4.0}]
    fits = ResourcesConfig(workers_per_trial=2, cpus_per_worker=4)
    check_fits(fits, streaming=False, nodes=nodes)  # one worker on each node
    with pytest.raises(ConfigError, match=r"12 CPUs .*x 3 workers.*resources.workers_per_trial"):
        check_fits(ResourcesConfig(workers_per_trial=3, cpus_per_worker=4), streaming=False, nodes=nodes)


def test_an_autoscaling_cluster_may_add_the_node_a_trial_needs():
    types = [{"CPU": 8.0, "GPU": 1.0}]
    check_fits(ResourcesConfig(gpus_per_worker=1, cpus_per_worker=8), streaming=False, nodes=TWO_CPUS,
               node_types=types)
    with pytest.raises(ConfigError, match="resources.gpus_per_worker 2"):  # no node type has 2 GPUs
        check_fits(ResourcesConfig(gpus_per_worker=2), streaming=False, nodes=TWO_CPUS, node_types=types)


def test_tune_reserves_the_trials_own_bundles():
    inline = ResourcesConfig(cpus_per_worker=2, stream_cpus=3)
    assert tune_bundles(inline, streaming=True) == [{"CPU": 2.0, "GPU": 0.0}, {"CPU": 3.0}]
    ddp = ResourcesConfig(workers_per_trial=2)
    (driver,) = tune_bundles(ddp, streaming=False)
    assert driver["CPU"] == 0 and driver["node:__internal_head__"] > 0
    assert len(trial_bundles(ddp, streaming=False)) == 3  # the driver and two workers


def test_the_autoscalers_config_is_where_lorsp_reads_it():
    """The one private Ray accessor lorsp calls (capacity.autoscaler_node_types) turns any failure
    into "no autoscaler", so a Ray that moved it would silently drop the node types: fail loudly here."""
    from ray._private.state import state
    from ray.core.generated import autoscaler_pb2

    from lorsp.capacity import node_types_of

    assert callable(state.get_cluster_config)
    config = autoscaler_pb2.ClusterConfig(node_group_configs=[
        autoscaler_pb2.NodeGroupConfig(resources={"CPU": 8, "GPU": 1}, max_count=2),
        autoscaler_pb2.NodeGroupConfig(resources={"CPU": 4}, max_count=1),
    ])
    assert node_types_of(config) == [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 4.0}]
    assert node_types_of(autoscaler_pb2.ClusterConfig()) is None and node_types_of(None) is None
