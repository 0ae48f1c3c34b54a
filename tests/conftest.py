"""Shared helpers: build scenarios as dicts and run them under a policy."""
import pytest

from mmugather.policies import POLICIES
from mmugather.sim.simulation import Simulation
from mmugather.workloads.scenario import parse_scenario


def scenario(vmas, threads, cpus=4, preempt="voluntary", latency=True, seed=1, fail_nowait=0.0):
    return parse_scenario({"seed": seed, "machine": {"cpus": cpus, "preempt": preempt, "latency_task": latency,
                                                     "fail_nowait": fail_nowait},
                           "process": [{"name": "app", "vma": vmas, "thread": threads}]}, "test")


def run(sc, policy, **kw):
    cls = POLICIES[policy] if isinstance(policy, str) else policy
    return Simulation(sc, cls, **kw).run()


def munmap_while_others_run(size="4MiB", cpus=4, preempt="voluntary", fail_nowait=0.0):
    """Thread 0 munmaps a populated region while the other threads keep touching their own memory."""
    threads = [{"cpu": 0, "program": [{"op": "munmap", "vma": "a"}, {"op": "exit"}]}]
    warm = {"op": "touch", "vma": "a", "size": "64KiB", "write": False}
    threads += [{"cpu": i, "program": [warm, {"op": "churn", "vma": "w", "gap_ns": 1500}]} for i in range(1, cpus)]
    return scenario([{"name": "a", "size": size, "populate": True},
                     {"name": "w", "size": "1MiB", "populate": True}], threads, cpus=cpus, preempt=preempt,
                    fail_nowait=fail_nowait)


@pytest.fixture
def small_munmap():
    return munmap_while_others_run()
