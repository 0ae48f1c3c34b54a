"""One simulation: a machine (CPUs, memory, TLBs, IPIs), a kernel policy, and a scenario run on them.

The top of the simulation layers: it builds the machine (machine/), the kernel of a policy (policies/, on
mm/ and arch/) and the processes of a scenario (workloads/), so it imports all of them and none of them
imports it. What a caller varies is handed in: the engine's scheduler and observers, the RNG's class, an
observer of TLB operations (explore/ hands in its own; the defaults run free and unobserved).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import random
from collections.abc import Callable, Iterable

from mmugather import fastpath
from mmugather.kernel.rcu import Rcu
from mmugather.kernel.smp import Sleep
from mmugather.machine.costs import DEFAULT_COSTS, Costs
from mmugather.machine.engine import Engine, EngineObserver, Scheduler, Wakeup
from mmugather.machine.tlb import Tlb, TlbObserver
from mmugather.mm.mm_types import AddressSpace, MmStruct, Vma
from mmugather.mm.mmu_notifier import SleepingSubscriber
from mmugather.mm.page_alloc import FILE, GFP_KERNEL, PGTABLE, PageAlloc
from mmugather.mm.pgtable import HPAGE_PMD_NR, PAGE_SHIFT
from mmugather.report.metrics import Metrics
from mmugather.sim.invariants import Invariants
from mmugather.sim.watchdog import SoftLockupWatchdog
from mmugather.workloads import scenario as S
from mmugather.workloads.program import ChurnLookahead, Process, ThreadState, thread_program, vma_flags


def _has_pfn_maps(scenario: S.Scenario) -> bool:
    """Whether any VMA of the scenario, set up or mmap()ed by a program, is a PFN map. The answer for the
    last scenario asked about is kept (a Scenario is frozen; the explorer builds one per execution)."""
    last, answer = _PFN_MAPS_LAST
    if last is scenario:
        return answer
    answer = any(v.kind == "pfnmap" for p in scenario.process for v in p.vma) or any(
        isinstance(op, S.MmapOp) and op.vma.kind == "pfnmap"
        for p in scenario.process for t in p.thread for op, _ in S.walk_ops(t.program))
    _PFN_MAPS_LAST[:] = [scenario, answer]
    return answer


_PFN_MAPS_LAST: list = [None, False]       # _has_pfn_maps(): the last scenario and its answer


@functools.cache
def _keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed memory for reuse (mallopt(3)): numpy temporaries up to 16 MiB come
    from the heap instead of fresh mmap()s, and up to 256 MiB of free heap is kept, so a run stops paying
    the host kernel a page fault per 4 KiB of every temporary (up to a third of a teardown's time). Larger
    arrays are still mmap()ed: keeping them would raise the peak host memory per simulated page. Not
    glibc: nothing to do."""
    libc = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(libc).mallopt
    except (OSError, AttributeError, TypeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 16 << 20)
    mallopt(M_TRIM_THRESHOLD, 256 << 20)


# Default bounds of one run (docs/reliability.md): a scenario that never ends in simulated time (a `sleep`
# of 9e18 ns beside a `churn`, a `loop` of 1e12 iterations) stops with LimitExceeded naming the bound.
# The built-in workloads end within 0.2 s of simulated time and a few million steps.
DEFAULT_MAX_SIM_NS = 10_000_000_000        # 10 s of simulated time
DEFAULT_MAX_STEPS = 500_000_000            # task resumptions that spend no time (returns, requests, 0 ns)


