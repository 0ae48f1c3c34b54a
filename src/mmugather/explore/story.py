"""A schedule told as a story in kernel terms: which CPU ran which kernel function, took or dropped which
lock, cleared which PTE, flushed which TLB, freed which frame, and where a stale TLB entry was used.

The story comes from replaying the schedule with the machine's TLB, allocator and IPI operations logged and
the page tables compared before and after every step; the kernel functions are the generators on each
task's stack (their code names are the kernel function names). After the violation the replay goes on with
default choices for a while, to show the stale entry being used (or dropped by a late flush).
"""
from __future__ import annotations

from typing import Any

from mmugather.explore.controlled import RESCHED
from mmugather.explore.search import default_choice, run_machine
from mmugather.kernel.locking import (
    COND_RESCHED, DownRead, DowngradeWrite, DownWrite, MutexLock, MutexUnlock, SpinLock, SpinUnlock, UpRead,
    UpWrite,
)
from mmugather.kernel.smp import Compute, Sleep, SmpCallFunctionMany
from mmugather.mm.page_alloc import FREE, KIND_NAMES
from mmugather.machine.cpu import SPINNING
from mmugather.workloads import program

_ACCESS = program.access.__code__
_WRAPPERS = {program.syscall.__code__.co_name, _ACCESS.co_name, "run"}
EPILOGUE = 300


def tell(target, schedule, *, max_steps: int = 100_000, trace=None) -> dict:
    """Replay `schedule` (deviations [[step, actor], ...]) and tell it. Returns {"violation", "steps" (taken
    up to the violation), "lines" (each starting with its step, from 0 as in the schedule), "stale_use"};
    `trace`, if given, is a callable receiving the machine before the run (to attach a Chrome trace)."""
    m = target.build()
    m.engine.scheduler.record_requests()
    if trace is not None:
        trace(m)
    teller = _Teller(m, {int(s): int(a) for s, a in schedule}, max_steps)
    violation, _ = run_machine(m, teller.choose, log=teller.log)
    teller.flush_step()
    if violation is not None and not teller.violation_seen:
        teller.emit(None, f"VIOLATION {violation['kind']}: {violation['detail']}")
    return {"violation": violation, "steps": teller.violation_step if teller.violation_step is not None
            else teller.step, "lines": teller.lines, "stale_use": teller.stale_use}


