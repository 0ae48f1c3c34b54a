"""populate()'s two paths agree: a table's few PTEs (policies/base.py _FEW_PTES) are mapped one by one in
Python, more with numpy's table-wide calls. Built with the threshold at 0 (numpy for every table), the same
scenarios must give the same frames, PTEs, counts, RSS, page cache and dirty indices."""
from __future__ import annotations

import pytest

import mmugather.policies.base as policies_base
from mmugather.policies import POLICIES
from mmugather.sim.simulation import Simulation
from mmugather.workloads.scenario import parse_scenario

_TABLE = 2 << 20


def _scenario(vmas: list[dict]) -> object:
    return parse_scenario({"machine": {"cpus": 2, "latency_task": False},
                           "files": [{"name": "F", "cached": "8KiB"}, {"name": "G"}],
                           "process": [{"name": "app", "vma": vmas,
                                        "thread": [{"cpu": 0, "program": [{"op": "exit"}]}]}]}, "test")


# VMAs of every kind populate() maps: shared writable and read-only file pages (from the page cache, some
# cached before, at file offsets other than 0, a range starting inside a table), private file pages
# (fresh frames), anonymous pages, ranges populated twice (mapped PTEs skipped), and a table with more
# PTEs than the threshold
CASES = {
    "shared-file": [{"name": "s", "size": "24KiB", "kind": "file", "file": "F", "shared": True, "populate": True,
                     "start": 16 * _TABLE + 0x3000, "offset": "4KiB"}],
    "read-only-file": [{"name": "r", "size": "16KiB", "kind": "file", "file": "F", "writable": False,
                        "populate": True, "offset": "8KiB"}],
    "shared-twice": [{"name": "s", "size": "32KiB", "kind": "file", "file": "G", "shared": True,
                      "populate": [["4KiB", "12KiB"], ["8KiB", "16KiB"]]},
                     {"name": "r", "size": "32KiB", "kind": "file", "file": "G", "shared": True, "writable": False,
                      "populate": True}],
    "private-file-and-anon": [{"name": "p", "size": "12KiB", "kind": "file", "file": "F", "populate": True},
                              {"name": "a", "size": "20KiB", "populate": [["0", "8KiB"], ["4KiB", "16KiB"]]}],
    "beyond-threshold": [{"name": "s", "size": "160KiB", "kind": "file", "file": "G", "shared": True,
                          "populate": True},
                         {"name": "a", "size": "200KiB", "populate": True}],
}


def _state(sim: Simulation) -> dict:
    alloc = sim.alloc
    mms = [(sorted((base, bytes(pt.ptes)) for base, pt in mm.pte_tables.items()), list(mm.rss))
           for mm in sim.mms]
    files = {name: (sorted(f.page_cache.items()), sorted(f.dirty)) for name, f in sim.files.items()}
    return {"mms": mms, "files": files, "refcount": bytes(alloc.refcount), "mapcount": bytes(alloc.mapcount),
            "kind": bytes(alloc.kind), "free": list(alloc.free_list), "nr_used": list(alloc.nr_used)}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("policy", ["3.0", "6.18"])
def test_few_ptes_one_by_one_as_numpy_maps_them(case, policy, monkeypatch):
    sc = _scenario(CASES[case])
    few = _state(Simulation(sc, POLICIES[policy], fast=False))
    monkeypatch.setattr(policies_base, "_FEW_PTES", 0)
    table_wide = _state(Simulation(sc, POLICIES[policy], fast=False))
    assert few == table_wide
    assert any(f[0] for f in few["files"].values()) or case == "private-file-and-anon"
