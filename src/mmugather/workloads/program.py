"""User threads: the program of each simulated thread, run as a task on its CPU.

User-mode steps are the hardware's: a load or store hits the TLB, or the MMU walks the page tables and
fills the TLB, or the access faults into the kernel (mm/memory.c). Everything a thread does in the
kernel is a kernel method of the policy under test.
"""
from __future__ import annotations

import random
from heapq import heappop, heapreplace
from collections.abc import Callable, Generator
from typing import Any

from mmugather.kernel.rcu import Rcu
from mmugather.kernel.sched import INF, P_PLAIN
from mmugather.kernel.smp import Compute, Sleep
from mmugather.machine.cpu import COMPUTE, RUNNING
from mmugather.machine.engine import Wakeup
from mmugather.mm.mm_types import VM_READ, VM_SHARED, VM_WRITE
from mmugather.mm.pgtable import PAGE_SHIFT, PAGE_SIZE, PMD_SHIFT, _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_RW
from mmugather.workloads import scenario as S


class Process:
    """A simulated process: its mm, its threads, and the named ranges its program refers to."""

    def __init__(self, name: str, mm) -> None:
        self.name = name
        self.mm = mm
        self.ranges: dict[str, tuple[int, int]] = {}
        self.threads: list = []
        self.exiting = False
        self.busy = 0            # threads still running ops other than churn


def vma_flags(spec: S.VmaSpec) -> int:
    return VM_READ | (VM_WRITE if spec.writable else 0) | (VM_SHARED if spec.shared else 0)


def enter_kernel(sim, c, task) -> None:
    """Entry from user mode (a system call, a fault); the soft-lockup watchdog, when on, starts timing."""
    task.in_kernel = True
    if sim.watchdog is not None:
        sim.watchdog.kernel_entry(c)


def return_to_user(sim, c, task) -> None:
    """Return to user mode: the watchdog's scheduling point, then the invariants' user-return checks."""
    task.in_kernel = False
    if sim.watchdog is not None:
        sim.watchdog.user_return(c)
    sim.invariants.resume_user(c, task)


def access(sim, c, task, addr: int, write: bool):
    """One user load/store: TLB hit, hardware walk and fill, or a page fault (then retried once).
    Returns False if the access faulted fatally (SIGSEGV).

    x86 caches the dirty bit in the TLB: a walk for a store sets _PAGE_DIRTY in the PTE and caches the entry
    dirty; a store hitting an entry cached dirty touches no PTE, even when the PTE is gone, and lands in
    whatever page the stale entry maps (checked by `lost-write` once writeback runs). The model's TLB keeps
    one bit for both: an entry is cached writable only from a dirty PTE, so that a store through an entry
    filled from a clean one walks again (as x86's dirty-bit assist does)."""
    vpn = addr >> PAGE_SHIFT
    v = c.tlb.get(vpn)
    if v is not None and (not write or v & 1):
        if write and sim.invariants.check_stores:
            sim.invariants.user_store(c, task.mm, addr, v >> 1)
        yield sim.costs.user_access
        return True
    for attempt in (0, 1):
        pt = sim.tlb.walk(c, task.mm, addr)
        if pt is not None:
            pte = pt.ptes[vpn & 511]
            if pte & _PAGE_PRESENT and (not write or pte & _PAGE_RW):
                if write and not pte & _PAGE_DIRTY:
                    pte = pt.ptes[vpn & 511] = pte | _PAGE_DIRTY | _PAGE_ACCESSED   # the walker sets D
                sim.tlb.fill(c, vpn, pte if pte & _PAGE_DIRTY else pte & ~_PAGE_RW)
                if sim.invariants.in_flight:
                    sim.invariants.tlb_filled(c, vpn)
                yield sim.costs.tlb_miss_walk
                return True
        elif task.mm.huge_pmds and _walk_huge(sim, c, task.mm, addr, write):
            yield sim.costs.tlb_miss_walk
            return True
        if attempt:
            return False
        enter_kernel(sim, c, task)
        ok = yield sim.kernel.do_page_fault(c, task, addr, write)
        return_to_user(sim, c, task)
        if not ok:
            return False
    return False


