"""mmugather: the Linux kernel's mmu_gather, executable on a simulated SMP machine.

The Python API (mmugather/api.py, docs/tutorial.md): `compare`, `run`, `explore`, `sweep`, `load_results`.
`mmugather.sweep` and `mmugather.explore` are the functions; the module and package of the same names are
reached as `from mmugather.sweep import ...` (or `importlib.import_module("mmugather.sweep")`). api.py
imports both before the functions take their names, so no later import rebinds them.
"""

__version__ = "0.1.0"

from mmugather.api import (  # noqa: E402  (see above)
    Comparison, Exploration, Machine, Run, SweepResults, compare, explore, load_results, run, sweep,
)

__all__ = ["Comparison", "Exploration", "Machine", "Run", "SweepResults", "compare", "explore", "load_results",
           "run", "sweep"]
