"""PMD-mapped file folios (mm/huge_memory.py, 6.18): what will-it-scale's tlb_flush3 loop does over a 2 MiB
folio on the host (/proc/vmstat per iteration: thp_file_mapped 2, thp_split_pmd 2, pgfault 2; two threads:
2.00 shootdowns per iteration), the page-table state it leaves, the 2 MiB TLB entry, invariant #1 around the
split, and the input checks."""
import pytest

from helpers import run

from mmugather.errors import InputError
from mmugather.mm.pgtable import _PAGE_DIRTY, _PAGE_RW, PMD_SHIFT
from mmugather.policies import POLICIES
from mmugather.sim.simulation import Simulation
from mmugather.workloads.builtin import resolve_workload
from mmugather.workloads.scenario import parse_scenario

MiB = 1 << 20


def flush3(threads=1, pages=1024, pmd_folios=True, offset=0, passes=1):
    """tlb_flush3's loop over a cached file of `pages` pages, in PMD-sized folios unless told otherwise,
    one task (thread) per CPU, each over its own file."""
    files = [{"name": f"f{i}", "cached": (pages + offset // 4096) * 4096,
              **({"pmd_folios_from": 0} if pmd_folios else {})} for i in range(threads)]

    def program(i):
        page = {"vma": f"a{i}", "size": 4096}
        return [{"op": "loop", "times": passes, "body": [
            {"op": "mmap", "vma": {"name": f"a{i}", "size": pages * 4096, "shared": True, "kind": "file",
                                   "file": f"f{i}", "offset": offset}},
            {"op": "loop", "times": pages, "stride": 4096, "count": True, "body": [
                {"op": "touch", "write": True, **page},
                {"op": "madvise", "advice": "dontneed", **page},
                {"op": "touch", "write": False, **page}]},
            {"op": "munmap", "vma": f"a{i}"}]}]
    return parse_scenario({"name": "flush3", "seed": 1, "files": files,
                           "machine": {"cpus": threads, "preempt": "voluntary", "latency_task": False,
                                       "fault_around_pages": 16},
                           "process": [{"name": "p", "thread": [{"cpu": i, "program": program(i)}
                                                                for i in range(threads)]}]}, "test")


class Counting(POLICIES["6.18"]):
    """6.18 counting its PMD maps and splits (the host's thp_file_mapped and thp_split_pmd)."""
    mapped = split = zapped = 0

    def do_set_pmd(self, c, vma, addr, write):
        done = yield super().do_set_pmd(c, vma, addr, write)
        type(self).mapped += done
        return done

    def split_huge_pmd_locked(self, c, vma, haddr):
        type(self).split += 1
        yield super().split_huge_pmd_locked(c, vma, haddr)

    def zap_huge_pmd(self, c, tlb, vma, addr):
        done = yield super().zap_huge_pmd(c, tlb, vma, addr)
        type(self).zapped += done
        return done


def counting():
    return type("Counted", (Counting,), {})


def test_each_iteration_over_a_pmd_folio_maps_it_twice_and_splits_it_twice_as_the_host_does():
    """2 MiB of 512 iterations: the read maps the PMD read-only, the write splits it (write-notify at PTE
    level) and maps it again dirty, MADV_DONTNEED splits it; the last map is zapped whole by munmap."""
    cls = counting()
    m = run(flush3(pages=1024), cls)
    assert m["loop_iterations"] == 1024 and m["page_faults"] == 2048
    assert cls.mapped == 2 * 1024
    assert cls.split == 2 * 1024 - 2 and cls.zapped == 2      # the last read's PMD of each 2 MiB: munmap
    assert m["violations"] == []


def test_with_one_page_folios_nothing_is_mapped_by_a_pmd():
    cls = counting()
    m = run(flush3(pages=1024, pmd_folios=False), cls)
    assert m["loop_iterations"] == 1024 and cls.mapped == cls.split == cls.zapped == 0


def test_a_mapping_whose_file_offset_is_not_2mib_aligned_maps_ptes():
    """thp_vma_suitable_order(): (vm_start >> PAGE_SHIFT) - vm_pgoff must be a multiple of 512."""
    cls = counting()
    m = run(flush3(pages=1024, offset=4096), cls)
    assert m["loop_iterations"] == 1024 and cls.mapped == 0 and m["violations"] == []


def test_two_threads_send_two_shootdowns_per_iteration_as_the_host_does():
    """Each split flushes the 2 MiB (flush_tlb_range(): freed_tables, so every CPU of the mm) and is what
    sends the other thread an IPI: one per split, two per iteration (host: 2.00 per iteration,
    /proc/interrupts TLB row); MADV_DONTNEED's own gather, left empty by the split, flushes nothing."""
    cls = counting()
    m = run(flush3(threads=2, pages=1024), cls)
    assert m["loop_iterations"] == 2048
    assert abs(m["ipis_sent"] - cls.split) <= 4                 # the first and last of each pass may find
    assert 1.95 <= m["ipis_sent"] / m["loop_iterations"] <= 2.05  # the other thread not yet or no longer there
    assert m["violations"] == []


def test_the_pmd_left_after_a_read_is_read_only_and_clean_and_after_a_write_writable_and_dirty():
    def final(program):
        sc = parse_scenario({"name": "t", "seed": 1, "files": [{"name": "f", "cached": 4 * MiB, "pmd_folios_from": 0}],
                             "machine": {"cpus": 1, "preempt": "voluntary", "latency_task": False},
                             "process": [{"name": "p", "vma": [{"name": "a", "size": 4 * MiB, "kind": "file",
                                                                "file": "f", "shared": True}],
                                          "thread": [{"cpu": 0, "program": program + [{"op": "halt"}]}]}]}, "t")
        sim = Simulation(sc, POLICIES["6.18"], arch="x86")
        sim.run()
        mm = sim.processes[0].mm
        return mm, mm.huge_pmds.get(mm.vmas[0].start >> PMD_SHIFT), sim
    read = {"op": "touch", "vma": "a", "size": 4096, "write": False}
    write = {**read, "write": True}
    mm, pmd, sim = final([read])
    assert pmd is not None and not pmd & (_PAGE_RW | _PAGE_DIRTY) and mm.rss[0] == 512
    mm, pmd, sim = final([read, write])
    assert pmd is not None and pmd & _PAGE_RW and pmd & _PAGE_DIRTY
    head = mm.vmas[0].pgoff
    assert head in sim.files["f"].dirty                         # fault_dirty_shared_page() -> folio_mark_dirty()
    mm, pmd, sim = final([read, {"op": "madvise", "advice": "dontneed", "vma": "a", "size": 4096}])
    assert pmd is None and mm.rss[0] == 0 and not mm.pte_tables  # the split unmapped all 512 pages


def test_a_2mib_tlb_entry_is_dropped_whole_by_one_invalidation_in_it():
    """x86 INVLPG of any address in a 2 MiB page drops its TLB entry: the model's 4 KiB pieces of it go
    together, a 4 KiB entry of the same range filled from a PTE later does not."""
    from mmugather.machine.tlb import Tlb
    from mmugather.machine.cpu import Cpu

    class Inv:
        tlb_refs: dict = {}
        pwc_refs: dict = {}
    cpu, tlb = Cpu(0), Tlb(Inv())
    base = 0x7f0000000000 >> 12
    pmd = (1000 << 12) | 0x1 | 0x2 | 0x40 | 0x80
    for off in (0, 7, 300):
        tlb.fill_huge(cpu, base + off, pmd)
    assert cpu.tlb[base + 7] >> 1 == 1007
    tlb.flush_one(cpu, (base + 300) << 12)
    assert not cpu.tlb and not tlb.huge and not Inv.tlb_refs
    tlb.fill_huge(cpu, base + 1, pmd)
    tlb.fill(cpu, base + 1, (5 << 12) | 0x1)                   # now a 4 KiB translation of its own
    tlb.flush_one(cpu, (base + 2) << 12)
    assert cpu.tlb == {base + 1: 5 << 1}


class SplitWithoutFlush(POLICIES["6.18"]):
    """A wrong kernel: __split_huge_pmd_locked() clears the PMD but does not flush the TLB."""

    def split_huge_pmd_locked(self, c, vma, haddr):
        flush = self.arch.flush_tlb_range

        def no_flush(*args):
            return
            yield
        self.arch.flush_tlb_range = no_flush
        try:
            yield super().split_huge_pmd_locked(c, vma, haddr)
        finally:
            self.arch.flush_tlb_range = flush


def test_a_split_that_forgets_the_flush_is_caught():
    """Invariant #1 around the split: MADV_DONTNEED returns while the TLB still maps the page the split
    unmapped (the write's 2 MiB entry), which the page tables no longer allow."""
    m = run(flush3(pages=512), SplitWithoutFlush)
    assert any(v["kind"] == "stale-tlb-after-return" for v in m["violations"]), m["violations"]
    assert run(flush3(pages=512), "6.18")["violations"] == []


def test_pmd_folios_need_policy_6_18_and_the_ops_modelled_over_pmds():
    with pytest.raises(InputError, match="policy 3.0 does not map PMD-sized file folios"):
        run(flush3(pages=512), "3.0")
    mprotect = {"name": "t", "seed": 1, "files": [{"name": "f", "cached": 2 * MiB, "pmd_folios_from": 0}],
                "machine": {"cpus": 1},
                "process": [{"name": "p", "vma": [{"name": "a", "size": 2 * MiB, "kind": "file", "file": "f"}],
                             "thread": [{"cpu": 0, "program": [{"op": "mprotect", "vma": "a", "prot": "r"}]}]}]}
    with pytest.raises(InputError, match="op 'mprotect' is not modelled over PMD-mapped folios"):
        run(parse_scenario(mprotect, "t"), "6.18")


@pytest.mark.parametrize("files,needle", [
    ([{"name": "f", "cached": 4 * MiB, "pmd_folios_from": MiB}], "not a multiple of 2 MiB"),
    ([{"name": "f", "cached": 3 * MiB, "pmd_folios_from": 2 * MiB}], "no whole 2 MiB"),
])
def test_bad_pmd_folios_from_is_a_one_line_error(files, needle):
    with pytest.raises(InputError, match=needle):
        parse_scenario({"name": "t", "files": files, "process": []}, "t")


def test_wis_tlb_flush3_has_pmd_folios_from_40_mib_and_its_other_tests_do_not():
    sc = resolve_workload("wis:tlb_flush3:processes:2")
    assert [f.pmd_folios_from for f in sc.files] == [40 * MiB, 40 * MiB]
    assert [f.pmd_folios_from for f in resolve_workload("wis:tlb_flush1:threads:1").files] == [None]


@pytest.mark.parametrize("threads", [1, 2])
def test_the_fast_path_gives_the_step_paths_metrics_over_pmd_folios(threads):
    """zap_pmd_range() leaves huge PMDs to the step path (the zap backend does not know them): a run with
    the fast path on matches Simulation(fast=False) exactly, PMD folios or not."""
    for pmd_folios in (True, False):
        sc = flush3(threads=threads, pages=512, pmd_folios=pmd_folios, passes=2)
        fast = Simulation(sc, POLICIES["6.18"], arch="x86").run()
        step = Simulation(sc, POLICIES["6.18"], arch="x86", fast=False).run()
        assert fast == step


def test_an_exit_with_pmds_mapped_zaps_them_and_leaks_nothing():
    """exit_mmap() -> unmap_vmas() -> zap_huge_pmd() of every PMD still mapped (two threads, one dirty
    PMD each, one read-only): no RSS, no huge PMD and no frame left over (the leak checks at the end)."""
    page = {"size": 4096}
    sc = parse_scenario({"name": "t", "seed": 1, "files": [{"name": "f", "cached": 8 * MiB, "pmd_folios_from": 0}],
                         "machine": {"cpus": 2, "preempt": "voluntary", "latency_task": False},
                         "process": [{"name": "p", "vma": [{"name": "a", "size": 8 * MiB, "kind": "file", "file": "f",
                                                            "shared": True}],
                                      "thread": [{"cpu": 0, "program": [{"op": "touch", "vma": "a", "write": True,
                                                                         **page}, {"op": "exit"}]},
                                                 {"cpu": 1, "program": [{"op": "touch", "vma": "a", "write": False,
                                                                         "offset": 4 * MiB, **page}]}]}]}, "t")
    cls = counting()
    m = run(sc, cls)
    assert cls.mapped == 2 and cls.zapped == 2 and m["violations"] == []