def _walk_huge(sim, c, mm, addr: int, write: bool) -> bool:
    """The hardware walk ending at a huge PMD (a 2 MiB page, mm/huge_memory.py): if present and it allows
    the access, set its dirty bit for a store and fill the TLB's 2 MiB entry (Tlb.fill_huge()); False
    when no huge PMD maps addr or it forbids the access (the access faults)."""
    key = addr >> PMD_SHIFT
    pmd = mm.huge_pmds.get(key)
    if pmd is None or not pmd & _PAGE_PRESENT or (write and not pmd & _PAGE_RW):
        return False
    if write and not pmd & _PAGE_DIRTY:
        pmd = mm.huge_pmds[key] = pmd | _PAGE_DIRTY | _PAGE_ACCESSED
    vpn = addr >> PAGE_SHIFT
    sim.tlb.fill_huge(c, vpn, pmd if pmd & _PAGE_DIRTY else pmd & ~_PAGE_RW)
    if sim.invariants.in_flight:
        sim.invariants.tlb_filled(c, vpn)
    return True


def syscall(sim, c, task, gen, unmapped: tuple[int, int] | None = None):
    """Run a kernel path as a system call: in kernel mode, then back to user with the return checks
    (`unmapped`: the range an unmap or protection change covered, checked for stale TLB entries); its
    duration on the thread's CPU clock goes to metrics.syscall_ns."""
    enter_kernel(sim, c, task)
    t0 = c.clock
    cached = sim.invariants.syscall_enter(task.mm, *unmapped) if unmapped is not None and task.mm else None
    result = yield gen
    sim.metrics.syscall_ns.append(c.clock - t0)
    return_to_user(sim, c, task)
    if cached is not None and unmapped is not None and task.mm is not None:
        sim.invariants.syscall_return(c, task.mm, *unmapped, cached)
    return result


class Churn:
    """A churn loop in progress: the range, whether it stores, its gap; `waiting` while the thread waits at
    its gap's yield (ChurnLookahead may then run iterations itself); `drawn`, an address the lookahead drew
    for the next access and handed over (-1: none); `accessed`: the lookahead made the next access (an
    `_access_returns` frame stands for it on the task's stack), the thread goes on with its gap."""

    __slots__ = ("lo", "pages", "write", "gap", "waiting", "drawn", "accessed")

    def __init__(self, lo: int, pages: int, write: bool, gap_ns: int) -> None:
        self.lo, self.pages, self.write, self.gap = lo, pages, write, Compute(gap_ns)
        self.waiting = self.accessed = False
        self.drawn = -1

    def next_addr(self, rng) -> int:
        """The next address: the one the lookahead drew, else a fresh draw."""
        addr, self.drawn = self.drawn, -1
        return addr if addr >= 0 else self.lo + (rng.randrange(self.pages) << PAGE_SHIFT)


class ThreadState:
    """The explicit state of one user thread's program, everything its later steps depend on: where it
    stands (`path`: op index and iteration per loop level; `op`, `shift`; `at`, the yield it waits at),
    whether it still counts as busy, whether it leaves alone (exit_thread), and what an op holds across its
    yields (`lo`, `hi`, `aux`, `churn`; cleared when the op ends, so that no stale value tells equal states
    apart). The thread's generator (`run`) keeps no other locals than its CPU, its task and this object, and
    runs the op handlers by `yield from`, so the explorer's fingerprints (explore/state.py `_gen`, which
    encodes a generator on the task's stack by its locals) see exactly this object: how the program is split
    into functions changes no state."""

    __slots__ = ("proc", "path", "op", "shift", "at", "busy", "alone", "lo", "hi", "aux", "churn")

    def __init__(self, proc: Process) -> None:
        self.proc = proc
        self.path: list[int] = []
        self.op: object = None
        self.shift = 0
        self.at = ""
        self.busy = False
        self.alone = False
        self.lo = self.hi = 0
        self.aux: Any = None
        self.churn: Churn | None = None


