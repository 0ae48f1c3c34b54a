"""What the explorer searches: a scenario under a policy, built afresh in controlled mode per execution."""
from __future__ import annotations

from mmugather.errors import InputError
from mmugather.explore.controlled import RESCHED, Controlled, CountingRandom
from mmugather.explore.state import simulation_fingerprinter
from mmugather.sim.simulation import Simulation

MAX_EXPLORE_CPUS = 8


def explore_scenario(scenario):
    """The scenario as the explorer runs it: without the periodic latency task (the explorer decides every
    preemption itself, and time orders nothing)."""
    if not scenario.machine.latency_task:
        return scenario
    return scenario.model_copy(update={"machine": scenario.machine.model_copy(update={"latency_task": False})})


class KernelTarget:
    """`scenario` under `policy_cls` (with `without_fixes` switched off); `build()` gives a fresh
    Simulation in controlled mode, with `fingerprint()`."""

    def __init__(self, scenario, policy_cls, *, without_fixes=(), seed: int | None = None,
                 arch: str | None = None) -> None:
        if scenario.machine.cpus > MAX_EXPLORE_CPUS:
            raise InputError(f"{scenario.name}: explore searches machines of up to {MAX_EXPLORE_CPUS} CPUs, "
                             f"this one has {scenario.machine.cpus}")
        self.scenario = explore_scenario(scenario)
        self.policy = policy_cls
        self.without_fixes = tuple(without_fixes)
        self.seed = seed
        self.arch = arch
        self.build()                       # bad fix names or arch: an InputError now, not mid-search

    def build(self) -> Simulation:
        """A fresh Simulation whose engine runs under a Controlled scheduler (`sim.engine.scheduler`), its
        TLB observed and its RNG counted by the scheduler's Footprint."""
        control = Controlled()
        sim = Simulation(self.scenario, self.policy, seed=self.seed, arch=self.arch,
                         without_fixes=self.without_fixes, fast=False, scheduler=control,
                         rng_class=CountingRandom, tlb_observer=control.footprint)
        control.footprint.watch(sim)
        sim.fingerprint = _lazy_fingerprint(sim)
        return sim

    def actor_names(self) -> dict[int, str]:
        """actor -> "app/0 (CPU 0)" or "IPIs on CPU 1", for the actors of a fresh build."""
        sim = self.build()
        names = {tid: f"{t.name} (CPU {t.cpu})" for tid, t in sorted(sim.engine.tasks.items())}
        for c in sim.engine.cpus:
            names[-1 - c.id] = f"IPIs on CPU {c.id}"
            names[RESCHED - c.id] = f"scheduler tick on CPU {c.id} (sets need_resched)"
        return names


def _lazy_fingerprint(sim):
    """sim's fingerprint function, its Fingerprinter made on the first call (most executions hash nothing)."""
    made: list = []

    def fingerprint() -> int:
        if not made:
            made.append(simulation_fingerprinter(sim).fingerprint)
        return made[0]()
    return fingerprint
