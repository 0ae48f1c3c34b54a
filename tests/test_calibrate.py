"""calibrate: each cost from its own host probe, fitted so the model's version of that probe takes the host's
time; the cost file round-trips; and each calibrated cost is charged where the kernel spends it."""
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmugather.host import calibrate as cal
from mmugather.host.kernel_check import model_unavailable
from mmugather.host.probe import host_supported
from mmugather.machine.costs import Costs, load_costs

ROOT = Path(__file__).resolve().parents[1]
needs_model = pytest.mark.skipif(model_unavailable() != "", reason=f"model: {model_unavailable()}")


def fig(median: float, unit: str = "ns") -> cal.Figure:
    return cal.Figure(median, median * 0.95, median * 1.1, 11, unit, "test")


# A host a little slower than the reference machine everywhere (every figure above the model's other charges).
FIGURES = {"null_syscall_ns": fig(250), "zero_ns_per_page": fig(300, "ns/page"),
           "anon_read_fault_ns": fig(900, "ns/page"), "anon_write_fault_ns": fig(2200, "ns/page"),
           "munmap_ns_per_page": fig(300, "ns/page"), "munmap_1page_alone_ns": fig(3000),
           "dontneed_1page_alone_ns": fig(1900), "mprotect_1page_alone_ns": fig(1950),
           "mmap_1page_alone_ns": fig(2700), "file_private_write_fault_ns": fig(2500, "ns/page"),
           "file_shared_write_fault_ns": fig(1500, "ns/page"), "file_private_wp_copy_ns": fig(3000, "ns/page"),
           "pmd_read_fault_ns": fig(3000), "pmd_split_dontneed_ns": fig(2400), "pmd_shared_write_fault_ns": fig(14000),
           "shootdown_round_trip_ns": fig(12000), "shootdown_receiver_ns": fig(7000),
           "idle_round_trip_ns": fig(30000), "file_read_fault_window1_ns": fig(1400),
           "map_pages_folio_ns": fig(20, "ns/folio")}


def test_a_figure_keeps_median_percentiles_and_spread():
    f = cal.figure([10.0, 11.0, 12.0, 13.0, 100.0], "ns", "p")
    assert f.median == 12.0 and f.n == 5 and f.p10 < 11.0 and f.p90 > 13.0
    assert f.spread == pytest.approx((f.p90 - f.p10) / 12.0)
    d = fig(100).minus(fig(40), "diff")
    assert d.median == 60 and d.p10 == pytest.approx(95 - 44) and d.p90 == pytest.approx(110 - 38)


def test_a_figure_keeps_quartiles_and_judges_noise_by_its_middle_half():
    f = cal.figure([10.0] * 8 + [11.0] * 8 + [40.0, 60.0, 80.0, 90.0], "ns", "p")     # a few slow outliers
    assert f.p25 == 10.0 and f.p75 == 11.0 and f.iqr_spread == pytest.approx(1 / 11)
    assert f.spread > 3 and "p25" in f.as_dict() and "p25" not in f.minus(f, "d").as_dict()


def test_noisy_names_the_figures_above_the_limit_worst_first():
    figures = {**FIGURES, "munmap_1page_alone_ns": cal.Figure(100, 50, 200, 9, "ns", "t", 60, 150),
               "null_syscall_ns": cal.Figure(100, 80, 140, 9, "ns", "t", 85, 115),
               "anon_read_fault_ns": cal.Figure(100, 50, 300, 9, "ns", "t", 98, 102)}
    assert cal.noisy(figures, 0.25) == [("munmap_1page_alone_ns", 0.9), ("null_syscall_ns", pytest.approx(0.3))]
    assert cal.noisy(FIGURES, 0.25) == []


def test_a_bimodal_figure_is_never_refused():
    (k,) = cal.BIMODAL
    assert k in cal.NOISE_CHECKED
    assert cal.noisy({k: cal.Figure(100, 50, 300, 21, "ns", "t", 60, 250)}, 0.25) == []


def test_without_a_model_the_direct_figures_are_set_and_shared_in_the_defaults_proportions():
    c, sources = cal.fit_costs(FIGURES, with_model=False)
    assert c["syscall"] == 250 and c["page_zero"] == 300
    assert c["pte_zap"] + c["page_free"] == 300
    assert c["ipi_handler"] == 7000 and c["ipi_idle_exit"] == 30000
    assert sum(c[f] for f in cal.ROUND_TRIP_FIELDS) == 12000 - 7000    # the round trip holds the handler
    d = Costs()
    assert abs(c["ipi_send"] / c["ipi_ack"] - d.ipi_send / d.ipi_ack) < 0.01
    assert "munmap_call" not in c and sources["syscall"].startswith("null_syscall_ns (median 250.0 ns")