def thread_program(sim, proc: Process, ops: list):
    """The generator factory of one thread running `ops`, then exiting (exit_mm)."""

    def run(c, task):
        st = sim.thread_states[task.tid] = ThreadState(proc)
        yield from _run_ops(sim, c, task, st, ops)
        yield from _do_exit(sim, c, task, st)
        del sim.thread_states[task.tid]      # an exited thread has no state left

    return run


def _run_ops(sim, c, task, st: ThreadState, ops: list):
    """The ops in order, each by its handler in OPS (True from a handler: the thread exits now)."""
    proc = st.proc
    proc.busy += 1
    st.busy = True
    for op, shift in _steps(sim, c, st, ops):
        if proc.exiting:
            break
        st.op, st.shift = op, shift
        if (yield from OPS[op.__class__](sim, c, task, st, op, shift)):
            break
    st.op = st.aux = None
    if st.busy:
        proc.busy -= 1
        st.busy = False


def _do_exit(sim, c, task, st: ThreadState):
    """do_exit(), kernel/exit.c, as far as the mm goes: unless the thread leaves alone (exit_thread), the
    process exits (exit_group(): sleeping threads are woken to exit), then exit_mm()."""
    proc = st.proc
    if not proc.exiting and not st.alone:
        proc.exiting = True
        for t in proc.threads:
            if t is not task and t.blocked_on == "sleep":
                t.sleep_token += 1
                sim.engine.wake(t, c.clock)
    enter_kernel(sim, c, task)
    st.at = "exit"
    yield sim.costs.syscall
    yield sim.kernel.exit_mm(c, task)


def user_churn(sim, c, task, st: ThreadState, op: S.ChurnOp, shift: int):
    """Loads or stores at random pages of the range, op.gap_ns of user work apart, until the process exits or
    no other thread is busy (this thread no longer counts as busy)."""
    proc = st.proc
    if st.busy:
        proc.busy -= 1
        st.busy = False
    lo, hi = _range(proc, op, shift)
    ch = st.churn = Churn(lo, (hi - lo) >> PAGE_SHIFT, op.write, op.gap_ns)
    while True:
        if ch.accessed:                      # the lookahead made this access (it checked the loop's test)
            ch.accessed = False
        elif proc.exiting or proc.busy <= 0:
            break
        else:
            st.at = "access"
            yield access(sim, c, task, ch.next_addr(sim.rng), op.write)
        st.at = "gap"
        ch.waiting = True
        yield ch.gap
        ch.waiting = False
    st.churn = None
    return False


def user_touch(sim, c, task, st: ThreadState, op: S.TouchOp, shift: int):
    """A load or store at each page of the range in order, op.gap_ns of user work after each."""
    proc = st.proc
    lo, hi = _range(proc, op, shift)
    for addr in range(lo, hi, PAGE_SIZE):
        if proc.exiting:
            break
        st.aux = addr                        # where the op stands (the range follows from op and shift)
        st.at = "access"
        yield access(sim, c, task, addr, op.write)
        if op.gap_ns:
            st.at = "gap"
            yield Compute(op.gap_ns)
    st.aux = None
    return False


def munmap(sim, c, task, st: ThreadState, op: S.MunmapOp, shift: int):
    """munmap(2) of the range."""
    lo, hi = _range(st.proc, op, shift)
    st.at = "syscall"
    yield syscall(sim, c, task, sim.kernel.sys_munmap(c, task, lo, hi - lo), (lo, hi))
    return False


def madvise(sim, c, task, st: ThreadState, op: S.MadviseOp, shift: int):
    """madvise(2) of the range: MADV_DONTNEED (checked for stale entries on return) or MADV_COLLAPSE."""
    lo, hi = _range(st.proc, op, shift)
    st.at = "syscall"
    if op.advice == "collapse":
        yield syscall(sim, c, task, sim.kernel.sys_madvise_collapse(c, task, lo, hi - lo))
    else:
        yield syscall(sim, c, task, sim.kernel.sys_madvise_dontneed(c, task, lo, hi - lo), (lo, hi))
    return False


