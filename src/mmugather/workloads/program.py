"""User threads: the program of each simulated thread, run as a task on its CPU.

User-mode steps are the hardware's: a load or store hits the TLB, or the MMU walks the page tables and
fills the TLB, or the access faults into the kernel (mm/memory.c). Everything a thread does in the
kernel is a kernel method of the policy under test.
"""
from __future__ import annotations

from mmugather.kernel.smp import Compute, Sleep
from mmugather.mm.mm_types import VM_READ, VM_SHARED, VM_WRITE
from mmugather.mm.pgtable import PAGE_SHIFT, PAGE_SIZE, _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_RW
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
        if attempt:
            return False
        enter_kernel(sim, c, task)
        ok = yield sim.kernel.do_page_fault(c, task, addr, write)
        return_to_user(sim, c, task)
        if not ok:
            return False
    return False


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


def thread_program(sim, proc: Process, ops: list):
    """The generator factory of one thread running `ops`, then exiting (exit_mm)."""

    def run(c, task):
        rng = sim.rng
        kernel = sim.kernel
        proc.busy += 1
        busy = True
        alone = False            # exit_thread: this thread leaves, the process goes on
        for op, shift in _steps(sim, c, ops):
            if proc.exiting:
                break
            if isinstance(op, S.ChurnOp):
                if busy:
                    proc.busy -= 1
                    busy = False
                lo, hi = _range(proc, op, shift)
                pages = (hi - lo) >> PAGE_SHIFT
                while not proc.exiting and proc.busy > 0:
                    addr = lo + (rng.randrange(pages) << PAGE_SHIFT)
                    yield access(sim, c, task, addr, op.write)
                    yield Compute(op.gap_ns)
                continue
            if isinstance(op, S.TouchOp):
                lo, hi = _range(proc, op, shift)
                for addr in range(lo, hi, PAGE_SIZE):
                    if proc.exiting:
                        break
                    yield access(sim, c, task, addr, op.write)
                    if op.gap_ns:
                        yield Compute(op.gap_ns)
            elif isinstance(op, S.MunmapOp):
                lo, hi = _range(proc, op, shift)
                yield syscall(sim, c, task, kernel.sys_munmap(c, task, lo, hi - lo), (lo, hi))
            elif isinstance(op, S.MadviseOp) and op.advice == "collapse":
                lo, hi = _range(proc, op, shift)
                yield syscall(sim, c, task, kernel.sys_madvise_collapse(c, task, lo, hi - lo))
            elif isinstance(op, S.MadviseOp):
                lo, hi = _range(proc, op, shift)
                yield syscall(sim, c, task, kernel.sys_madvise_dontneed(c, task, lo, hi - lo), (lo, hi))
            elif isinstance(op, S.GupFastOp):
                lo, hi = _range(proc, op, shift)
                enter_kernel(sim, c, task)
                pinned = yield kernel.get_user_pages_fast(c, task.mm, lo, (hi - lo) >> PAGE_SHIFT, op.write,
                                                          op.hold_ns)
                task.in_kernel = False
                if sim.watchdog is not None:            # back in user mode (the invariants check nothing here)
                    sim.watchdog.user_return(c)
                if op.keep_ns:
                    yield Compute(op.keep_ns)
                for pfn in pinned:                       # unpin_user_pages()
                    sim.alloc.put_page(c, pfn)
            elif isinstance(op, S.MmapOp):
                spec = op.vma
                f = sim.files.get(spec.file) if spec.file else None
                addr = yield syscall(sim, c, task, kernel.sys_mmap(
                    c, task, spec.start, spec.size, vma_flags(spec), f, spec.offset >> PAGE_SHIFT, spec.name))
                proc.ranges[spec.name] = (addr, addr + spec.size)
            elif isinstance(op, S.SleepOp):
                yield Sleep(op.ns)
            elif isinstance(op, S.ComputeOp):
                yield Compute(op.ns)
            elif isinstance(op, S.ExitOp):
                break
            elif isinstance(op, S.ExitThreadOp):
                alone = any(t is not task and t.alive for t in proc.threads)
                break
            elif isinstance(op, S.MprotectOp):
                lo, hi = _range(proc, op, shift)
                yield syscall(sim, c, task, kernel.sys_mprotect(c, task, lo, hi - lo, op.prot), (lo, hi))
            elif isinstance(op, S.MremapOp):
                lo, hi = _range(proc, op, shift)
                dest = proc.ranges[op.to][0]
                yield syscall(sim, c, task, kernel.sys_mremap_fixed(c, task, lo, hi - lo, dest))
                proc.ranges[op.to] = (dest, dest + hi - lo)
            elif isinstance(op, S.TruncateOp):
                yield syscall(sim, c, task, kernel.do_truncate(c, task, sim.files[op.file], op.size))
            elif isinstance(op, S.FsyncOp):
                yield syscall(sim, c, task, kernel.do_fsync(c, task, sim.files[op.file]))
            elif isinstance(op, S.RevokeOp):
                yield syscall(sim, c, task, kernel.device_revoke(c, task, sim.files[op.file]))
            elif isinstance(op, S.ForkOp):
                new_mm = yield syscall(sim, c, task, kernel.sys_fork(c, task))
                child = Process(f"{proc.name}/child", new_mm)
                child.ranges = dict(proc.ranges)
                sim.processes.append(child)
                child.threads.append(sim.engine.spawn(f"{child.name}/0", op.cpu, "user",
                                                      thread_program(sim, child, op.program),
                                                      mm=new_mm, process=child))
            elif isinstance(op, S.HaltOp):
                sim.engine.halted = True
                yield Sleep(1)
            elif isinstance(op, S.ExecOp):
                yield syscall(sim, c, task, do_execve(sim, c, task, proc, op))
        if busy:
            proc.busy -= 1
        if not proc.exiting and not alone:
            proc.exiting = True          # exit_group(): every thread of the process exits
            for t in proc.threads:
                if t is not task and t.blocked_on == "sleep":
                    t.sleep_token += 1
                    sim.engine.wake(t, c.clock)
        enter_kernel(sim, c, task)
        yield sim.costs.syscall
        yield kernel.exit_mm(c, task)

    return run


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


def _steps(sim, c, ops: list, shift: int = 0, deadline: int | None = None):
    """The ops of a program in order with the byte shift of their ranges, loops unrolled as they run:
    whether another iteration starts is decided when it is reached, against the CPU's clock then."""
    for op in ops:
        if not isinstance(op, S.LoopOp):
            yield op, shift
            continue
        end = deadline
        if op.duration_ns is not None:
            end = c.clock + op.duration_ns if end is None else min(end, c.clock + op.duration_ns)
        i = 0
        while (op.times is None or i < op.times) and (end is None or c.clock < end):
            yield from _steps(sim, c, op.body, shift + i * op.stride, end)
            if op.count and (end is None or c.clock <= end):
                sim.metrics.loop_iterations += 1
            i += 1


def _range(proc: Process, op, shift: int = 0) -> tuple[int, int]:
    start, end = proc.ranges[op.vma]
    lo = start + op.offset + shift
    hi = end if op.size is None else lo + op.size
    assert lo < end and hi <= end, "checked when the scenario was loaded"
    return lo, hi