@needs_model
def test_each_fitted_cost_makes_the_models_probe_take_the_hosts_time():
    """Every fit with a model figure: the fitted costs make that figure the host's median (to rounding)."""
    out, sources = cal.fit_costs(FIGURES)
    costs = replace(Costs(), **out)
    for fit in cal.fits():
        if fit.model is not None:
            want = FIGURES[fit.figure].median
            assert fit.model(costs) == pytest.approx(want, rel=0.01, abs=3), fit.figure
    assert all(out[k] > 0 for k in ("munmap_call", "madvise_call", "mprotect_call", "mmap_call", "file_fault",
                                     "page_mkwrite", "ipi_idle_exit", "fault_entry", "page_alloc", "wp_copy",
                                     "pmd_map", "split_huge_pmd", "page_mkwrite_pmd", "map_pages", "map_pages_folio"))
    assert all(k in sources for k in out)


@needs_model
def test_a_mutual_shootdown_costs_the_model_one_round_trip_as_on_the_host():
    """shootdown_probe.c on this host (docs/host.md): a 1-page MADV_DONTNEED takes as long with both threads
    shooting each other down as with one sender and a receiver in user mode (11.2 against 11.6 us), while
    the receiver loses 6.9 us per IPI: its handler runs inside its own wait. The model, with the host's
    split (a handler longer than the rest of the round trip), does the same; charging the handler after
    the wait would make the mutual call a round trip plus a handler."""
    costs = replace(Costs(), ipi_handler=6800, ipi_send=1300, ipi_delivery=1500, ipi_ack=500, madvise_call=900)
    alone, running = cal.syscall_ns("dontneed:1:alone")(costs), cal.syscall_ns("dontneed:1:running")(costs)
    assert running - alone == pytest.approx(6800 + 1300 + 1500 + 500 + costs.flush_one, abs=costs.flush_call)
    assert cal.mutual_ns(costs) == pytest.approx(running, rel=0.05)
    assert cal.receiver_ns(costs) == 6800 + costs.flush_one


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_cost_file_round_trips_through_load_costs(tmp_path, suffix):
    costs, sources = cal.fit_costs(FIGURES, with_model=False)
    path = tmp_path / f"host{suffix}"
    path.write_text(cal.cost_file_text(FIGURES, costs, sources, suffix[1:], "a note\nover two lines"))
    loaded = load_costs(path)
    assert all(getattr(loaded, k) == v for k, v in costs.items())
    data = json.loads(path.read_text()) if suffix == ".json" else __import__("tomllib").loads(path.read_text())
    assert data["measured"]["munmap_ns_per_page"] == FIGURES["munmap_ns_per_page"].as_dict()
    if suffix == ".toml":
        assert "# syscall: null_syscall_ns (median 250.0 ns" in path.read_text()
    else:
        assert data["sources"]["syscall"] == sources["syscall"]


# ---------------------------------------------------------------- calls_probe.c: the short calls timed in C
def _probe_output(pmd: list[float]) -> dict:
    lists = {key: [1000.0, 1100.0, 1200.0] for key, _, _ in cal._C_CALLS + cal._C_PASSES}
    return {**lists, "empty": [20.0, 30.0, 40.0], "null": [130.0, 150.0, 170.0],
            "pmd_read": pmd, "pmd_split": pmd, "pmd_write": pmd, "pmd_wp_write": pmd, "pmd_ranges": 44 if pmd else 0,
            "map_pages_1": [1300.0, 1330.0, 1360.0], "map_pages_16": [1600.0, 1630.0, 1660.0]}


def test_the_c_figures_are_less_the_empty_clock_pair_per_call_and_not_per_pass():
    f = cal.calls_figures(_probe_output([3000.0, 3100.0]), "/tmp")
    assert f["dontneed_1page_alone_ns"].median == 1100 - 30 and f["pmd_read_fault_ns"].median == 3050 - 30
    assert f["anon_write_fault_ns"].median == 1100 and f["anon_write_fault_ns"].unit == "ns/page"
    assert f["null_syscall_ns"].median == pytest.approx(150 - 30 / 200)
    assert f["file_read_fault_window1_ns"].median == 1330 - 30 and f["file_read_fault_window16_ns"].median == 1630 - 30
    assert f["map_pages_folio_ns"].median == pytest.approx(300 / 15) and f["map_pages_folio_ns"].unit == "ns/folio"
    assert all(fit.figure in f for fit in cal.fits() if fit.figure in FIGURES and "round_trip" not in fit.figure
               and fit.figure not in ("munmap_ns_per_page", "shootdown_receiver_ns"))
    assert all(g.probe.startswith("calls_probe.c") for g in f.values())
    no_pmd = cal.calls_figures(_probe_output([]), "/tmp")
    assert not [k for k in no_pmd if k.startswith("pmd")] and "mmap_1page_alone_ns" in no_pmd