def mprotect(sim, c, task, st: ThreadState, op: S.MprotectOp, shift: int):
    """mprotect(2) of the range."""
    lo, hi = _range(st.proc, op, shift)
    st.at = "syscall"
    yield syscall(sim, c, task, sim.kernel.sys_mprotect(c, task, lo, hi - lo, op.prot), (lo, hi))
    return False


def get_user_pages_fast(sim, c, task, st: ThreadState, op: S.GupFastOp, shift: int):
    """get_user_pages_fast() of the range (a driver pinning user pages), op.keep_ns of user work while they
    are pinned, then unpin_user_pages()."""
    lo, hi = _range(st.proc, op, shift)
    enter_kernel(sim, c, task)
    st.at = "gup"
    st.aux = yield sim.kernel.get_user_pages_fast(c, task.mm, lo, (hi - lo) >> PAGE_SHIFT, op.write, op.hold_ns)
    task.in_kernel = False
    if sim.watchdog is not None:            # back in user mode (the invariants check nothing here)
        sim.watchdog.user_return(c)
    if op.keep_ns:
        st.at = "keep"
        yield Compute(op.keep_ns)
    pinned, st.aux = st.aux, None
    for pfn in pinned:                       # unpin_user_pages()
        sim.alloc.put_page(c, pfn)
    return False


def mmap(sim, c, task, st: ThreadState, op: S.MmapOp, shift: int):
    """mmap(2) of the op's VMA; the range's name then refers to where it was mapped."""
    spec = op.vma
    f = sim.files.get(spec.file) if spec.file else None
    st.at = "syscall"
    addr = yield syscall(sim, c, task, sim.kernel.sys_mmap(
        c, task, spec.start, spec.size, vma_flags(spec), f, spec.offset >> PAGE_SHIFT, spec.name))
    st.proc.ranges[spec.name] = (addr, addr + spec.size)
    return False


def mremap(sim, c, task, st: ThreadState, op: S.MremapOp, shift: int):
    """mremap(2) MREMAP_FIXED of the range onto the range named op.to, which then refers to it."""
    proc = st.proc
    st.lo, st.hi = _range(proc, op, shift)
    st.aux = proc.ranges[op.to][0]
    st.at = "syscall"
    yield syscall(sim, c, task, sim.kernel.sys_mremap_fixed(c, task, st.lo, st.hi - st.lo, st.aux))
    dest, size = st.aux, st.hi - st.lo
    st.aux, st.lo, st.hi = None, 0, 0
    proc.ranges[op.to] = (dest, dest + size)
    return False


def truncate(sim, c, task, st: ThreadState, op: S.TruncateOp, shift: int):
    """truncate(2) of a file to op.size."""
    st.at = "syscall"
    yield syscall(sim, c, task, sim.kernel.do_truncate(c, task, sim.files[op.file], op.size))
    return False


def fsync(sim, c, task, st: ThreadState, op: S.FsyncOp, shift: int):
    """fsync(2) of a file: its dirty pages written back (mm/page_writeback.py)."""
    st.at = "syscall"
    yield syscall(sim, c, task, sim.kernel.do_fsync(c, task, sim.files[op.file]))
    return False


def device_revoke(sim, c, task, st: ThreadState, op: S.RevokeOp, shift: int):
    """A driver revoking its device buffer (unmap_mapping_range(), then freeing it: mm/pfnmap.py)."""
    st.at = "syscall"
    yield syscall(sim, c, task, sim.kernel.device_revoke(c, task, sim.files[op.file]))
    return False


def fork(sim, c, task, st: ThreadState, op: S.ForkOp, shift: int):
    """fork(2): the child process runs op.program on op.cpu with a copy of the parent's named ranges."""
    proc = st.proc
    st.at = "syscall"
    new_mm = yield syscall(sim, c, task, sim.kernel.sys_fork(c, task))
    child = Process(f"{proc.name}/child", new_mm)
    child.ranges = dict(proc.ranges)
    sim.processes.append(child)
    child.threads.append(sim.engine.spawn(f"{child.name}/0", op.cpu, "user", thread_program(sim, child, op.program),
                                          mm=new_mm, process=child))
    return False


