"""Resource limits: `--max-memory` checked before a run starts against the scenario's estimated need, and
the bounds of a run (`--max-sim-ns`, `--max-steps`) that stop a scenario that never ends."""
from __future__ import annotations

import os

import click

from mmugather.errors import InputError


def default_max_memory() -> int:
    """A fair share of this host's RAM: half of it (other users and the OS keep the rest)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def parse_memory(value: str | None) -> int:
    """`--max-memory` as bytes: "8GiB", "512 MiB", "1073741824" (default: half of this host's RAM)."""
    if value is None:
        return default_max_memory()
    from mmugather.workloads.scenario import _size
    try:
        n = _size(value.strip())
    except ValueError:
        raise InputError(f"--max-memory: expected a size such as 8GiB or 512MiB, got {value!r}") from None
    if n <= 0:
        raise InputError(f"--max-memory: expected a positive size, got {value!r}")
    return n


def memory_option(f):
    return click.option("--max-memory", "max_memory", default=None, metavar="SIZE",
                        help="Refuse a run whose estimated host memory exceeds SIZE, e.g. 8GiB (default: half "
                             "of this host's RAM). The estimate comes from the scenario before anything is "
                             "built.")(f)


def check_memory(scenario, max_memory: str | None, what: str) -> None:
    """Refuse `scenario` before building it if its estimated memory exceeds --max-memory."""
    from mmugather.workloads.scenario import estimate_memory
    from mmugather.workloads.scenario import human_bytes as gib
    limit = parse_memory(max_memory)
    need = estimate_memory(scenario)
    if need > limit:
        raise InputError(f"--max-memory: {what} needs about {gib(need)} of host memory (estimated from its "
                         f"resident pages and page tables); the limit is {gib(limit)}")


def runs_in_memory(scenario, max_memory: str | None) -> int:
    """How many runs of `scenario` fit in --max-memory at once (at least one: check_memory refuses a
    scenario whose one run does not fit)."""
    from mmugather.workloads.scenario import estimate_memory
    return max(1, parse_memory(max_memory) // max(1, estimate_memory(scenario)))


def run_bounds_options(f):
    """`--max-sim-ns` and `--max-steps`: the engine's bounds of one run (machine/engine.py LimitExceeded)."""
    from mmugather.sim.simulation import DEFAULT_MAX_SIM_NS, DEFAULT_MAX_STEPS
    f = click.option("--max-steps", "max_steps", type=click.IntRange(min=1), default=DEFAULT_MAX_STEPS,
                     show_default=True, metavar="N",
                     help="Stop a run after N task resumptions that spend no simulated time (exit status 2).")(f)
    return click.option("--max-sim-ns", "max_sim_ns", type=click.IntRange(min=1), default=DEFAULT_MAX_SIM_NS,
                        show_default=True, metavar="NS",
                        help="Stop a run whose simulated time passes NS nanoseconds (a scenario that never "
                             "ends; exit status 2).")(f)
