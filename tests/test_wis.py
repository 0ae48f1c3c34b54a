"""The `loop` op (iterations, strides, deadlines, the iteration count) and the will-it-scale workloads
built on it (`wis:TEST:MODE:N[:MS]`, compare's ops_per_s)."""
import json

import pytest

from helpers import cli, run, scenario

from mmugather.errors import InputError
from mmugather.workloads.builtin import resolve_workload
from mmugather.workloads.wis import counted_window_ns, ops_per_s


def _loop(**kw):
    body = [{"op": "touch", "vma": "a", "size": 4096, "write": True}]
    return scenario([{"name": "a", "size": "64KiB"}], [{"cpu": 0, "program": [{"op": "loop", "body": body, **kw}]}],
                    cpus=1, latency=False)


def test_a_counted_loop_with_a_stride_touches_successive_pages():
    """times=5, stride 4 KiB: five different pages fault in, five iterations counted."""
    m = run(_loop(times=5, stride=4096, count=True), "6.18")
    assert m["loop_iterations"] == 5 and m["page_faults"] == 5


def test_without_a_stride_the_same_page_is_touched_again():
    m = run(_loop(times=5, count=True), "6.18")
    assert m["loop_iterations"] == 5 and m["page_faults"] == 1


def test_an_uncounted_loop_counts_nothing():
    assert run(_loop(times=3, stride=4096), "6.18")["loop_iterations"] == 0


def test_a_deadline_bounds_an_endless_loop_and_is_inherited():
    """An outer loop of 50 us around an unbounded-count inner loop: the inner one stops at the outer
    deadline, so the run ends near 50 us and some, not all, of 1000 iterations run."""
    inner = {"op": "loop", "times": 1000, "count": True,
             "body": [{"op": "madvise", "vma": "a", "size": 4096},
                      {"op": "touch", "vma": "a", "size": 4096, "write": True}]}
    sc = scenario([{"name": "a", "size": "64KiB"}], [{"cpu": 0, "program": [
        {"op": "loop", "duration_ns": 50_000, "body": [inner]}]}], cpus=1, latency=False)
    m = run(sc, "6.18")
    assert 0 < m["loop_iterations"] < 1000
    assert 50_000 <= m["sim_time_ns"] < 80_000
    assert counted_window_ns(sc) == 50_000
    assert ops_per_s(sc, m) == m["loop_iterations"] * 1e9 / 50_000


@pytest.mark.parametrize("kw,needle", [
    ({}, "times, duration_ns or both"),
    ({"times": 2, "stride": 100}, "multiple of the 4096-byte page"),
    ({"times": 17, "stride": 4096}, "at offset 65536"),
    ({"duration_ns": 1000, "stride": 4096}, "lies outside"),
])
def test_bad_loops_are_one_line_errors(kw, needle):
    with pytest.raises(InputError, match=needle):
        _loop(**kw)


def test_wis_names_are_checked():
    for bad, needle in [("wis:tlb_flush9:threads:2", "TEST"), ("wis:tlb_flush2:fibers:2", "MODE"),
                        ("wis:tlb_flush2:threads:0", "N must"), ("wis:tlb_flush2:threads:2:0", "MS must"),
                        ("wis:tlb_flush2", "expected wis:TEST")]:
        with pytest.raises(InputError, match=needle):
            resolve_workload(bad)


def test_wis_threads_share_an_mm_and_processes_do_not():
    """tlb_flush2 with two threads: every MADV_DONTNEED of one page shoots down the other CPU, about one
    IPI per iteration; with two processes each mm lives on one CPU: no IPI at all, and more iterations."""
    threads = run(resolve_workload("wis:tlb_flush2:threads:2:2"), "6.18")
    procs = run(resolve_workload("wis:tlb_flush2:processes:2:2"), "6.18")
    assert threads["loop_iterations"] > 100
    assert abs(threads["ipis_sent"] - threads["loop_iterations"]) <= 0.05 * threads["loop_iterations"]
    assert procs["ipis_sent"] == 0 and procs["loop_iterations"] > threads["loop_iterations"]
    assert threads["violations"] == [] and procs["violations"] == []


@pytest.mark.parametrize("test", ["tlb_flush1", "tlb_flush3"])
def test_wis_file_tests_refault_from_their_file(test):
    """Private (1) and shared (3) file mappings: each iteration faults twice (write, then the read after
    MADV_DONTNEED), and nothing is reported unsafe."""
    m = run(resolve_workload(f"wis:{test}:processes:1:1"), "6.18")
    assert m["loop_iterations"] > 50 and m["page_faults"] >= 2 * m["loop_iterations"]
    assert m["violations"] == []


def test_compare_json_reports_ops_per_s_for_wis_only():
    r = cli("compare", "--workload", "wis:tlb_flush2:threads:2:1", "--policies", "3.0,6.18", "--json")
    assert r.returncode == 0, r.stderr
    runs = json.loads(r.stdout)["runs"]
    assert all(x["ops_per_s"] == pytest.approx(x["metrics"]["loop_iterations"] * 1000, rel=1e-3) for x in runs)
    r = cli("compare", "--workload", "small", "--policies", "3.0", "--json")
    assert "ops_per_s" not in json.loads(r.stdout)["runs"][0]