def execve(sim, c, task, st: ThreadState, op: S.ExecOp, shift: int):
    """execve(2) (do_execve below)."""
    st.at = "syscall"
    yield syscall(sim, c, task, do_execve(sim, c, task, st.proc, op))
    return False


def nanosleep(sim, c, task, st: ThreadState, op: S.SleepOp, shift: int):
    """nanosleep(2) of op.ns."""
    st.at = "sleep"
    yield Sleep(op.ns)
    return False


def user_compute(sim, c, task, st: ThreadState, op: S.ComputeOp, shift: int):
    """op.ns of user work."""
    st.at = "compute"
    yield Compute(op.ns)
    return False


def halt(sim, c, task, st: ThreadState, op: S.HaltOp, shift: int):
    """The measurement is over: the machine stops (the engine's `halted`)."""
    sim.engine.halted = True
    st.at = "halt"
    yield Sleep(1)
    return False


def exit_group(sim, c, task, st: ThreadState, op: S.ExitOp, shift: int):
    """exit_group(2): the program ends here, every thread of the process exits (_do_exit)."""
    return True
    yield  # a generator like the other handlers


def exit_thread(sim, c, task, st: ThreadState, op: S.ExitThreadOp, shift: int):
    """exit(2) of this thread: the process goes on if another of its threads is alive."""
    st.alone = any(t is not task and t.alive for t in st.proc.threads)
    return True
    yield  # a generator like the other handlers


# each op's handler: a generator that runs the op and returns True when the thread is to exit now
OPS: dict[type, Callable[..., Generator[Any, Any, bool]]] = {
    S.ChurnOp: user_churn, S.TouchOp: user_touch, S.MunmapOp: munmap, S.MadviseOp: madvise,
    S.GupFastOp: get_user_pages_fast, S.MmapOp: mmap, S.SleepOp: nanosleep, S.ComputeOp: user_compute,
    S.ExitOp: exit_group, S.ExitThreadOp: exit_thread, S.MprotectOp: mprotect, S.MremapOp: mremap,
    S.TruncateOp: truncate, S.ForkOp: fork, S.HaltOp: halt, S.ExecOp: execve, S.FsyncOp: fsync,
    S.RevokeOp: device_revoke,
}