class _Teller:
    def __init__(self, m, deviations: dict[int, int], max_steps: int) -> None:
        self.m = m
        self.eng = m.engine
        self.control = m.engine.scheduler
        self.log: list = []
        self.deviations = deviations
        self.max_steps = max_steps
        self.step = 0
        self.lines: list[str] = []
        self.pending: tuple | None = None    # what was taken before the step in flight
        self.violation_seen = False
        self.violation_step: int | None = None
        self.after = 0
        self.stale: dict[tuple[int, int], tuple[int, int]] = {}   # (cpu, vpn) -> (pfn, step freed)
        self.stale_use: dict[str, Any] | None = None
        self.ptes = self._ptes()

    # ------------------------------------------------------------------ the chooser
    def choose(self, enabled):
        self.flush_step()
        inv = self.m.invariants.violations
        if inv and not self.violation_seen:
            self.violation_seen = True
            self.violation_step = self.step
            self.emit(None, f"VIOLATION {inv[0]['kind']}: {inv[0]['detail']}")
        if self.violation_seen:
            self.after += 1
            if self.stale_use is not None or self.after > EPILOGUE:
                return None
        if self.step >= self.max_steps:
            return None
        a = self.deviations.get(self.step)
        if a is None or a not in enabled:
            a = default_choice(enabled, self.control.last_task, self.control.yielded)
        eng = self.eng
        if a <= RESCHED:
            self.pending = (a, eng.cpus[RESCHED - a], None, (), False, None)
        elif a < 0:
            c = eng.cpus[-1 - a]
            self.pending = (a, c, None, (), False, [(f, s.id) for _, _, f, s in sorted(c.pending)])
        else:
            task = eng.tasks[a]
            c = eng.cpus[task.cpu]
            prev = c.curr if c.curr is not task else None
            self.pending = (a, c, task, tuple(task.stack), task.in_kernel, prev)
        self.step += 1
        self.log.clear()
        return a

    # ------------------------------------------------------------------ what a step did
    def flush_step(self) -> None:
        if self.pending is None:
            return
        a, c, task, stack0, k0, extra = self.pending
        self.pending = None
        events: list[str] = []
        if a <= RESCHED:
            events.append(f"scheduler tick: need_resched set ({c.runqueue[0].name} waits)" if c.runqueue
                          else "scheduler tick: need_resched set")
        elif a < 0:
            for f, sender in extra:
                events.append(f"takes the IPI from CPU {sender}: {getattr(f, '__name__', 'handler')}()")
        else:
            if extra is not None:
                events.append(f"preempts {extra.name}{_where(extra)}")
            new = [g for g in task.stack if g not in stack0]
            names = [g.gi_code.co_name for g in new if g.gi_code.co_name not in _WRAPPERS]
            if names:
                events.append("-> " + " > ".join(names))
        events += self._log_events(c)
        events += self._pte_events()
        if task is not None:
            events += self._request_event(c, task)
            if k0 and not task.in_kernel and task.alive:
                events.append("returns to user space")
            if not task.alive:
                events.append("exits")
        if events:
            cpu = c.id
            who = task.name if task is not None else "tick" if a <= RESCHED else "irq"
            self.emit(cpu, f"{who:<7} " + "; ".join(events))

    def emit(self, cpu, text: str) -> None:
        tag = f"CPU {cpu}" if cpu is not None else "     "
        mark = "   " if self.violation_step is None or cpu is None else "(+)"
        self.lines.append(f"{self.step - 1:>5} {mark} {tag}  {text}")      # the step just taken, from 0

    def _request_event(self, c, task) -> list[str]:
        v = self.control.last_request
        if v is None:
            return self._user_access(c, task)
        cls = v.__class__
        if cls is SpinLock:
            return [f"spins on {v.lock.name}" if c.state == SPINNING and v.lock.owner is not c
                    else f"takes {v.lock.name}"]
        if cls is SpinUnlock:
            return [f"drops {v.lock.name}"]
        if cls in (DownRead, DownWrite):
            op = "down_read" if cls is DownRead else "down_write"
            return [f"{op}({v.sem.name})" + ("" if task.blocked_on is None else ": blocks")]
        if cls is DowngradeWrite:
            return [f"downgrade_write({v.sem.name})"]
        if cls in (UpRead, UpWrite):
            return [f"{'up_read' if cls is UpRead else 'up_write'}({v.sem.name})"]
        if cls in (MutexLock, MutexUnlock):
            return [f"{'mutex_lock' if cls is MutexLock else 'mutex_unlock'}({v.mutex.name})"]
        if cls is SmpCallFunctionMany:
            targets = ", ".join(f"CPU {t}" for t in v.targets)
            return [f"sends {getattr(v.func, '__name__', 'an')} IPI to {targets} and waits"] if v.targets else []
        if v is COND_RESCHED:
            return ["cond_resched()"]
        if cls is Compute:
            return []
        if cls is Sleep:
            return ["sleeps"]
        return []

    def _user_access(self, c, task) -> list[str]:
        """A user load or store that hit the TLB (the walk and the fault show as their own events)."""
        top = task.stack[-1] if task.stack else None
        if task.in_kernel or top is None or top.gi_code is not _ACCESS or top.gi_frame is None:
            return []
        loc = top.gi_frame.f_locals
        addr, v = loc.get("addr"), loc.get("v")
        if addr is None or v is None or any(e[0] == "fill" for e in self.log):
            return []
        pfn = v >> 1
        op = "store" if loc.get("write") else "load"
        text = f"user {op} {addr:#x} hits the TLB: pfn {pfn}"
        pt = task.mm.pte_tables.get(addr >> 21) if task.mm is not None else None
        pte = pt.ptes[(addr >> 12) & 511] if pt is not None else 0
        if pte & 1 and pte >> 12 == pfn and (op == "load" or pte & 2):
            return [text]
        kind = self.m.alloc.kind[pfn]
        freed = self.stale.get((c.id, addr >> 12))
        if kind == FREE or (freed is not None and freed[0] == pfn):
            text += " -- STALE: that frame was freed" + (f" at step {freed[1]}" if freed else "") + (
                "" if kind == FREE else f" and is now a {KIND_NAMES[kind]} frame")
        else:
            text += " -- STALE: the page tables no longer map it"
        if self.stale_use is None:
            self.stale_use = {"step": self.step - 1, "cpu": c.id, "addr": addr, "pfn": pfn, "op": op}
        return [text]

    def _log_events(self, c) -> list[str]:
        out = []
        for e in self.log:
            name = e[0]
            if name == "fill":
                cpu, (vpn, pte) = e[1], e[2]
                out.append(f"TLB fill {vpn << 12:#x} -> pfn {pte >> 12}{' rw' if pte & 2 else ' ro'}")
            elif name == "flush_all":
                out.append(f"flushes CPU {e[1]}'s TLB")
            elif name == "flush_one":
                out.append(f"flushes CPU {e[1]}'s TLB entry {e[2][0]:#x}")
            elif name == "free":
                _, cpu, freed, mapped = e
                what = ", ".join(f"pfn {pfn} ({KIND_NAMES[kind]})" for pfn, kind in freed[:6])
                more = f" and {len(freed) - 6} more" if len(freed) > 6 else ""
                out.append(f"frees {what}{more}")
                for kind, x, where, pfn in mapped:
                    if kind == "tlb":
                        self.stale[(x, where)] = (pfn, self.step - 1)
                        out.append(f"!! CPU {x}'s TLB still maps {where << 12:#x} -> pfn {pfn}")
                    else:
                        out.append(f"!! CPU {x}'s paging-structure cache still points to page table pfn {pfn} "
                                   f"(for {where:#x})")
            elif name in ("walk", "fill_pwc"):
                continue
            else:
                args = ", ".join(f"{a:#x}" if isinstance(a, int) and a > 4096 else str(a) for a in e[2])
                out.append(f"tlb.{name}(CPU {e[1]}{', ' + args if args else ''})")
        return out

    def _ptes(self) -> dict:
        out = {}
        for mm in self.m.mms:
            for key, pt in mm.pte_tables.items():
                out[(mm.id, key)] = bytes(pt.ptes)
        return out

    def _pte_events(self) -> list[str]:
        now = self._ptes()
        if now == self.ptes:
            return []
        out = []
        for (mmid, key), raw in now.items():
            old = self.ptes.get((mmid, key))
            if old == raw:
                continue
            pt = next(mm for mm in self.m.mms if mm.id == mmid).pte_tables[key]
            before = memoryview(old).cast("q") if old is not None else None
            for i, pte in enumerate(pt.ptes):
                was = before[i] if before is not None else 0
                if pte == was:
                    continue
                addr = (key << 21) + (i << 12)
                if pte == 0:
                    out.append(f"clears PTE {addr:#x} (was pfn {was >> 12})")
                else:
                    out.append(f"sets PTE {addr:#x} -> pfn {pte >> 12}{' rw' if pte & 2 else ' ro'}")
        for (mmid, key) in self.ptes:
            if (mmid, key) not in now:
                out.append(f"unhooks the PTE table of {key << 21:#x}")
        self.ptes = now
        return out


def _where(task) -> str:
    """Where a task stands in the kernel: ' in zap_pmd_range' (its innermost kernel function)."""
    for g in reversed(task.stack):
        name = g.gi_code.co_name
        if name not in _WRAPPERS:
            return f" in {name}"
    return " in user mode"