@pytest.mark.skipif(cal.shutil.which("cc") is None and cal.shutil.which("gcc") is None, reason="no C compiler")
def test_the_calls_probe_compiles_and_its_json_parses_into_the_figures(tmp_path):
    exe = cal.build_probe(cal.CALLS_SOURCE, str(tmp_path))
    got = cal.calls_samples(exe, str(tmp_path), 5, 1, 60)
    assert len(got["mmap"]) == len(got["empty"]) == 5 and len(got["write_fault"]) == 1
    f = cal.calls_figures(got, str(tmp_path))
    assert f["munmap_1page_alone_ns"].median > 0 and f["anon_write_fault_ns"].median > 0
    assert ("pmd_read_fault_ns" in f) == (got["pmd_ranges"] >= 4)
    assert len(got["map_pages_1"]) == len(got["map_pages_16"]) == 1 and f["file_read_fault_window1_ns"].median > 0


def test_without_a_c_compiler_the_python_probes_stand_in_and_calibrate_says_so(monkeypatch, tmp_path):
    from mmugather.cli import main
    monkeypatch.setattr(cal.shutil, "which", lambda name: None)
    assert cal.build_probe(cal.CALLS_SOURCE, str(tmp_path)) is None and cal._c_call_figures(11, 10, "/tmp") == {}
    monkeypatch.setattr("mmugather.host.probe.host_supported", lambda: "")
    no_cc = {k: f for k, f in FIGURES.items() if not k.startswith("shootdown")}    # what a host without cc measures
    monkeypatch.setattr(cal, "calibrate", lambda runs: no_cc)
    out = CliRunner().invoke(main, ["calibrate", "-o", str(tmp_path / "h.toml"), "--no-fit"])
    assert out.exit_code == 0, out.output
    assert "no C compiler (cc)" in out.output and "timed from Python" in out.output


# ---------------------------------------------------------------- where the calibrated costs are charged
ANON = {"name": "a", "size": 256 * 4096}
FILE = {**ANON, "kind": "file", "file": "f"}
WRITE, READ = {"op": "touch", "vma": "a", "write": True}, {"op": "touch", "vma": "a", "write": False}
DROP = {"op": "madvise", "vma": "a", "advice": "dontneed"}
def _window_read_ns(costs) -> float:
    """tlb_flush1's read: a read fault of page 5 of a 16-page private file VMA (fault-around 16) whose other
    15 pages a read of page 0 mapped, after a 1-page MADV_DONTNEED of page 5 (16 folios walked, 1 mapped)."""
    page5 = {"vma": "a", "size": 4096, "offset": 5 * 4096}
    before = [{**READ, "size": 4096}, {"op": "madvise", "advice": "dontneed", **page5}]

    def run(program):
        return cal._run({"name": "t", "seed": 1, "machine": {"cpus": 1, "preempt": "voluntary", "latency_task": False,
                                                             "fault_around_pages": 16},
                         "files": [{"name": "f", "cached": 16 * 4096}],
                         "process": [{"name": "p", "vma": [{"name": "a", "size": 16 * 4096, "kind": "file",
                                                            "file": "f", "shared": False}],
                                      "thread": [{"cpu": 0, "program": program + [{"op": "halt"}]}]}]},
                        costs)["sim_time_ns"]
    return float(run(before + [{"op": "touch", "write": False, **page5}]) - run(before))