class ChurnLookahead:
    """The engine's Lookahead for churn loops (machine/engine.py). A churning thread waiting at its gap's
    yield, its gap over, its CPU with nothing to attend to: its next iteration touches only its own CPU's
    TLB and paging-structure cache (and reads the page tables, at the time the engine would), so it runs
    at once: the draw, the hit (user_access ns) or the walk and fill (tlb_miss_walk ns), the next gap's
    request; where the access ends at or after the horizon, the CPU is queued there as the engine does
    and the gap's request waits for that event (`Churn.accessed`). The very state changes the engine's
    steps make, without resuming a generator. A fault, or the loop's end, goes step by step (an address
    already drawn is handed to the thread: `Churn.drawn`)."""

    def __init__(self, sim) -> None:
        self.sim = sim
        self.states: dict[int, ThreadState] = sim.thread_states
        rng = sim.rng                        # randrange(n) is _randbelow(n) for n > 0 (random.Random)
        self.below = rng._randbelow if type(rng).randrange is random.Random.randrange else rng.randrange
        # _randbelow(n) inlined by run_until() when it is random.Random's own (getrandbits, rejecting >= n)
        plain = (type(rng).randrange is random.Random.randrange
                 and type(rng)._randbelow is getattr(random.Random, "_randbelow_with_getrandbits", None))
        self.getrandbits = rng.getrandbits if plain else None
        self.bound: Any = None               # the engine engine_parts come from (_bind)
        self.engine_parts: tuple = ()

    def _bind(self, engine) -> None:
        """What run_until() uses of `engine`, looked up once: its queue, its compute-end callbacks, its
        Compute handler (inlined when it is the engine's own), RCU's note_qs and its counters (counted inline
        when note_qs is Rcu's own); and the simulation's thread states, costs, TLB, invariants and draw."""
        gap_handler = engine.handlers[Compute]
        inline_gap = getattr(gap_handler, "__func__", None) is type(engine)._compute
        rcu = engine.rcu
        own_qs = getattr(rcu.note_qs, "__func__", None) is Rcu.note_qs
        sim = self.sim
        self.engine_parts = (engine.heap, engine._done_cbs, gap_handler, inline_gap, rcu.note_qs, rcu,
                             rcu.qs if own_qs else None, self.states, sim.costs, sim.tlb, sim.invariants,
                             self.getrandbits)
        self.bound = engine

    def run_until(self, engine, c, t: float, seq: float) -> bool:
        """Lookahead.run_until(): the queued events before (t, seq), in the engine's order, while each is
        one of these, on a CPU other than c: a churning CPU's compute end, its thread waiting at the gap's
        yield, nothing to attend to (one iteration, inlined: the state changes Engine._compute_done and the
        thread's steps make), or its turn after an access made here (the gap's request); a latency task's
        wake-up (a `Wakeup` timer), its steps, and user work resumed after it (a CPU's turn with the task's
        compute left), with no IPI pending: the engine's own callback and step, which touch that CPU, its
        run queue and the scheduler's counters only. A stale event is dropped, as ClockOrder drops it.
        True: the next event is at or after (t, seq), or none is left; False: the next one is not such an
        event (left queued; where the walk finds no PTE allowing the access, the address already drawn is
        handed to the thread, `Churn.drawn`, and the event goes back to the queue: the fault's steps are
        the thread's own). One loop, the hot path of a churning workload: the per-event work is inline."""
        if self.bound is not engine:
            self._bind(engine)
        heap, done, gap_handler, inline_gap, note_qs, rcu, qs, states, costs, tlb, inv, getrandbits = self.engine_parts
        while heap:
            ev = heap[0]
            et, es, cpu, token, cb = ev
            if et > t or (et == t and es >= seq):
                return True
            if cpu is None:                          # a timer: only a latency task's wake-up elsewhere
                if (cb.__class__ is not Wakeup or cb.task.kind != "latency"
                        or (c is not None and cb.task.cpu == c.id)):
                    return False
                heappop(heap)
                if et > engine.now:
                    engine.now = et
                cb(et)
                continue
            if cpu is c:
                return False
            if token != cpu.token:                   # stale: dropped
                heappop(heap)
                if et > engine.now:
                    engine.now = et
                continue
            task = cpu.curr
            if (cb is None and task is not None and not cpu.pending
                    and (task.kind == "latency" or (task.compute_left and not cpu.attention))):
                heappop(heap)                        # a latency task's steps, or user work resumed after
                if et > engine.now:                  # it: the engine's own step
                    engine.now = et
                nxt = heap[0][0] if heap else INF
                engine.step(cpu, t if t < nxt else nxt)
                continue
            if task is None or cpu.attention or task.compute_left:
                return False
            st = states.get(task.tid)
            if st is None:
                return False
            ch = st.churn
            if ch is None or not ch.waiting or 0 < engine.steps_left <= 2:
                return False
            # ev stays queued until what follows it is known: heapreplace() pops it and queues that at
            # once (the queue's order is the keys', however the list is laid out); the next event's time
            # is then the earlier of ev's children's
            n = len(heap)
            nxt = INF if n < 2 else heap[1][0] if n < 3 or heap[1][0] < heap[2][0] else heap[2][0]
            horizon = t if t < nxt else nxt
            if cb is None:                           # a CPU's turn: only after an access made here
                if not ch.accessed:
                    return False
                if et > engine.now:
                    engine.now = et
                ch.accessed = False
                stack = task.stack
                stack.pop()
                task.send = stack[-1].send
                cpu.horizon = horizon
                clock = cpu.clock
            else:
                proc = st.proc
                if cb is not done[cpu.id] or ch.accessed or ch.drawn >= 0 or proc.exiting or proc.busy <= 0:
                    return False
                now = engine.now
                if et > now:
                    engine.now = et
                clock0, state0 = cpu.clock, cpu.state
                clock = cpu.clock = cpu.compute_end if cpu.compute_end > clock0 else clock0
                cpu.state = RUNNING
                if getrandbits is not None:
                    n = ch.pages
                    k = n.bit_length()
                    r = getrandbits(k)
                    while r >= n:
                        r = getrandbits(k)
                else:
                    r = self.below(ch.pages)
                addr = ch.lo + (r << PAGE_SHIFT)
                vpn = addr >> PAGE_SHIFT
                v = cpu.tlb.get(vpn)
                write = ch.write
                if v is not None and (not write or v & 1):
                    if write and inv.check_stores:
                        inv.user_store(cpu, task.mm, addr, v >> 1)
                    clock += costs.user_access
                else:                                # the walk (_walk(), inlined when unobserved)
                    key = addr >> PMD_SHIFT
                    table = cpu.pwc.get(key)
                    cached = table is not None
                    if not cached:
                        table = task.mm.pte_tables.get(key)
                    pte = table.ptes[vpn & 511] if table is not None else 0
                    if not pte & _PAGE_PRESENT or (write and not pte & _PAGE_RW):
                        ch.drawn = addr              # a fault: the thread's own steps, from this event
                        cpu.clock, cpu.state = clock0, state0
                        engine.now = now             # (still queued)
                        return False
                    if tlb.observer is not None:
                        self._walk(cpu, task.mm, addr, vpn, write)
                    else:
                        if write and not pte & _PAGE_DIRTY:      # the walker sets D (access())
                            pte = table.ptes[vpn & 511] = pte | _PAGE_DIRTY | _PAGE_ACCESSED
                        tlb.walk_fill(cpu, key, None if cached else table, vpn,
                                      pte if pte & _PAGE_DIRTY else pte & ~_PAGE_RW)
                        if inv.in_flight and (cpu.id, vpn) in inv.in_flight_keys:    # (tlb_filled()'s test)
                            inv.tlb_filled(cpu, vpn)
                    clock += costs.tlb_miss_walk
                cpu.horizon = horizon
                cpu.clock = clock
                cpu.point = P_PLAIN
                if clock >= horizon:                 # the engine stops the CPU here, inside access()
                    ch.accessed = True
                    frame = _access_returns()
                    task.stack.append(frame)
                    task.send = frame.send
                    if engine.reserved is cpu:       # (Engine._push_cpu, inlined when no place is kept)
                        heappop(heap)
                        engine.queue(cpu)
                        continue
                    cpu.token += 1
                    engine.seq += 1
                    heapreplace(heap, (clock, engine.seq, cpu, cpu.token, None))
                    continue
            engine.steps_left -= 2                   # access() returned, the gap's request
            if not inline_gap:
                heappop(heap)
                gap_handler(cpu, task, ch.gap)
                continue
            if qs is None or cpu.preempt_count or cpu.irqs_off or rcu.pending:     # Engine._compute
                note_qs(cpu)
            else:                                    # (Rcu.note_qs() where it would only count)
                qs[cpu.id] += 1
            task.compute_left = 0
            cpu.state = COMPUTE
            cpu.compute_end = end = clock + ch.gap.ns
            cpu.token += 1
            engine.seq += 1
            heapreplace(heap, (end, engine.seq, cpu, cpu.token, done[cpu.id] or engine._compute_done_cb(cpu)))
        return True

    def reads_table(self, engine, table) -> bool:
        """Lookahead.reads_table(): run_until() reads PTEs only in a churning thread's walk, of the tables of
        its range's PMD slots (its mm's, or through its CPU's paging-structure cache, which may still hold a
        table moved or freed since), and, when lost writes are checked, of any mapping of a store's page."""
        if self.sim.invariants.check_stores:
            return True
        key = table.base >> PMD_SHIFT
        for st in self.states.values():
            ch = st.churn
            if ch is not None and ch.lo >> PMD_SHIFT <= key <= (ch.lo + (ch.pages << PAGE_SHIFT) - 1) >> PMD_SHIFT:
                return True
        for cpu in engine.cpus:                         # (a plain loop: no generator per call)
            if table in cpu.pwc.values():
                return True
        return False

    def _walk(self, c, mm, addr: int, vpn: int, write: bool) -> bool:
        """access()'s walk and fill, if the walk finds a PTE that allows the access (else nothing done)."""
        key = addr >> PMD_SHIFT
        table = c.pwc.get(key)
        cached = table is not None
        if not cached:
            table = mm.pte_tables.get(key)
            if table is None:
                return False
        pte = table.ptes[vpn & 511]
        if not pte & _PAGE_PRESENT or (write and not pte & _PAGE_RW):
            return False
        sim = self.sim
        tlb = sim.tlb
        observed = tlb.observer is not None
        if observed:                         # observers are told of the walk itself
            tlb.walk(c, mm, addr)
        if write and not pte & _PAGE_DIRTY:  # the walker sets D (access())
            pte = table.ptes[vpn & 511] = pte | _PAGE_DIRTY | _PAGE_ACCESSED
        if observed:
            tlb.fill(c, vpn, pte if pte & _PAGE_DIRTY else pte & ~_PAGE_RW)
        else:                                # Tlb.walk()'s side effect (fill_pwc) and fill, at once
            tlb.walk_fill(c, key, None if cached else table, vpn, pte if pte & _PAGE_DIRTY else pte & ~_PAGE_RW)
        if sim.invariants.in_flight:
            sim.invariants.tlb_filled(c, vpn)
        return True


