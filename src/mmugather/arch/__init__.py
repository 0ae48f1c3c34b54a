"""Architectures: one module per arch and kernel era, each held to its Protocol (mm/arch_protocol.py) by this
registry.

| --arch  | kernels      | module                                   |
| x86     | 2.6.39, 3.0  | x86_legacy.py (IPI to mm_cpumask, leave_mm) |
| ppc64   | 3.0          | ppc64.py (hash MMU: tlbie, RCU table free)  |
| x86     | 6.18         | x86.py (tlb_gen, lazy TLB, should_flush_tlb) |
| x86-kvm | 6.18         | x86_kvm.py (PV flush: kvm_flush_tlb_multi)  |
| arm64   | 6.18         | arm64.py (TLBI broadcast)                   |
| ppc64-radix | 6.18     | ppc64_radix.py (tlbie broadcast, PWC by RIC) |

Adding an arch: one module whose class implements `Arch` (2.6.39, 3.0) or `Arch618` (6.18), and one line in
ARCHES below; mypy checks the class against the Protocol through the registry's types. Policies (policies/)
take their arches from ARCHES by kernel version; the CLI and the sweep grid take the known names from
`arch_names()`. The first arch of a kernel is its default.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mmugather.arch.arm64 import Arm64
from mmugather.arch.base import Arch, Arch618, Board, Gather
from mmugather.arch.ppc64 import Ppc64Hash
from mmugather.arch.ppc64_radix import Ppc64Radix
from mmugather.arch.x86 import X86
from mmugather.arch.x86_kvm import X86Kvm
from mmugather.arch.x86_legacy import X86Legacy

ArchFactory = Callable[[Board], Arch[Gather]]
ArchFactory618 = Callable[[Board], Arch618]

_ARCHES_2_6_39: dict[str, ArchFactory] = {"x86": X86Legacy}
_ARCHES_3_0: dict[str, ArchFactory] = {"x86": X86Legacy, "ppc64": Ppc64Hash}
_ARCHES_6_18: dict[str, ArchFactory618] = {"x86": X86, "x86-kvm": X86Kvm, "arm64": Arm64,
                                           "ppc64-radix": Ppc64Radix}

# kernel version (a policy's `name`) -> --arch name -> the arch class that kernel had for it
ARCHES: dict[str, Mapping[str, Callable[[Board], Arch[Any]]]] = {
    "2.6.39": _ARCHES_2_6_39,
    "3.0": _ARCHES_3_0,
    "6.18": _ARCHES_6_18,
}


def arch_names() -> list[str]:
    """Every --arch name some kernel version supports, in registry order."""
    return list(dict.fromkeys(name for by_name in ARCHES.values() for name in by_name))


__all__ = ["ARCHES", "Arch", "Arch618", "Arm64", "Ppc64Hash", "Ppc64Radix", "X86", "X86Kvm", "X86Legacy", "arch_names"]
