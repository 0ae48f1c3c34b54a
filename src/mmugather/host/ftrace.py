"""The x86 `tlb:tlb_flush` tracepoint, read through a private tracefs instance.

include/trace/events/tlb.h (Linux 6.18) records `pages` and a `reason` (enum tlb_flush_reason,
include/linux/mm_types.h). In arch/x86/mm/tlb.c v6.18, native_flush_tlb_multi() traces TLB_REMOTE_SEND_IPI
once per remote flush it is asked for, before it drops lazy CPUs (unless tables were freed). On a CPU
that takes the IPI, flush_tlb_func() (!local) traces TLB_REMOTE_WRONG_CPU when the CPU no longer runs that
mm (it only leaves the mm's cpumask), returns untraced when the CPU is lazy (it switches to init_mm), and
otherwise flushes and traces TLB_REMOTE_SHOOTDOWN. So between a probe's two markers the send events count
the remote flushes the kernel decided on, and each CPU's IPIs (/proc/interrupts) are its shootdown events,
plus its wrong-CPU events, plus the lazy switches that leave no event.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

TASK_SWITCH, REMOTE_SHOOTDOWN, LOCAL_SHOOTDOWN, LOCAL_MM_SHOOTDOWN, REMOTE_SEND_IPI, REMOTE_WRONG_CPU = range(6)
MOUNTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_EVENT = re.compile(r"\[(\d+)\][^:]*:\s+(tlb_flush|tracing_mark_write):\s+(.*)$")
_REASON = re.compile(r"reason:.*\((\d+)\)\s*$")


def find_tracefs() -> tuple[Path | None, str]:
    """(tracefs mount with the tlb:tlb_flush event, "") or (None, why not). Mounts tracefs at
    /sys/kernel/tracing when it is not mounted and this process may (root)."""
    for m in MOUNTS:
        if (Path(m) / "events" / "tlb" / "tlb_flush").is_dir():
            return Path(m), ""
    if os.geteuid() == 0 and Path(MOUNTS[0]).is_dir():
        subprocess.run(["mount", "-t", "tracefs", "nodev", MOUNTS[0]], capture_output=True, check=False)
        if (Path(MOUNTS[0]) / "events" / "tlb" / "tlb_flush").is_dir():
            return Path(MOUNTS[0]), ""
    if any((Path(m) / "events").is_dir() for m in MOUNTS):
        return None, "tracefs has no tlb:tlb_flush event (not x86, or tracepoints compiled out)"
    return None, "tracefs is not mounted and could not be (needs root)"


class TlbTrace:
    """A tracefs instance of its own (instances/mmugather-PID) recording tlb:tlb_flush and the markers
    written with `mark()`; removed on exit. Raises OSError where the instance cannot be made."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "instances" / f"mmugather-{os.getpid()}"
        self.fd = -1

    def __enter__(self) -> TlbTrace:
        self.dir.mkdir()
        (self.dir / "events" / "tlb" / "tlb_flush" / "enable").write_text("1")
        self.fd = os.open(self.dir / "trace_marker", os.O_WRONLY)
        return self

    def mark(self, data: bytes) -> None:
        """Write a marker (preencoded, so that nothing is allocated around the measured call)."""
        os.write(self.fd, data)

    def text(self) -> str:
        return (self.dir / "trace").read_text()

    def __exit__(self, *exc) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        (self.dir / "events" / "tlb" / "tlb_flush" / "enable").write_text("0")
        self.dir.rmdir()


def begin_marker(k: int) -> bytes:
    return f"mmugather-begin {k}".encode()


def end_marker(k: int) -> bytes:
    return f"mmugather-end {k}".encode()


def windows(text: str, cpus: list[int]) -> dict[int, dict]:
    """Per marked window k (between begin_marker(k) and end_marker(k)): {"sends": TLB_REMOTE_SEND_IPI
    events on the CPU that wrote the markers, "shootdown" and "wrong_cpu": per CPU of `cpus` its
    TLB_REMOTE_SHOOTDOWN and TLB_REMOTE_WRONG_CPU events}. Other lines and events outside windows are
    ignored."""
    out: dict[int, dict] = {}
    cur, caller = None, -1
    index = {c: i for i, c in enumerate(cpus)}
    for line in text.splitlines():
        m = _EVENT.search(line)
        if not m:
            continue
        cpu, event, rest = int(m.group(1)), m.group(2), m.group(3).strip()
        if event == "tracing_mark_write":
            word, _, k = rest.partition(" ")
            if word == "mmugather-begin" and k.isdigit():
                cur = out.setdefault(int(k), {"sends": 0, "shootdown": [0] * len(cpus), "wrong_cpu": [0] * len(cpus)})
                caller = cpu
            elif word == "mmugather-end":
                cur = None
            continue
        r = _REASON.search(rest)
        if cur is None or not r:
            continue
        reason = int(r.group(1))
        if reason == REMOTE_SEND_IPI:
            cur["sends"] += cpu == caller
        elif reason == REMOTE_SHOOTDOWN and cpu in index:
            cur["shootdown"][index[cpu]] += 1
        elif reason == REMOTE_WRONG_CPU and cpu in index:
            cur["wrong_cpu"][index[cpu]] += 1
    return out