def _file_reads(around: int, cached: str, start_page: int = 0, pages: int = 32, policy: str = "6.18") -> dict:
    """A read pass over `pages` pages of a private mapping of file f (offset `start_page` pages into the
    VMA's PTE table), f's first `cached` bytes in the page cache, fault_around_pages `around`."""
    from mmugather.workloads.scenario import parse_scenario
    vma = {"name": "a", "size": pages * 4096, "kind": "file", "file": "f",
           "start": 0x7e0000000000 + start_page * 4096}
    return run(parse_scenario({"seed": 1, "files": [{"name": "f", "cached": cached}],
                               "machine": {"cpus": 1, "latency_task": False, "fault_around_pages": around},
                               "process": [{"name": "p", "vma": [vma], "thread": [{"cpu": 0, "program": [
                                   {"op": "touch", "vma": "a", "write": False}, {"op": "halt"}]}]}]}, "t"), policy)


def test_fault_around_maps_the_cached_pages_of_the_aligned_window_clamped_to_the_vma():
    """do_fault_around() (6.18): one read fault per 16-page aligned window of cached pages; a VMA starting
    6 pages into a window maps 16 pages from the VMA's start (from_pte clamped to the VMA), then the aligned
    windows: pages 16-25, then 26-31 (cut at the VMA's end), 3 faults; pages not in the page cache fault
    one by one; off (0) or under 2.6.39, every page faults."""
    assert _file_reads(16, "128KiB")["page_faults"] == 2
    assert _file_reads(16, "256KiB", start_page=6)["page_faults"] == 3
    assert _file_reads(16, "64KiB")["page_faults"] == 1 + 16
    assert _file_reads(0, "128KiB")["page_faults"] == 32
    assert _file_reads(16, "128KiB", policy="2.6.39")["page_faults"] == 32


def test_tlb_flush1_with_two_threads_sends_two_shootdowns_an_iteration_as_the_host():
    """Fault-around maps the next pages read-only, so 15 of 16 writes copy a mapped page (wp_page_copy(),
    ptep_clear_flush()): a second shootdown per iteration besides MADV_DONTNEED's; the host measured 1.86
    (docs/host.md), the model without fault-around 1.0."""
    sc = resolve_workload("wis:tlb_flush1:threads:2:2")
    m = run(sc, "6.18", arch="x86")
    assert 1.8 < m["ipis_sent"] / m["loop_iterations"] < 2.05
    assert m["violations"] == []


def test_a_cached_file_must_be_page_aligned():
    from mmugather.workloads.scenario import parse_scenario
    with pytest.raises(InputError, match="cached"):
        parse_scenario({"files": [{"name": "f", "cached": 100}], "process": []}, "t")


def test_a_phase_starts_task_i_i_times_k_pages_into_its_mapping():
    """wis_workload(name, K): task i's loop walks from page (i * K) % 16 (its touches and madvise offset,
    its pass that many pages shorter); K = 0 is the workload as named (every golden unchanged)."""
    from mmugather.workloads.wis import wis_workload
    name = "wis:tlb_flush1:threads:3:2"
    assert wis_workload(name, 0) == wis_workload(name)
    inner = [t["program"][0]["body"][1] for t in wis_workload(name, 10)["process"][0]["thread"]]
    assert [op.get("offset", 0) // 4096 for op in inner[1]["body"]] == [10, 10, 10]
    assert [op.get("offset", 0) // 4096 for op in inner[2]["body"]] == [4, 4, 4]      # 20 % 16
    assert [i["times"] for i in inner] == [32768, 32768 - 10, 32768 - 4]
    assert "offset" not in inner[0]["body"][0]
    with pytest.raises(InputError, match="phase 16"):
        wis_workload(name, 16)


def test_tlb_flush1_threads_keep_their_phase_and_it_sets_their_rate():
    """The model's two threads start together and keep their phase: aligned (0), the first page of each
    16-page fault-around window (a write on a none PTE: no shootdown of its own) comes on both at once, so
    every shootdown lands on a thread waiting for its own; 8 pages apart, each thread's first-page write
    takes the other's IPI unoverlapped. Same shootdowns per iteration, fewer iterations (host-like costs:
    a 7 us handler, 2.5-3 us faults; docs/host.md, "tlb_flush1 threads:2 taken apart")."""
    from mmugather.machine.costs import Costs
    from mmugather.workloads.scenario import parse_scenario
    from mmugather.workloads.wis import wis_workload
    costs = Costs(ipi_send=1300, ipi_delivery=1600, ipi_handler=7000, ipi_ack=500, page_alloc=1000, fault_entry=700,
                  wp_copy=400, file_fault=450, map_pages=430)
    got = {}
    for k in (0, 8):
        sc = parse_scenario(wis_workload("wis:tlb_flush1:threads:2:5", k), "t")
        m = run(sc, "6.18", arch="x86", costs=costs)
        assert m["violations"] == []
        got[k] = (ops_per_s(sc, m), m["ipis_sent"] / m["loop_iterations"])
    assert abs(got[8][1] - got[0][1]) < 0.02
    assert got[8][0] < 0.92 * got[0][0]
