"""A Ray cluster of two nodes on 127.0.0.1, run as its own process by the multi-node tests.

Ray's own cluster utilities start a head node (2 CPUs) and a second node (1 CPU), each with its
own raylet and object store. The process prints one JSON line (the address, both node ids, the
second raylet's pid), then obeys lines on stdin: ``kill`` kills the second node's processes at
once (no graceful shutdown: a lost machine); end of input stops the cluster.

It runs apart from the test session's own Ray, under a private ``RAY_TMPDIR`` (the caller sets
it), so the ``ray_current_cluster`` file that points ``ray.init()`` at the newest cluster never
names this one to anybody else. Health checks are tightened so a lost node is noticed within
seconds rather than Ray's default half a minute.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from ray.cluster_utils import Cluster  # noqa: E402  (after the environment it reads)

# The GCS pings every raylet each second and declares it dead after 3 missed answers.
_FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}


def main() -> None:
    assert os.environ.get("RAY_TMPDIR"), "set RAY_TMPDIR to a private folder"
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False, "_system_config": _FAST_HEALTH_CHECKS},
    )
    second = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    raylet = second.all_processes["raylet"][0].process.pid
    info = {
        "address": cluster.address,
        "nodes": [cluster.head_node.node_id, second.node_id],
        "second_raylet_pid": raylet,
    }
    print(json.dumps(info), flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "kill":
                cluster.remove_node(second, allow_graceful=False)
                print("killed", flush=True)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
