"""Per-CPU TLB-shootdown counts from /proc/interrupts (x86: the "TLB:" row, one count per CPU)."""
from __future__ import annotations

from pathlib import Path

PROC_INTERRUPTS = "/proc/interrupts"


def parse_tlb(text: str) -> dict[int, int] | None:
    """The "TLB:" row of /proc/interrupts text as {CPU number: count} (the header names the online CPUs,
    "CPU0 CPU1 CPU3"); None if there is no such row or it does not have one count per CPU. The count is
    the shootdown IPIs *received* by that CPU."""
    lines = text.splitlines()
    if not lines:
        return None
    names = lines[0].split()
    if not names or not all(n.startswith("CPU") and n[3:].isdigit() for n in names):
        return None
    cpus = [int(n[3:]) for n in names]
    for line in lines[1:]:
        label, _, rest = line.strip().partition(":")
        if label == "TLB":
            fields = rest.split()[:len(cpus)]
            if len(fields) != len(cpus) or not all(f.isdigit() for f in fields):
                return None
            return dict(zip(cpus, map(int, fields)))
    return None


def read_tlb(path: str | Path = PROC_INTERRUPTS) -> dict[int, int] | None:
    """The host's per-CPU TLB shootdown counts now; None if the file or the row is missing."""
    try:
        return parse_tlb(Path(path).read_text())
    except OSError:
        return None
