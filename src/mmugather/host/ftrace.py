"""The x86 `tlb:tlb_flush` tracepoint, read through a private tracefs instance.

include/trace/events/tlb.h (Linux 6.18) records `pages` and a `reason` (enum tlb_flush_reason,
include/linux/mm_types.h). In arch/x86/mm/tlb.c v6.18, native_flush_tlb_multi() traces TLB_REMOTE_SEND_IPI
once per remote flush it is asked for, before it drops lazy CPUs (unless tables were freed). On a CPU
that takes the IPI, flush_tlb_func() (!local) traces TLB_REMOTE_WRONG_CPU when the CPU no longer runs that
mm (it only leaves the mm's cpumask), returns untraced when the CPU is lazy (it switches to init_mm), and
otherwise flushes and traces TLB_REMOTE_SHOOTDOWN. So between a probe's two markers the send events count
the remote flushes the kernel decided on, and each CPU's IPIs (/proc/interrupts) are its shootdown events,
plus its wrong-CPU events, plus the lazy switches that leave no event.

`sched:sched_switch` is recorded too: a user task from outside the probe that runs on a CPU during a call
loads its own mm there (switch_mm_irqs_off()), so the probe's later flushes find that CPU on another mm,
which the model's idle CPU never is. The windows count those switches per CPU.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

TASK_SWITCH, REMOTE_SHOOTDOWN, LOCAL_SHOOTDOWN, LOCAL_MM_SHOOTDOWN, REMOTE_SEND_IPI, REMOTE_WRONG_CPU = range(6)
MOUNTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
_EVENT = re.compile(r"\[(\d+)\][^:]*:\s+(tlb_flush|tracing_mark_write|sched_switch):\s+(.*)$")
_PIDS = re.compile(r"prev_pid=(\d+).*next_pid=(\d+)")
_EVENTS = ("tlb/tlb_flush", "sched/sched_switch")
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
    """A tracefs instance of its own (instances/mmugather-PID) recording tlb:tlb_flush, sched:sched_switch
    and the markers written with `mark()`; removed on exit. Raises OSError where the instance cannot be made."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "instances" / f"mmugather-{os.getpid()}"
        self.fd = -1

    def __enter__(self) -> TlbTrace:
        self.dir.mkdir()
        for e in _EVENTS:
            (self.dir / "events" / e / "enable").write_text("1")
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
        for e in _EVENTS:
            (self.dir / "events" / e / "enable").write_text("0")
        self.dir.rmdir()


def begin_marker(k: int) -> bytes:
    return f"mmugather-begin {k}".encode()


def end_marker(k: int) -> bytes:
    return f"mmugather-end {k}".encode()


def windows(text: str, cpus: list[int], own=frozenset(), is_user=lambda pid: True) -> dict[int, dict]:
    """Per marked window k (between begin_marker(k) and end_marker(k)): {"sends": TLB_REMOTE_SEND_IPI
    events on the CPU that wrote the markers, "shootdown" and "wrong_cpu": per CPU of `cpus` its
    TLB_REMOTE_SHOOTDOWN and TLB_REMOTE_WRONG_CPU events, "others": per CPU how many times a task ran
    there that is not idle, not one of `own` (the probe's thread ids) and `is_user(pid)`: one per switch
    to such a task, or per switch away from one whose switch in was not seen (it began before the window,
    or the trace lacks it: on this 6.18 guest, vCPU 1's switches from idle to a task were missing)}.
    Other lines and events outside windows are ignored."""
    out: dict[int, dict] = {}
    cur, caller = None, -1
    index = {c: i for i, c in enumerate(cpus)}
    user: dict[int, bool] = {}
    running: dict[int, int] = {}                        # CPU -> the other user task running there

    def other(pid: int) -> bool:
        if not pid or pid in own:
            return False
        got = user.get(pid)
        if got is None:
            got = user[pid] = is_user(pid)
        return got
    for line in text.splitlines():
        m = _EVENT.search(line)
        if not m:
            continue
        cpu, event, rest = int(m.group(1)), m.group(2), m.group(3).strip()
        if event == "tracing_mark_write":
            word, _, k = rest.partition(" ")
            if word == "mmugather-begin" and k.isdigit():
                cur = out.setdefault(int(k), {"sends": 0, "shootdown": [0] * len(cpus), "wrong_cpu": [0] * len(cpus),
                                              "others": [0] * len(cpus)})
                caller = cpu
                running.clear()
            elif word == "mmugather-end":
                cur = None
            continue
        if event == "sched_switch":
            pids = _PIDS.search(rest)
            if cur is not None and cpu in index and pids:
                prev, nxt = int(pids.group(1)), int(pids.group(2))
                if other(prev) and running.get(cpu) != prev:
                    cur["others"][index[cpu]] += 1
                running[cpu] = nxt if other(nxt) else 0
                if running[cpu]:
                    cur["others"][index[cpu]] += 1
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


def is_user_task(pid: int) -> bool:
    """Whether `pid` is a user task (it has an mm): not a kernel thread by /proc/PID/status ("Kthread: 1",
    or no VmSize line where the kernel predates "Kthread:"). A task gone by now counts as a user task
    (kernel threads seldom exit)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    m = re.search(r"^Kthread:\s*(\d)", status, re.M)
    return m.group(1) == "0" if m else "VmSize:" in status
