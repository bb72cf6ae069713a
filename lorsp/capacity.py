"""What one trial asks of the Ray cluster, and a one-line refusal when the cluster can never give it.

A trial Tune cannot place does not fail: it waits, and Ray prints "No trial is running ... You asked
for 3.0 CPUs" every minute for as long as one lets it (a streaming trial's decode CPUs on a 2-CPU
machine did exactly that). So before any trial starts the driver compares the request with the
cluster's live nodes and refuses, naming the knobs, what cannot fit. Only what is certainly
impossible is refused: a bundle larger than every node, or a trial larger than the whole cluster.
A cluster that autoscales can have more than it has now: its node types (from the autoscaler's
cluster config, when it published one) count as nodes it may add, so only a bundle larger than every
node type is refused there, never a total.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lorsp.config import ConfigError, ResourcesConfig

HEAD_NODE_RESOURCE = "node:__internal_head__"
"""Only the head node has it: trial drivers (and so their Ray Train controllers) stay there, and a
lost worker node costs only the training workers, which resume from their checkpoint."""
DRIVER_MEMORY = 256 * 1024**2
"""A Ray Train trial's driver only waits on its trainer: it asks for memory, not a CPU a worker could use."""


@dataclass
class Bundle:
    """Resources that must sit on one node, and the study-file knobs that set them."""

    what: str
    need: dict[str, float]
    knobs: dict[str, str] = field(default_factory=dict)  # resource -> the knob(s) that ask for it


def trial_bundles(res: ResourcesConfig, streaming: bool) -> list[Bundle]:
    """Every bundle one trial occupies: its driver or its single worker, its DDP workers, its decode CPUs."""
    bundles: list[Bundle] = []
    if res.uses_ray_train:
        bundles.append(Bundle("the trial's driver", {"CPU": res.driver_cpus, "memory": DRIVER_MEMORY,
                                                     HEAD_NODE_RESOURCE: 0.001}, {"CPU": "resources.driver_cpus"}))
    worker = Bundle("a worker", {"CPU": res.cpus_per_worker, "GPU": res.gpus_per_worker},
                    {"CPU": "resources.cpus_per_worker", "GPU": "resources.gpus_per_worker"})
    bundles += [worker] * res.workers_per_trial
    if streaming:
        bundles.append(Bundle("its decode tasks", {"CPU": res.stream_cpus}, {"CPU": "resources.stream_cpus"}))
    return bundles


def tune_bundles(res: ResourcesConfig, streaming: bool) -> list[dict[str, float]]:
    """The placement group Tune reserves for a trial: its driver (Ray Train; the workers get theirs from
    the trainer) or its one worker (inline), then its decode CPUs when it streams."""
    bundles = trial_bundles(res, streaming)
    return [bundles[0].need, *([bundles[-1].need] if streaming else [])]


def check_fits(res: ResourcesConfig, streaming: bool, nodes: list[dict[str, float]],
               node_types: list[dict[str, float]] | None = None) -> None:
    """Refuse, in one line naming the knobs, a trial that no node or not the whole cluster can hold.

    `nodes`: each live node's total resources (:func:`live_nodes`); `node_types`: the resources of each
    node type an autoscaler may add (:func:`autoscaler_node_types`; None: the cluster cannot grow).
    """
    bundles = trial_bundles(res, streaming)
    for bundle in bundles:
        for resource, amount in bundle.need.items():
            if amount <= 0 or resource == "memory":
                continue
            largest = max((node.get(resource, 0.0) for node in [*nodes, *(node_types or [])]), default=0.0)
            if amount > largest + 1e-9:
                knob = bundle.knobs.get(resource, resource)
                name = "GPUs" if resource == "GPU" else "CPUs" if resource == "CPU" else resource
                raise ConfigError(
                    f"{knob} {amount:g}: {bundle.what} needs {amount:g} {name} on one node, but the largest node "
                    f"of this Ray cluster has {largest:g}; lower {knob} or run on a cluster with larger nodes "
                    "(--address)")
    if node_types is not None:
        return  # an autoscaler adds nodes as trials wait for them
    for resource in ("CPU", "GPU"):
        asked = sum(b.need.get(resource, 0.0) for b in bundles)
        have = sum(node.get(resource, 0.0) for node in nodes)
        if asked > have + 1e-9:
            knobs = sorted({b.knobs[resource] for b in bundles if b.need.get(resource) and resource in b.knobs})
            if res.workers_per_trial > 1:
                knobs.append("resources.workers_per_trial")
            raise ConfigError(
                f"one trial asks for {asked:g} {resource}s ({' + '.join(_parts(bundles, resource))}) but this Ray "
                f"cluster has {have:g} in all, so no trial could ever start; lower {', '.join(knobs)} or add nodes")


def _parts(bundles: list[Bundle], resource: str) -> list[str]:
    out: dict[str, list[float]] = {}
    for b in bundles:
        if b.need.get(resource):
            out.setdefault(b.knobs.get(resource, b.what), []).append(b.need[resource])
    return [f"{knob} {vals[0]:g}" + (f" x {len(vals)} workers" if len(vals) > 1 else "") for knob, vals in out.items()]


def live_nodes() -> list[dict[str, float]]:
    """Each live node's total resources, from the Ray this process is attached to."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def autoscaler_node_types() -> list[dict[str, float]] | None:
    """The resources of each node type the cluster's autoscaler may add; None without an autoscaler.

    Ray publishes the autoscaler's cluster config only through a private state accessor: this is the
    one place lorsp reads it, and any failure to read it counts as "no autoscaler" (the check then
    holds the request against the live nodes alone). Because that failure is silent,
    tests/test_capacity.py fails loudly if Ray moves the accessor or reshapes its answer.
    """
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:
        return None
    return node_types_of(config)


def node_types_of(config: Any) -> list[dict[str, float]] | None:
    """The node types of an autoscaler cluster config (Ray's `autoscaler_pb2.ClusterConfig`)."""
    if config is None or not config.node_group_configs:
        return None
    return [{name: float(amount) for name, amount in group.resources.items()} for group in config.node_group_configs]
