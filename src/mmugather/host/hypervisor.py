"""Which model arch matches the host's TLB shootdowns: `x86-kvm` on a KVM guest whose kernel installed the
paravirtual remote TLB flush, else `x86`.

In arch/x86/kernel/kvm.c (6.16+ copy; unchanged in substance since 5.x) kvm_guest_init() installs
kvm_flush_tlb_multi() and logs "KVM setup pv remote TLB flush" when pv_tlb_flush_supported():
KVM_FEATURE_PV_TLB_FLUSH and KVM_FEATURE_STEAL_TIME in CPUID 0x40000001 EAX, no KVM_HINTS_REALTIME in its
EDX, no MWAIT (CPUID 1 ECX bit 3) and more than one possible CPU. The evidence, most direct first:
1. the kernel log line (/dev/kmsg; root or dmesg_restrict=0; the ring may have wrapped since boot);
2. the same test on CPUID, read through /dev/cpu/0/cpuid (CONFIG_X86_CPUID, root), the KVM leaves found
   as the kernel's cpuid_base_hypervisor() finds them (0x40000000..0x4000ff00 in steps of 0x100);
3. /proc/cpuinfo without the `hypervisor` flag: bare metal, native x86.
When none of them tells, `x86`, and the reason says so (kernel-check --arch chooses by hand).
"""
from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"
KVM_FEATURE_STEAL_TIME = 5
KVM_FEATURE_PV_TLB_FLUSH = 9
KVM_HINTS_REALTIME = 0
X86_FEATURE_MWAIT_ECX_BIT = 3
LOG_LINE = "KVM setup pv remote TLB flush"

Cpuid = Callable[[int], tuple[int, int, int, int]]


def read_cpuid(path: str = "/dev/cpu/0/cpuid") -> Cpuid | None:
    """A function leaf -> (eax, ebx, ecx, edx) reading the cpuid device (a 16-byte read at offset leaf),
    or None when the device cannot be opened."""
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError:
        return None

    def cpuid(leaf: int) -> tuple[int, int, int, int]:
        fd = os.open(path, os.O_RDONLY)
        try:
            return struct.unpack("<4I", os.pread(fd, 16, leaf))
        finally:
            os.close(fd)
    return cpuid


def pv_tlb_flush_from_cpuid(cpuid: Cpuid, possible_cpus: int) -> bool | None:
    """pv_tlb_flush_supported() (arch/x86/kernel/kvm.c) evaluated on `cpuid`; None if it cannot be read,
    False when no KVM leaves exist."""
    try:
        for base in range(0x40000000, 0x40010000, 0x100):
            eax, ebx, ecx, edx = cpuid(base)
            if struct.pack("<3I", ebx, ecx, edx) == KVM_SIGNATURE and eax - base >= 1:
                break
        else:
            return False
        features, _, _, hints = cpuid(base | 1)
        mwait = cpuid(1)[2] >> X86_FEATURE_MWAIT_ECX_BIT & 1
    except OSError:
        return None
    return bool(features >> KVM_FEATURE_PV_TLB_FLUSH & 1 and features >> KVM_FEATURE_STEAL_TIME & 1
                and not hints >> KVM_HINTS_REALTIME & 1 and not mwait and possible_cpus != 1)


def kernel_log(path: str = "/dev/kmsg", limit: int = 100_000) -> list[str] | None:
    """The kernel log's messages (one per /dev/kmsg record), or None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    out: list[str] = []
    try:
        while len(out) < limit:
            try:
                rec = os.read(fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:              # a record overwritten while reading: skip it
                continue
            if not rec:
                break
            out.append(rec.decode(errors="replace").split(";", 1)[-1].split("\n", 1)[0])
    except OSError:
        return None
    finally:
        os.close(fd)
    return out


def cpuinfo_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU flags of /proc/cpuinfo's first CPU, or None when it cannot be read."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return set()


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """num_possible_cpus() from its sysfs list ("0-3,5"), os.cpu_count() when unreadable."""
    try:
        n = 0
        for part in Path(path).read_text().strip().split(","):
            lo, _, hi = part.partition("-")
            n += int(hi or lo) - int(lo) + 1
        return n
    except (OSError, ValueError):
        return os.cpu_count() or 1


def detect_arch(log: list[str] | None = None, cpuid: Cpuid | None = None, flags: set[str] | None = None,
                ncpus: int | None = None, *, probe: bool = True) -> tuple[str, str]:
    """(arch, why): the model arch matching this host's remote TLB flush. With `probe` the arguments left
    None are read from the host (tests pass fixtures and probe=False)."""
    if probe:
        log = kernel_log() if log is None else log
        cpuid = read_cpuid() if cpuid is None else cpuid
        flags = cpuinfo_flags() if flags is None else flags
        ncpus = possible_cpus() if ncpus is None else ncpus
    if log is not None and any(LOG_LINE in line for line in log):
        return "x86-kvm", f"kernel log: \"{LOG_LINE}\""
    if cpuid is not None:
        pv = pv_tlb_flush_from_cpuid(cpuid, ncpus or 1)
        if pv is not None:
            return ("x86-kvm", "CPUID: KVM with PV TLB flush (pv_tlb_flush_supported())") if pv else \
                ("x86", "CPUID: no KVM PV TLB flush")
    if flags is not None and "hypervisor" not in flags:
        return "x86", "/proc/cpuinfo: no hypervisor flag (bare metal)"
    return "x86", "could not tell whether the kernel uses KVM PV TLB flush (no readable kernel log or " \
                  "/dev/cpu/0/cpuid): assumed native; choose with --arch"
