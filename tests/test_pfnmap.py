"""PFN maps (mm/pfnmap.py): remap_pfn_range() of a driver's buffer with special PTEs, their zap, and the
driver's revoke (unmap_mapping_range(), then the frames freed)."""
import pytest

from mmugather.errors import InputError
from mmugather.mm.mm_types import VM_IO, VM_PFNMAP
from mmugather.mm.page_alloc import DEVICE, FREE
from mmugather.mm.pgtable import PAGE_SHIFT, _PAGE_SPECIAL
from mmugather.mm.protocols import STEP_BY_STEP
from mmugather.policies import get_policy
from mmugather.sim.simulation import Simulation
from mmugather.workloads.scenario import parse_scenario

DEV = {"name": "d", "size": "16KiB", "kind": "pfnmap", "file": "dev", "shared": True, "start": 0x10000000}


def _sc(threads, vmas=(DEV,), cpus=2, device=True, policy="6.18"):
    return parse_scenario({"name": "t", "machine": {"cpus": cpus, "policy": policy, "latency_task": False},
                           "files": [{"name": "dev", "device": device}],
                           "process": [{"name": "p", "vma": list(vmas),
                                        "thread": [{"cpu": c, "program": p} for c, p in threads]}]}, "test")


def _sim(sc, policy="6.18", **kw):
    return Simulation(sc, get_policy(policy), **kw)


def test_remap_pfn_range_maps_the_driver_buffer_with_special_ptes_and_no_references():
    """Set-up maps every page of the VMA to the driver's DEVICE frames with pte_special(); the frames gain no
    reference and no mapcount, the mm no RSS; the VMA is VM_IO | VM_PFNMAP."""
    sim = _sim(_sc([(0, [])]))
    mm = sim.processes[0].mm
    vma = mm.vmas[0]
    assert vma.flags & VM_PFNMAP and vma.flags & VM_IO
    pt = mm.pte_tables[0x10000000 >> 21]
    ptes = [pt.ptes[(0x10000000 >> PAGE_SHIFT) % 512 + i] for i in range(4)]
    assert all(p & _PAGE_SPECIAL for p in ptes)
    pfns = [p >> PAGE_SHIFT for p in ptes]
    assert pfns == [sim.files["dev"].driver_pfns[i] for i in range(4)]
    assert all(sim.alloc.kind[p] == DEVICE and sim.alloc.refcount[p] == 1 and sim.alloc.mapcount[p] == 0
               for p in pfns)
    assert mm.rss == [0, 0]


def test_munmap_of_a_pfn_map_frees_nothing_and_the_buffer_stays_the_drivers():
    """zap_pte_range() clears special PTEs without touching the frames (vm_normal_page() is NULL): after
    munmap and exit the buffer is still in use by the driver, and the leak check counts it as held."""
    sim = _sim(_sc([(0, [{"op": "touch", "vma": "d"}, {"op": "munmap", "vma": "d"}])]))
    pfns = list(sim.files["dev"].driver_pfns.values())
    m = sim.run()
    assert m["violations"] == []
    assert all(sim.alloc.kind[p] == DEVICE and sim.alloc.mapcount[p] == 0 for p in pfns)
    assert sim.alloc.nr_used[DEVICE] == 4


def test_revoke_zaps_the_mapping_then_frees_the_buffer():
    """The driver's revoke zaps the PFN map still linked in i_mmap (flushing the toucher's TLB) before it
    frees the frames: no use after free, the frames are free, and a later touch takes SIGBUS (no ->fault)."""
    sim = _sim(_sc([(0, [{"op": "touch", "vma": "d"}, {"op": "sleep", "ns": 50_000}, {"op": "touch", "vma": "d"}]),
                    (1, [{"op": "sleep", "ns": 10_000}, {"op": "revoke", "file": "dev"},
                         {"op": "sleep", "ns": 100_000}])]))
    pfns = list(sim.files["dev"].driver_pfns.values())
    m = sim.run()
    assert m["violations"] == []
    assert all(sim.alloc.kind[p] == FREE for p in pfns) and not sim.files["dev"].driver_pfns
    assert m["segv"] == 4 and m["page_faults"] == 4          # each page of the second touch


def test_mmap_of_a_device_file_maps_it_at_mmap_time():
    """An `mmap` op of a pfnmap VMA runs the driver's remap_pfn_range(): the touch that follows needs no fault."""
    sim = _sim(_sc([(0, [{"op": "mmap", "vma": DEV}, {"op": "touch", "vma": "d"}])], vmas=()))
    m = sim.run()
    assert m["violations"] == [] and m["page_faults"] == 0 and sim.alloc.nr_used[DEVICE] == 4