def _access_returns():
    """access() where ChurnLookahead leaves it when the engine's step ends inside it: it returns True when
    resumed (so that a thread that steps from there counts the same steps as after a real access())."""
    return True
    yield  # a generator


def do_execve(sim, c, task, proc: Process, op: S.ExecOp):
    """do_execve(), fs/exec.c, reduced to the mm work: de_thread() (the other threads exit), exec_mmap()
    (the old mm goes to its last user's exit_mmap), setup_arg_pages() -> shift_arg_pages()."""
    kernel = sim.kernel
    others = [t for t in proc.threads if t is not task and t.alive]
    if others:
        proc.exiting = True
        while any(t.alive for t in others):
            yield Sleep(10_000)
        proc.exiting = False
    new_mm = sim.new_mm()
    vma = kernel.setup_stack(new_mm, op.stack_pages)
    yield kernel.exec_mmap(c, task, new_mm)
    proc.mm = new_mm
    yield kernel.shift_arg_pages(c, vma, op.shift)
    proc.ranges["[stack]"] = (vma.start, vma.end)


def _steps(sim, c, st: ThreadState, ops: list, shift: int = 0, deadline: int | None = None):
    """The ops of a program in order with the byte shift of their ranges, loops unrolled as they run:
    whether another iteration starts is decided when it is reached, against the CPU's clock then. Each
    level keeps its op index and iteration count in st.path."""
    path = st.path
    d = len(path)
    path += (0, 0)
    for k, op in enumerate(ops):
        path[d], path[d + 1] = k, 0
        if not isinstance(op, S.LoopOp):
            yield op, shift
            continue
        end = deadline
        if op.duration_ns is not None:
            end = c.clock + op.duration_ns if end is None else min(end, c.clock + op.duration_ns)
        i = 0
        while (op.times is None or i < op.times) and (end is None or c.clock < end):
            yield from _steps(sim, c, st, op.body, shift + i * op.stride, end)
            if op.count and (end is None or c.clock <= end):
                sim.metrics.loop_iterations += 1
            i += 1
            path[d + 1] = i
    del path[d:]


def _range(proc: Process, op, shift: int = 0) -> tuple[int, int]:
    start, end = proc.ranges[op.vma]
    lo = start + op.offset + shift
    hi = end if op.size is None else lo + op.size
    assert lo < end and hi <= end, "checked when the scenario was loaded"
    return lo, hi
