"""The invariant checker's scans for freed frames (sim/invariants.py) against plain references: which frames
of an array something still reaches (reached()), and which CPUs' TLBs map a freed frame, at which address
(_freed_while_mapped()). Random reverse maps and TLBs, each side of reached()'s lookup/isin and
comparisons/isin choices (LOOKUP_MAX, FEW_FOUND)."""
from types import SimpleNamespace

import numpy as np
from hypothesis import given, settings, strategies as st

from helpers import examples

from mmugather.sim.invariants import FEW_FOUND, LOOKUP_MAX, Invariants


def _reference_reached(inv: Invariants, pfns: np.ndarray):
    every = set(inv.tlb_refs) | set(inv.pwc_refs) | set(inv.walking)
    mask = np.array([p in every for p in pfns.tolist()], dtype=bool)
    return mask if mask.any() else None


@settings(max_examples=examples(200), deadline=None)
@given(st.data())
def test_reached_is_membership_in_the_reverse_maps(data):
    """reached() is the mask of the frames in tlb_refs, pwc_refs or walking (None when none is), for arrays
    shorter and longer than LOOKUP_MAX and than the maps, with no hit, a few (<= FEW_FOUND) or many."""
    n = data.draw(st.sampled_from([0, 1, 7, 300, LOOKUP_MAX, LOOKUP_MAX + 50]))
    base = data.draw(st.integers(0, 1000))
    pfns = np.arange(base, base + 2 * n, 2, dtype=np.int64)
    if data.draw(st.booleans()):
        pfns = pfns[::-1].copy()
    hits = data.draw(st.sampled_from([0, 1, FEW_FOUND, FEW_FOUND + 1, 40]))
    inv = Invariants(None)
    maps = [inv.tlb_refs, inv.pwc_refs, inv.walking]
    chosen = data.draw(st.lists(st.integers(0, max(n - 1, 0)), min_size=min(hits, n), max_size=min(hits, n)))
    for i in chosen:
        data.draw(st.sampled_from(maps))[int(pfns[i])] = 1
    spread = data.draw(st.integers(1, 50))
    for k in range(data.draw(st.sampled_from([0, 10, 2 * LOOKUP_MAX]))):   # frames outside the array
        maps[k % 3][base + 2 * n + spread * k + 1] = 1
    got, want = inv.reached(pfns), _reference_reached(inv, pfns)
    assert (got is None) == (want is None)
    if want is not None:
        assert got.dtype == bool and got.shape == pfns.shape and (got == want).all()


def _reference_freed_while_mapped(inv: Invariants, c, pfn: int) -> None:
    """Every CPU's TLB walked in Python for the entries mapping pfn (the scan before the early stop)."""
    for x in inv.cpus:
        vpns = [vpn for vpn, v in x.tlb.items() if v >> 1 == pfn]
        if not vpns:
            continue
        if x is c or not inv.arch.tlb_entry_live(x):
            x.dangling.add(pfn)
            continue
        inv.report("stale-tlb-use-after-free", x.id,
                   f"pfn {pfn} freed by CPU {c.id} at {c.clock} ns while CPU {x.id}'s TLB still "
                   f"maps user address {vpns[0] << 12:#x} to it", key=pfn)


def _machine(tlbs: list[dict], lazy: set[int]) -> Invariants:
    inv = Invariants(None)
    inv.cpus = [SimpleNamespace(id=i, tlb=dict(t), dangling=set(), clock=100 + i) for i, t in enumerate(tlbs)]
    inv.arch = SimpleNamespace(tlb_entry_live=lambda x: x.id not in lazy)
    for x in inv.cpus:
        for v in x.tlb.values():
            inv.tlb_refs[v >> 1] = inv.tlb_refs.get(v >> 1, 0) + 1
    return inv


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.dictionaries(st.integers(0, 60), st.integers(0, 15), max_size=40), min_size=1, max_size=6),
       st.sets(st.integers(0, 5)), st.integers(0, 5))
def test_freed_while_mapped_finds_every_tlb_holding_the_frame(tlbs, lazy, freeing):
    """For each frame some TLB maps (read-only or writable, at one address or several, on one CPU or
    several), the same reports (CPU order, the first address each TLB maps it at) and dangling frames as
    a walk over every TLB's entries; fails when the scan stops before the last TLB holding it."""
    fast, slow = _machine(tlbs, lazy), _machine(tlbs, lazy)
    c_fast, c_slow = fast.cpus[freeing % len(tlbs)], slow.cpus[freeing % len(tlbs)]
    for pfn in sorted(fast.tlb_refs):
        fast._freed_while_mapped(c_fast, pfn)
        _reference_freed_while_mapped(slow, c_slow, pfn)
    assert fast.violations == slow.violations
    assert [x.dangling for x in fast.cpus] == [x.dangling for x in slow.cpus]
