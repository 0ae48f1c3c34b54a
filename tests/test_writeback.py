"""File writeback (mm/page_writeback.py), folio_mkclean() through i_mmap (mm/rmap.py), the x86 dirty bit
(workloads/program.py access()) and the `lost-write` invariant (sim/invariants.py)."""
import pytest

from mmugather.arch import ARCHES
from mmugather.mm.pgtable import PAGE_SHIFT, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_RW
from mmugather.policies import POLICIES, get_policy
from mmugather.sim.simulation import Simulation
from mmugather.workloads.scenario import parse_scenario

PAIRS = [(policy, arch) for policy in POLICIES for arch in ARCHES[policy]]


def _f(name="f", **kw):
    return {"name": name, "size": "16KiB", "kind": "file", "file": "F", "shared": True, "populate": True, **kw}


def _sim(programs, vmas=None, policy="6.18", arch=None, without=(), others=()):
    sc = {"name": "t", "machine": {"cpus": 2, "policy": policy, "latency_task": False}, "files": [{"name": "F"}],
          "process": [{"name": "p", "vma": vmas if vmas is not None else [_f()],
                       "thread": [{"cpu": cpu, "program": prog} for cpu, prog in programs]}, *others]}
    return Simulation(parse_scenario(sc, "test"), get_policy(policy), arch=arch, without_fixes=without)


def _pte(sim, addr):
    mm = sim.processes[0].mm
    return mm.pte_tables[addr >> 21].ptes[(addr >> PAGE_SHIFT) & 511]


W = {"op": "touch", "vma": "f", "write": True}
FSYNC = {"op": "fsync", "file": "F"}
HALT = {"op": "halt"}


def test_a_shared_writable_mapping_dirties_its_pages_others_do_not():
    sim = _sim([(0, [HALT])], vmas=[_f(), _f("ro", writable=False, offset="16KiB"),
                                    _f("priv", shared=False, offset="32KiB")])
    assert sim.files["F"].dirty == {0, 1, 2, 3}


def test_fsync_cleans_the_pages_and_write_protects_every_mapping_through_i_mmap():
    """Two processes map the file; fsync (from a third, mapping nothing) cleans both PTEs of each page,
    flushes them (one flush_tlb_page() per PTE cleaned) and clears PG_dirty."""
    other = {"name": "q", "vma": [_f("g")], "thread": [{"cpu": 1, "program": [{"op": "sleep", "ns": 10**6}]}]}
    sim = _sim([(0, [{"op": "touch", "vma": "f", "write": False}, FSYNC, HALT])], others=[other])
    m = sim.run()
    assert m["violations"] == [] and sim.files["F"].dirty == set()
    for proc, name in ((sim.processes[0], "f"), (sim.processes[1], "g")):
        lo, hi = proc.ranges[name]
        for addr in range(lo, hi, 4096):
            pte = proc.mm.pte_tables[addr >> 21].ptes[(addr >> PAGE_SHIFT) & 511]
            assert pte & _PAGE_PRESENT and not pte & (_PAGE_RW | _PAGE_DIRTY)
    assert m["tlb_flushes"] >= 8
    assert all(v & 1 == 0 for v in sim.engine.cpus[0].tlb.values())       # no writable entry survives


def test_a_store_after_writeback_faults_and_dirties_the_page_again():
    """wp_page_shared(): the write-protected clean PTE becomes writable and dirty, PG_dirty is set again."""
    sim = _sim([(0, [W, FSYNC, {"op": "touch", "vma": "f", "size": "4KiB", "write": True}, HALT])])
    m = sim.run()
    lo, _ = sim.processes[0].ranges["f"]
    assert m["violations"] == [] and sim.files["F"].dirty == {0}
    assert _pte(sim, lo) & (_PAGE_RW | _PAGE_DIRTY) == _PAGE_RW | _PAGE_DIRTY
    assert not _pte(sim, lo + 4096) & _PAGE_RW
    assert m["page_faults"] >= 1


