"""mmugather: the Linux kernel's mmu_gather, executable on a simulated SMP machine."""

__version__ = "0.1.0"