class Simulation:
    """Build the machine and kernel for `policy_cls`, set up the scenario, run it, report metrics.
    `max_sim_ns`/`max_steps` bound the run (defaults above; None: unbounded). `lookahead` (with `fast`, on
    the free-running machine): churn loops' iterations at once where nothing can reach them
    (workloads/program.py ChurnLookahead); False for the engine's steps only (tests/test_lookahead.py)."""

    fingerprint: Callable[[], object]    # an explorer target's machine only: its state's key (explore/target.py)

    def __init__(self, scenario: S.Scenario, policy_cls, *, cpus: int | None = None, preempt: str | None = None,
                 fail_nowait: float | None = None, seed: int | None = None, costs: Costs | None = None,
                 arch: str | None = None, without_fixes=(), fast: bool = True, scheduler: Scheduler | None = None,
                 observers: Iterable[EngineObserver] = (), rng_class: Callable[[int], random.Random] = random.Random,
                 tlb_observer: TlbObserver | None = None, max_sim_ns: int | None = DEFAULT_MAX_SIM_NS,
                 max_steps: int | None = DEFAULT_MAX_STEPS, lookahead: bool = True) -> None:
        m = scenario.machine
        _keep_freed_memory()
        self.fast = fast       # bulk teardown where exact (fastpath/); False: every step (explore/)
        self.arch_name = arch or next(iter(policy_cls.arches))
        if self.arch_name not in policy_cls.arches:
            from mmugather.errors import InputError
            raise InputError(f"--arch: policy {policy_cls.name} does not run on {self.arch_name} "
                             f"(it runs on: {', '.join(policy_cls.arches)})")
        self.without_fixes = tuple(without_fixes)
        self.scenario = scenario
        self.ncpus = cpus if cpus is not None else m.cpus
        self.preempt = preempt if preempt is not None else m.preempt
        self.fail_nowait = fail_nowait if fail_nowait is not None else m.fail_nowait
        self.seed = seed if seed is not None else scenario.seed
        self.costs = costs or DEFAULT_COSTS
        self.rng = rng_class(self.seed)
        self.metrics = Metrics(self.ncpus)
        self.invariants = Invariants(self.metrics)
        # the soft-lockup watchdog (a latency invariant) watches the engine only when a threshold is set
        self.watchdog = SoftLockupWatchdog(m.softlockup_ns, self.invariants) if m.softlockup_ns else None
        watching = [*observers, self.watchdog] if self.watchdog is not None else observers
        self.thread_states: dict[int, ThreadState] = {}    # each running user thread's program state, by tid
        # the churn loops' lookahead on the fast path of the free-running machine (its steps otherwise)
        ahead = ChurnLookahead(self) if lookahead and fast and scheduler is None else None
        self.engine = Engine(self.ncpus, self.costs, self.preempt, self.metrics, self.invariants, scheduler=scheduler,
                             observers=watching, max_sim_ns=max_sim_ns, max_steps=max_steps, lookahead=ahead)
        self.rcu = self.engine.rcu = Rcu(self.engine.cpus, self.metrics)
        self.alloc = PageAlloc(self.rng, self.fail_nowait, self.invariants.on_free, self.invariants.on_free_many,
                               self.invariants.on_free_array, self.invariants.on_free_each_array)
        self.invariants.cpus = self.engine.cpus
        self.invariants.alloc = self.alloc
        self.tlb = Tlb(self.invariants, tlb_observer)
        self.arch = policy_cls.arches[self.arch_name](self)
        self.engine.arch = self.invariants.arch = self.arch
        self.kernel = policy_cls(self)
        self.metrics.gather_memory(self.kernel.gather_static_bytes(self.ncpus))
        self.mms: list[MmStruct] = []
        self.files = {f.name: AddressSpace(f.name, f.device) for f in scenario.files}
        for f in scenario.files:                        # `cached`: pages read before the run, one reference each
            self._fill_page_cache(self.files[f.name], f)
        self.invariants.files = list(self.files.values())
        self.pfn_maps = _has_pfn_maps(scenario)
        if self.pfn_maps and not self.kernel.pfn_maps:
            from mmugather.errors import InputError
            raise InputError(f"{scenario.name}: pfnmap VMAs: policy {policy_cls.name} does not model PFN maps "
                             f"(special PTEs; policy 6.18 does)")
        self.processes: list[Process] = []
        self._setup()

    def _fill_page_cache(self, mapping: AddressSpace, f) -> None:
        """The page cache a run starts with: the `cached` pages, in folios of one page, and from
        `pmd_folios_from` on in PMD-sized folios of 512 contiguous frames (their first indices in
        mapping.pmd_folios). PMD-sized folios need a kernel that maps them (policy 6.18) and ops it models
        over PMD mappings (_check_pmd_folio_ops())."""
        cache = mapping.page_cache
        first_huge = f.cached >> PAGE_SHIFT if f.pmd_folios_from is None else f.pmd_folios_from >> PAGE_SHIFT
        for index in range(first_huge):
            cache[index] = self.alloc.alloc_page(FILE, GFP_KERNEL)
        index = first_huge
        while index < f.cached >> PAGE_SHIFT:
            nr = min(HPAGE_PMD_NR, (f.cached >> PAGE_SHIFT) - index)
            if nr == HPAGE_PMD_NR:
                pfn = self.alloc.alloc_folio(FILE, nr)
                cache.update(zip(range(index, index + nr), range(pfn, pfn + nr)))
                mapping.pmd_folios.add(index)
            else:                                      # a tail shorter than 2 MiB: folios of one page
                for i in range(index, index + nr):
                    cache[i] = self.alloc.alloc_page(FILE, GFP_KERNEL)
            index += nr
        if f.pmd_folios_from is not None:
            self._check_pmd_folio_ops(f.name)

    def _check_pmd_folio_ops(self, file: str) -> None:
        """InputError unless the policy maps PMD-sized file folios and every op of the scenario is one the
        model runs over PMD mappings (faults, MADV_DONTNEED, munmap, exit: mm/huge_memory.py)."""
        from mmugather.errors import InputError
        from mmugather.workloads.scenario import walk_ops
        name = self.scenario.name
        if not self.kernel.pmd_file_folios:
            raise InputError(f"{name}: file '{file}' has pmd_folios_from: policy {self.kernel.name} does not map "
                             f"PMD-sized file folios (policy 6.18 does)")
        unsupported = {"mprotect", "mremap", "gup_fast", "truncate", "fsync", "revoke", "fork", "exec"}
        for p in self.scenario.process:
            for t in p.thread:
                for op, _ in walk_ops(t.program):
                    what = op.op if op.op in unsupported else (
                        "madvise collapse" if op.op == "madvise" and op.advice != "dontneed" else None)
                    if what is not None:
                        raise InputError(f"{name}: file '{file}' has pmd_folios_from: op '{what}' is not modelled "
                                         f"over PMD-mapped folios (faults, MADV_DONTNEED, munmap and exit are)")

    def new_mm(self) -> MmStruct:
        """mm_alloc() + pgd_alloc()."""
        mm = MmStruct(len(self.mms) + 1, self.alloc.alloc_page(PGTABLE))
        self.mms.append(mm)
        return mm

    def _setup(self) -> None:
        kernel = self.kernel
        for pspec in self.scenario.process:
            mm = self.new_mm()
            proc = Process(pspec.name, mm)
            if pspec.notifier_sleep_ns:
                mm.notifiers.append(SleepingSubscriber(f"{pspec.name}/secondary-mmu", pspec.notifier_sleep_ns))
            for v in pspec.vma:
                start = v.start if v.start is not None else kernel.get_unmapped_area(mm, v.size, anon=v.kind == "anon")
                vma = Vma(mm, start, start + v.size, vma_flags(v), self.files.get(v.file) if v.file else None,
                          v.offset >> 12, v.name)
                try:
                    mm.insert_vma(vma)
                except ValueError as e:
                    from mmugather.errors import InputError
                    raise InputError(f"{self.scenario.name}: process '{pspec.name}': VMA '{v.name}': {e}") from None
                proc.ranges[v.name] = (vma.start, vma.end)
                if v.kind == "pfnmap":
                    kernel.remap_pfn_range(mm, vma)
                elif v.populate is True:
                    kernel.populate(mm, vma, vma.start, vma.end)
                elif v.populate:
                    for off, length in v.populate:
                        kernel.populate(mm, vma, vma.start + off, vma.start + off + length)
            self.processes.append(proc)
            for k, t in enumerate(pspec.thread):
                task = self.engine.spawn(f"{pspec.name}/{k}", t.cpu, "user", thread_program(self, proc, t.program),
                                         mm=mm, process=proc)
                proc.threads.append(task)
        if self.scenario.machine.latency_task:
            for c in self.engine.cpus:
                self._start_latency_task(c.id)

    def _start_latency_task(self, cpu: int) -> None:
        """A latency-sensitive kernel thread per CPU, woken every latency_period ns (random phase)."""
        period = self.costs.latency_period
        run_ns = self.costs.latency_run

        def body(c, task):
            while True:
                yield run_ns
                yield Sleep(period - run_ns if period > run_ns else 1)
        task = self.engine.spawn(f"latency/{cpu}", cpu, "latency", body)
        first = self.rng.randrange(period)
        self.engine.timer(first, Wakeup(self.engine, task))

    def run(self) -> dict:
        """Run to completion; check for leaks; return the `metrics` object."""
        # the hooks of the kernel's walks (mm/protocols.py): bulk where exact, unless every step is wanted
        # (fast=False: explore/; an observer, such as the tracer or the watchdog, sees every step). The bulk
        # backends reproduce the stock kernels on struct pages: with a fix switched off, or with PFN maps
        # (special PTEs, which the bulk zap does not know), the run goes step by step.
        bulk = self.fast and not self.engine.observers and not self.without_fixes and not self.pfn_maps
        hooks = fastpath.backends(type(self.kernel), self.arch) if bulk else fastpath.STEP
        self.kernel.use_backends(hooks.zap, hooks.tables, hooks.release)
        end = self.engine.run()
        if not self.engine.halted:
            self.rcu.rcu_barrier()
        self.finish()
        return self.metrics.summary(sim_time_ns=end, nowait_attempts=self.alloc.nowait_attempts,
                                    nowait_failures=self.alloc.nowait_failures,
                                    violations=self.invariants.violations)

    def finish(self) -> None:
        """After the engine stopped: mmdrop() exited mms and check for leaks (explore/ calls this after a
        controlled run)."""
        for mm in self.mms:                       # mmdrop() of exited mms by their last lazy user
            if mm.exited and mm.pgd.pfn >= 0:
                self.alloc.free_page(None, mm.pgd.pfn)
                mm.pgd.pfn = -1
        if not self.engine.halted:                # a halted run stopped mid-flight: nothing to account
            self.invariants.check_leaks(self.mms, list(self.files.values()), self.alloc)