def test_zap_of_a_dirty_pte_marks_the_folio_dirty():
    """set_page_dirty() in zap_pte_range(): a page whose PG_dirty was lost but whose PTE is dirty is dirty
    again once munmap zaps it (a model without it would leave the page clean)."""
    sim = _sim([(0, [{"op": "munmap", "vma": "f"}, HALT])])
    sim.files["F"].dirty.clear()
    assert sim.run()["violations"] == [] and sim.files["F"].dirty == {0, 1, 2, 3}


def test_writeback_skips_a_folio_mapped_nowhere_and_the_check_starts_with_the_first_clean():
    sim = _sim([(0, [{"op": "munmap", "vma": "f"}, HALT])])
    assert not sim.invariants.check_stores
    sim = _sim([(0, [{"op": "munmap", "vma": "f"}, FSYNC, HALT])])
    m = sim.run()
    assert m["violations"] == [] and sim.files["F"].dirty == set() and sim.invariants.check_stores


def test_truncate_cancels_the_dirty_state():
    sim = _sim([(0, [{"op": "truncate", "file": "F", "size": "8KiB"}, HALT])])
    sim.run()
    assert sim.files["F"].dirty == {0, 1}


def test_the_hardware_walk_sets_the_dirty_bit_and_caches_a_clean_pte_read_only():
    """x86: a store walking a writable clean PTE sets _PAGE_DIRTY in it; a load of one caches the entry
    without write permission, so that a later store walks again (the dirty-bit assist)."""
    load = {"op": "touch", "vma": "f", "size": "4KiB", "write": False}
    store = {"op": "touch", "vma": "f", "write": True, "offset": "4KiB", "size": "4KiB"}
    sim = _sim([(0, [load, store, HALT])])
    lo, _ = sim.processes[0].ranges["f"]
    mm = sim.processes[0].mm
    pt = mm.pte_tables[lo >> 21]
    for addr in (lo, lo + 4096):
        pt.ptes[(addr >> PAGE_SHIFT) & 511] &= ~_PAGE_DIRTY
    sim.run()
    tlb = sim.engine.cpus[0].tlb
    assert not _pte(sim, lo) & _PAGE_DIRTY and tlb[lo >> PAGE_SHIFT] & 1 == 0
    assert _pte(sim, lo + 4096) & _PAGE_DIRTY and tlb[(lo + 4096) >> PAGE_SHIFT] & 1 == 1


def test_lost_write_is_a_store_through_a_stale_entry_to_a_cleaned_page():
    """The invariant alone: after a writeback, a store through a writable entry whose PTE is gone, to a
    page nothing records as dirty, is reported; the same store while PG_dirty is set, or while another
    process's PTE maps the page dirty (found through i_mmap), is not."""
    other = {"name": "q", "vma": [_f("g")], "thread": [{"cpu": 1, "program": [HALT]}]}
    sim = _sim([(0, [HALT])], others=[other])
    inv, mapping = sim.invariants, sim.files["F"]
    c = sim.engine.cpus[1]
    mm, qmm = sim.processes[0].mm, sim.processes[1].mm
    lo, _ = sim.processes[0].ranges["f"]
    glo, _ = sim.processes[1].ranges["g"]
    pfn = mapping.page_cache[0]
    inv.folio_cleaned(mapping, 0)
    inv.user_store(c, mm, lo, pfn)
    assert inv.violations == []                                    # its own PTE is still dirty
    mm.pte_tables[lo >> 21].ptes[(lo >> PAGE_SHIFT) & 511] = 0
    mapping.dirty.clear()
    inv.user_store(c, mm, lo, pfn)
    assert inv.violations == []                                    # q's PTE is dirty
    qmm.pte_tables[glo >> 21].ptes[(glo >> PAGE_SHIFT) & 511] &= ~_PAGE_DIRTY
    mapping.dirty.add(0)
    inv.user_store(c, mm, lo, pfn)
    assert inv.violations == []                                    # PG_dirty is set
    mapping.dirty.clear()
    inv.user_store(c, mm, lo, pfn)
    assert [v["kind"] for v in inv.violations] == ["lost-write"]