PROBES = {
    "munmap:1:alone": cal.syscall_ns("munmap:1:alone"),
    "dontneed:1:alone": cal.syscall_ns("dontneed:1:alone"),
    "mprotect:1:alone": cal.syscall_ns("mprotect:1:alone"),
    "munmap:1:running": cal.syscall_ns("munmap:1:running"),
    "munmap:512:blocked": cal.syscall_ns("munmap:512:blocked"),
    "dontneed:1:running": cal.syscall_ns("dontneed:1:running"),
    "receiver": cal.receiver_ns,
    "mutual": cal.mutual_ns,
    "mmap": cal._mmap_ns,
    "anon write fault": cal.per_page_ns(ANON, [], [WRITE]),
    "anon read fault": cal.per_page_ns(ANON, [], [READ]),
    "private file write fault": cal.per_page_ns({**FILE, "shared": False}, [READ, DROP], [WRITE]),
    "shared file write fault": cal.per_page_ns({**FILE, "shared": True}, [WRITE, DROP], [WRITE]),
    "private file copy": cal.per_page_ns({**FILE, "shared": False}, [READ], [WRITE]),
    "pmd read fault": cal.pmd_fault_ns([], {**READ, "size": 4096}),
    "pmd write fault": cal.pmd_fault_ns([], {**WRITE, "size": 4096}),
    "pmd split": cal.pmd_split_ns,
    "file read fault, window of 1": cal.map_pages_ns,
    "file read fault, window of 16": _window_read_ns,
}
# the probes whose time each cost adds to, and how many times (per call or page; all others: unchanged)
CHARGED = {
    "munmap_call": {"munmap:1:alone": 1, "munmap:1:running": 1, "munmap:512:blocked": 1},
    "mprotect_call": {"mprotect:1:alone": 1},
    "mmap_call": {"mmap": 1},
    "file_fault": {"private file write fault": 1, "shared file write fault": 1, "pmd write fault": 1},
    "page_mkwrite": {"shared file write fault": 1, "pmd write fault": 1},
    "page_mkwrite_pmd": {"pmd write fault": 1},        # ->page_mkwrite() walks the 2 MiB folio's blocks
    "pmd_map": {"pmd read fault": 1, "pmd write fault": 1},
    "split_huge_pmd": {"pmd split": 1},
    "madvise_call": {"dontneed:1:alone": 1, "dontneed:1:running": 1, "mutual": 1, "pmd split": 1},
    "wp_copy": {"private file copy": 1},
    # filemap_map_pages(): once per fault-around; every cached folio of the window, mapped by the fault or not
    "map_pages": {"file read fault, window of 1": 1, "file read fault, window of 16": 1},
    "map_pages_folio": {"file read fault, window of 1": 1, "file read fault, window of 16": 16},
    "ipi_idle_exit": {"munmap:512:blocked": 1},     # the idle CPU's IPI; a running target pays nothing
    # the target's handler: in every round trip, in the receiver's lost time, and once (not twice) in a
    # mutual shootdown, where each CPU runs the other's handler while it waits for its own ack
    "ipi_handler": {"munmap:1:running": 1, "munmap:512:blocked": 1, "dontneed:1:running": 1, "receiver": 1,
                    "mutual": 1},
    # and the fault costs: every fault enters; a read of anonymous memory maps the zero page, allocating
    # nothing; a private write allocates (a copy); a shared file page is the page cache's own. The 512-page
    # munmap allocates the 6.18 gather's two batch pages (tlb_next_batch()); the first fault in a fresh VMA
    # allocates its PTE table (1/256 of a page per page of the 256-page micro-workloads). A fault mapping a
    # PMD preallocates a PTE table and frees it unused: charged in pmd_map.
    "fault_entry": {"anon write fault": 1, "anon read fault": 1, "private file write fault": 1,
                    "shared file write fault": 1, "private file copy": 1, "pmd read fault": 1, "pmd write fault": 1,
                    "file read fault, window of 1": 1, "file read fault, window of 16": 1},
    "page_alloc": {"anon write fault": 1 + 1 / 256, "anon read fault": 1 / 256, "private file write fault": 1,
                   "munmap:512:blocked": 2, "private file copy": 1},
    "page_zero": {"anon write fault": 1, "private file write fault": 1, "private file copy": 1},
}


@needs_model
@pytest.mark.parametrize("field", sorted(CHARGED))
def test_a_calibrated_cost_is_charged_once_where_the_kernel_spends_it_and_nowhere_else(field):
    base = {name: probe(Costs()) for name, probe in PROBES.items()}
    more = replace(Costs(), **{field: getattr(Costs(), field) + 1000})
    bumped = {name: probe(more) for name, probe in PROBES.items()}
    for name in PROBES:
        assert bumped[name] - base[name] == pytest.approx(1000 * CHARGED[field].get(name, 0), abs=1), name


@pytest.mark.host
@pytest.mark.skipif(host_supported() != "", reason=f"host cannot run the probes: {host_supported()}")
def test_live_calibration_measures_sane_figures_and_writes_a_usable_cost_file(tmp_path):
    """On this host: every probe gives a positive figure of a plausible size, and compare accepts the file."""
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "mmugather", *args], capture_output=True, text=True, cwd=ROOT)
    out = tmp_path / "host.toml"
    r = cli("calibrate", "-o", str(out), "--runs", "3", "--max-spread", "100")
    assert r.returncode == 0, r.stderr
    measured = __import__("tomllib").loads(out.read_text())["measured"]
    assert 10 < measured["null_syscall_ns"]["median"] < 20_000
    assert 20 < measured["zero_ns_per_page"]["median"] < 20_000
    assert measured["anon_write_fault_ns"]["median"] > measured["anon_read_fault_ns"]["median"] > 0
    assert measured["dontneed_loop_running_ns"]["median"] > measured["dontneed_loop_alone_ns"]["median"] > 0
    assert measured["shootdown_receiver_ns"]["median"] > 0 and measured["shootdown_mutual_ns"]["median"] > 0
    c = load_costs(out)
    assert c.pte_zap + c.page_free > 0 and c.ipi_send > 0 and c.syscall > 0
    r = cli("compare", "--workload", "munmap-1g", "--policies", "3.0", "--costs", str(out), "--json")
    assert r.returncode == 0, r.stderr