def test_gup_fast_pins_nothing_of_a_pfn_map():
    """gup_fast stops at a special PTE (no struct page to take a reference on)."""
    sim = _sim(_sc([(0, [{"op": "gup_fast", "vma": "d"}])]))
    pfns = list(sim.files["dev"].driver_pfns.values())
    before = [sim.alloc.refcount[p] for p in pfns]
    mm = sim.processes[0].mm
    gen = sim.kernel.get_user_pages_fast(sim.engine.cpus[0], mm, 0x10000000, 4, False)
    pinned = _drain(gen)
    assert pinned == [] and [sim.alloc.refcount[p] for p in pfns] == before


def _drain(gen):
    """Run a kernel path outside the engine, skipping what it yields; its return value."""
    stack, value = [gen], None
    while stack:
        try:
            y = stack[-1].send(value)
            value = None
            if hasattr(y, "send"):
                stack.append(y)
        except StopIteration as e:
            stack.pop()
            value = e.value
    return value


def test_a_run_with_pfn_maps_goes_step_by_step():
    """The bulk zap (fastpath/) reproduces the stock kernels on struct pages only: a scenario with a PFN map
    runs every step, and its metrics are those of fast=False; one without keeps the bulk backends."""
    threads = [(0, [{"op": "touch", "vma": "d"}, {"op": "munmap", "vma": "d"}]),
               (1, [{"op": "touch", "vma": "a"}, {"op": "munmap", "vma": "a"}])]
    vmas = (DEV, {"name": "a", "size": "64KiB", "populate": True})
    sim = _sim(_sc(threads, vmas))
    fast = sim.run()
    assert sim.kernel.zap_backend is STEP_BY_STEP and fast == _sim(_sc(threads, vmas), fast=False).run()
    plain = _sim(_sc([threads[1]], vmas[1:]))
    plain.run()
    assert plain.kernel.zap_backend is not STEP_BY_STEP


@pytest.mark.parametrize("bad, msg", [
    ({"device": False}, "needs a [[files]] entry with device = true"),
    ({"program": [{"op": "madvise", "vma": "d"}]}, "madvise of pfnmap VMA 'd' is not modelled"),
    ({"program": [{"op": "revoke", "file": "f"}]}, "not a [[files]] entry with device = true"),
    ({"program": [{"op": "truncate", "file": "dev"}]}, "truncate of device file 'dev'"),
    ({"program": [{"op": "fork", "cpu": 0}]}, "fork of a process with a pfnmap VMA"),
    ({"vma": {**DEV, "shared": False}}, "MAP_SHARED"),
])
def test_scenarios_that_use_pfn_maps_wrongly_are_refused(bad, msg):
    sc = {"name": "t", "machine": {"cpus": 1, "policy": "6.18"},
          "files": [{"name": "dev", "device": bad.get("device", True)}, {"name": "f"}],
          "process": [{"name": "p", "vma": [bad.get("vma", DEV)],
                       "thread": [{"cpu": 0, "program": bad.get("program", [])}]}]}
    with pytest.raises(InputError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        parse_scenario(sc, "test")


def test_policies_without_pfn_maps_refuse_them():
    """Only the 6.18 zap walk knows special PTEs: a 3.0 run of a PFN map is refused, not miscounted."""
    with pytest.raises(InputError, match="policy 3.0 does not model PFN maps"):
        _sim(_sc([(0, [])], policy="3.0"), policy="3.0")


def test_munmap_of_a_pfn_map_flushes_before_unlinking_it_only_with_the_fix():
    """tlb_free_vmas() (b67fbebd4cf9's flush, `pfnmap_flush`) adds one flush to a munmap of a PFN map, before
    free_pgtables() unlinks the VMA; an anonymous VMA's munmap is the same with or without it."""
    def flushes(vma, without=()):
        sc = _sc([(0, [{"op": "touch", "vma": vma["name"]}, {"op": "munmap", "vma": vma["name"]}])], (vma,))
        return _sim(sc, arch="x86", without_fixes=without).run()["tlb_flushes"]
    anon = {"name": "a", "size": "16KiB", "start": 0x10000000, "populate": True}
    assert flushes(DEV) == flushes(DEV, ("pfnmap_flush",)) + 1
    assert flushes(anon) == flushes(anon, ("pfnmap_flush",))


def test_the_memory_estimate_counts_a_pfn_map_as_resident():
    """remap_pfn_range() maps the whole VMA at mmap: the up-front host-memory estimate counts every page."""
    from mmugather.workloads.scenario import PAGE_BYTES, estimate_memory
    big = {**DEV, "size": "64MiB"}
    assert estimate_memory(_sc([(0, [])], (big,))) >= 16384 * PAGE_BYTES
