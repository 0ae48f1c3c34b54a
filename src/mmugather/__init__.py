"""mmugather: the Linux kernel's mmu_gather, executable on a simulated SMP machine.

The Python API (mmugather/api.py, docs/tutorial.md): `compare`, `run`, `explore`, `sweep`, `load_results`.
`mmugather.sweep` is the function; the module of the same name is reached as `from mmugather.sweep import
...` (or `importlib.import_module("mmugather.sweep")`).
"""

__version__ = "0.1.0"

from mmugather.api import (  # noqa: E402  (imports mmugather.sweep, the module, before the function takes its name)
    Comparison, Exploration, Machine, Run, SweepResults, compare, explore, load_results, run, sweep,
)

__all__ = ["Comparison", "Exploration", "Machine", "Run", "SweepResults", "compare", "explore", "load_results",
           "run", "sweep"]