@pytest.mark.parametrize("policy,arch", PAIRS)
def test_fsync_beside_a_writer_runs_clean_everywhere(policy, arch):
    """fsync while another thread keeps storing to the pages: every policy and arch, no violation, the
    file clean at the end only if the writer's last store came before the last clean."""
    sim = _sim([(0, [W, FSYNC, FSYNC]), (1, [W, {"op": "compute", "ns": 2000}, W])], policy=policy, arch=arch)
    m = sim.run()
    assert m["violations"] == [] and m["tlb_flushes"] >= 4


def test_fsync_names_a_known_file():
    from mmugather.errors import InputError
    with pytest.raises((InputError, ValueError), match="fsync names unknown file"):
        parse_scenario({"name": "t", "machine": {"policy": "6.18"}, "files": [{"name": "F"}],
                        "process": [{"name": "p", "thread": [{"cpu": 0, "program": [
                            {"op": "fsync", "file": "G"}]}]}]}, "test")


def test_fsync_of_a_device_file_is_refused():
    """A device file (mm/pfnmap.py) has no page cache to write back: like truncate, fsync of one is refused."""
    from mmugather.errors import InputError
    with pytest.raises((InputError, ValueError), match="fsync of device file 'D'"):
        parse_scenario({"name": "t", "machine": {"policy": "6.18"}, "files": [{"name": "D", "device": True}],
                        "process": [{"name": "p", "thread": [{"cpu": 0, "program": [
                            {"op": "fsync", "file": "D"}]}]}]}, "test")


def test_a_shared_anonymous_zero_page_is_copied_on_write_not_written_back():
    """A read of shared anonymous memory maps the zero page (no file behind it): the write after it takes
    do_wp_page()'s copy, not wp_page_shared() (which needs a file's folio lock)."""
    anon = {"name": "f", "size": "4KiB", "kind": "anon", "shared": True, "populate": False}
    sim = _sim([(0, [{"op": "touch", "vma": "f", "write": False}, W, HALT])], vmas=[anon])
    assert sim.run()["violations"] == []
    pte = _pte(sim, sim.processes[0].ranges["f"][0])
    assert pte & _PAGE_PRESENT and pte & _PAGE_RW and pte >> PAGE_SHIFT != sim.alloc.zero_pfn


@pytest.mark.parametrize("policy", POLICIES)
def test_a_read_fault_maps_a_shared_file_page_read_only_and_the_first_write_faults_again(policy):
    """vma_wants_writenotify(): a shared writable file mapping's vm_page_prot is read-only, so a read fault
    maps the page read-only and clean, and the first store takes do_wp_page() -> wp_page_shared(), which
    dirties it (a model mapping it writable at the read fault takes one fault and misses ->page_mkwrite())."""
    R1 = {"op": "touch", "vma": "f", "size": "4KiB", "write": False}
    W1 = {"op": "touch", "vma": "f", "size": "4KiB", "write": True}
    read = _sim([(0, [R1, HALT])], vmas=[_f(populate=False)], policy=policy)
    m = read.run()
    lo, _ = read.processes[0].ranges["f"]
    assert m["violations"] == [] and m["page_faults"] == 1 and read.files["F"].dirty == set()
    assert _pte(read, lo) & _PAGE_PRESENT and not _pte(read, lo) & (_PAGE_RW | _PAGE_DIRTY)
    both = _sim([(0, [R1, W1, HALT])], vmas=[_f(populate=False)], policy=policy)
    m = both.run()
    assert m["violations"] == [] and m["page_faults"] == 2 and both.files["F"].dirty == {0}
    assert _pte(both, lo) & (_PAGE_RW | _PAGE_DIRTY) == _PAGE_RW | _PAGE_DIRTY
