"""The Chrome/Perfetto trace writer: what it writes is valid, and the validator catches broken traces."""
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import munmap_while_others_run
from mmugather.policies import POLICIES
from mmugather.report.html import DISTRIBUTIONS
from mmugather.report.trace import PID, ChromeTrace, validate_trace
from mmugather.sim.simulation import Simulation
from mmugather.sim.tracing import attach_trace
from mmugather.workloads.builtin import resolve_workload
from test_html import assert_self_contained
from test_invariants import FreeBeforeFlush, LeakBatchPages, SleepUnderPteLock


def shootdown_trace() -> ChromeTrace:
    """CPU 0 zaps a range and flushes, sending an IPI that CPU 1 handles inside its own slice."""
    t = ChromeTrace()
    t.begin(0, "unmap_vmas", 1000, {"pages": 512})
    t.begin(0, "tlb_flush_mmu", 5000)
    t.instant(0, "flush_tlb_others", 5100, {"cpus": [1]})
    t.flow(0, 5100, 1, 5400, "ipi")
    t.counter("gather memory (B)", 5100, 4096)
    t.begin(1, "user", 0)
    t.end(1, "user", 5300)
    t.begin(1, "flush_tlb_ipi", 5300)
    t.end(1, "flush_tlb_ipi", 5900)
    t.end(0, "tlb_flush_mmu", 6000)
    t.end(0, "unmap_vmas", 7000)
    t.counter("gather memory (B)", 7000, 0)
    return t


def test_written_trace_is_valid_and_has_one_named_track_per_cpu(tmp_path):
    path = tmp_path / "run.json"
    shootdown_trace().write(path)
    doc = json.loads(path.read_text())
    assert validate_trace(doc) == []
    events = doc["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {0: "CPU 0", 1: "CPU 1"}
    assert all(e["pid"] == PID for e in events)
    begin = next(e for e in events if e["ph"] == "B" and e["name"] == "tlb_flush_mmu")
    assert begin["ts"] == 5.0 and begin["tid"] == 0          # 5000 ns written as 5.0 us
    start, finish = (e for e in events if e["ph"] in "sf")
    assert (start["tid"], start["ts"], finish["tid"], finish["ts"]) == (0, 5.1, 1, 5.4)
    assert start["id"] == finish["id"] and finish["bp"] == "e"
    assert [e["args"]["value"] for e in events if e["ph"] == "C"] == [4096, 0]


def test_validator_catches_an_unclosed_begin():
    t = shootdown_trace()
    t.begin(2, "zap_pte_range", 8000)
    assert validate_trace(t.to_dict()) == ["B 'zap_pte_range' on pid 1 tid 2 is never closed by an E"]


def test_validator_catches_a_track_going_back_in_time():
    t = shootdown_trace()
    t.instant(1, "late", 100)
    problems = validate_trace(t.to_dict())
    assert len(problems) == 1 and "goes back from 5.9" in problems[0] and "tid 1" in problems[0]


def test_validator_catches_ends_out_of_stack_order_and_unpaired_flows():
    events = shootdown_trace().to_dict()["traceEvents"]
    swapped = [dict(e, name={"tlb_flush_mmu": "unmap_vmas", "unmap_vmas": "tlb_flush_mmu"}[e["name"]])
               if e["ph"] == "E" and e["tid"] == 0 else e for e in events]
    assert any("innermost open B is 'tlb_flush_mmu'" in p for p in validate_trace(swapped))
    no_finish = [e for e in events if e["ph"] != "f"]
    assert validate_trace(no_finish) == ["flow id 1 (cat flow): 1 start(s) and 0 finish(es), expected one of each"]
    early = [dict(e, ts=1.0) if e["ph"] == "f" else e for e in events]
    assert any("finishes at 1.0 before it starts at 5.1" in p for p in validate_trace(early))


def test_validator_requires_the_fields_of_each_phase():
    assert validate_trace([{"ph": "B", "name": "x", "pid": 1, "ts": 0}]) == ["event 0 (B): missing tid"]
    assert validate_trace([{"ph": "C", "name": "c", "pid": 1, "ts": 0, "args": {"value": "high"}}]) \
        == ["event 0 (C 'c' on pid 1 its counter track): counter args must be a non-empty object of numbers"]
    assert validate_trace([{"ph": "Q"}]) == ["event 0: unknown or missing phase 'Q'"]
    assert validate_trace({"events": []}) == ["expected a list of events or an object with a 'traceEvents' list"]


# ---------------------------------------------------------------- traces of simulated runs (sim/tracing.py)
ROOT = Path(__file__).resolve().parent.parent


def traced(sc, policy, **kw):
    """Run sc under policy with a trace attached; returns (simulation, metrics, trace document)."""
    sim = Simulation(sc, POLICIES[policy] if isinstance(policy, str) else policy, **kw)
    trace = attach_trace(sim)
    metrics = sim.run()
    return sim, metrics, json.loads(json.dumps(trace.to_dict()))


def tids(events) -> dict[str, int]:
    """Track name -> tid, from the thread_name metadata."""
    return {e["args"]["name"]: e["tid"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}


def spans(events, tid: int, name: str) -> list[int]:
    """Durations in ns of the B/E spans called name on track tid, in the order they close."""
    out, start = [], None
    for e in events:
        if e.get("tid") == tid and e.get("name") == name and e["ph"] in "BE":
            if e["ph"] == "B":
                start = e["ts"]
            else:
                out.append(round((e["ts"] - start) * 1000))
    return out


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_trace_of_a_run_is_valid_and_shows_the_teardown_and_every_shootdown(policy):
    """Per CPU: kernel function slices inside the task's slice, one IPI arrow per IPI the metrics counted,
    each from the flushing CPU to a handler slice on another CPU."""
    sim, m, doc = traced(resolve_workload("small"), policy)
    assert validate_trace(doc) == []
    events = doc["traceEvents"]
    track = tids(events)
    cpu_of = {track[f"CPU {cpu}"]: cpu for cpu in range(sim.ncpus)}
    assert len(set(track.values())) == len(track) == 3 * sim.ncpus + 1     # CPU, preempt off, PTE lock; machine
    sliced = Counter(e["name"] for e in events if e["ph"] == "B" and e["tid"] in cpu_of)
    for fn in ("sys_munmap", "sys_madvise_dontneed", "unmap_vmas", "zap_pte_range", "tlb_flush_mmu", "exit_mm"):
        assert sliced[fn] > 0, fn
    assert "access" not in sliced and "syscall" not in sliced
    assert {e["cat"] for e in events if e["ph"] == "B" and e["name"] == "sys_munmap"} == {"syscall"}
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    finishes = {e["id"]: e for e in events if e["ph"] == "f"}
    assert len(starts) == len(finishes) == m["ipis_sent"] > 0
    assert Counter(cpu_of[f["tid"]] for f in finishes.values()) \
        == {cpu: n for cpu, n in enumerate(m["ipis_by_cpu"]) if n}
    handlers = {(e["tid"], e["ts"]): e for e in events if e["ph"] == "X"}
    for fid, f in finishes.items():
        assert f["tid"] != starts[fid]["tid"]
        assert any(tid == f["tid"] and ts <= f["ts"] <= ts + h["dur"] for (tid, ts), h in handlers.items())
    assert m["violations"] == [] and not any(e["name"].startswith("violation") for e in events if e["ph"] == "i")


@pytest.mark.parametrize("policy", ["2.6.39", "3.0"])
@pytest.mark.parametrize("preempt", ["voluntary", "full"])
def test_preempt_off_and_pte_lock_spans_are_the_measured_intervals(policy, preempt):
    """The spans drawn are exactly the intervals the metrics measured, CPU by CPU."""
    sim, m, doc = traced(munmap_while_others_run(size="8MiB", preempt=preempt), policy)
    assert validate_trace(doc) == []
    events = doc["traceEvents"]
    track = tids(events)
    off = [d for cpu in range(sim.ncpus) for d in spans(events, track[f"CPU {cpu} preempt off"], "preempt off")]
    held = [d for cpu in range(sim.ncpus) for d in spans(events, track[f"CPU {cpu} PTE lock"], "PTE lock")]
    assert sorted(off) == sorted(sim.metrics.preempt_off) and max(off) == m["preempt_off_ns"]["max"]
    assert sorted(held) == sorted(sim.metrics.pte_lock_hold) and max(held) == m["pte_lock_hold_ns"]["max"]


def test_a_switched_out_task_closes_its_slices_and_reopens_them_when_it_resumes():
    """With a latency task preempting the teardown, task slices only ever sit at the bottom of a CPU track,
    and the interrupted sys_munmap shows as several slices on CPU 0, split where the other task ran."""
    sim, _, doc = traced(munmap_while_others_run(size="16MiB", cpus=2, preempt="full"), "3.0")
    assert validate_trace(doc) == []
    track = tids(doc["traceEvents"])
    cpus = {track[f"CPU {cpu}"] for cpu in range(sim.ncpus)}
    depth = Counter()
    munmap_slices, switched = 0, 0
    for e in doc["traceEvents"]:
        if e["ph"] == "B" and e["tid"] in cpus:
            assert (e["cat"] == "task") == (depth[e["tid"]] == 0), e
            depth[e["tid"]] += 1
            munmap_slices += e["name"] == "sys_munmap"
            switched += e["name"].startswith("latency/") and e["tid"] == track["CPU 0"]
        elif e["ph"] == "E" and e["tid"] in cpus:
            depth[e["tid"]] -= 1
    assert switched > 0 and munmap_slices > 1


def test_batch_fill_and_pending_free_counters_follow_the_gather():
    """2.6.39 flushes at FREE_PTE_NR = 506 pages; 3.0 chains batches, so pages pending free exceed a batch."""
    sc = munmap_while_others_run(size="8MiB")
    peaks = {}
    for policy in ("2.6.39", "3.0"):
        _, _, doc = traced(sc, policy)
        values = {}
        for e in doc["traceEvents"]:
            if e["ph"] == "C":
                values.setdefault(e["name"], []).append(e["args"]["pages"])
        peaks[policy] = {name: max(v) for name, v in values.items()}
        assert values["CPU 0 pending free"][-1] == 0
    assert peaks["2.6.39"]["CPU 0 batch fill"] == peaks["2.6.39"]["CPU 0 pending free"] == 506
    assert peaks["3.0"]["CPU 0 batch fill"] <= 510 < peaks["3.0"]["CPU 0 pending free"]


def test_violations_are_marked_where_they_are_detected():
    """A broken gather: one instant per violation found, on the track of the CPU that detected it."""
    sim, m, doc = traced(resolve_workload("small"), FreeBeforeFlush)
    assert validate_trace(doc) == []
    marks = [e for e in doc["traceEvents"] if e["ph"] == "i" and e["name"].startswith("violation: ")]
    assert len(marks) == sim.invariants.total > 0
    assert {e["name"] for e in marks} == {f"violation: {v['kind']}" for v in m["violations"]}
    track = tids(doc["traceEvents"])
    assert {e["tid"] for e in marks} <= {track[f"CPU {cpu}"] for cpu in range(sim.ncpus)}
    assert [e["args"]["detail"] for e in marks][:len(m["violations"])] == [v["detail"] for v in m["violations"]]
    sim, m, doc = traced(munmap_while_others_run(), SleepUnderPteLock)
    marks = [e for e in doc["traceEvents"] if e["ph"] == "i" and e["name"] == "violation: sleep-in-atomic"]
    track = tids(doc["traceEvents"])
    assert marks and all(e["tid"] == track[f"CPU {e['args']['cpu']}"] for e in marks)   # the CPU that slept
    assert not any(e.get("tid") == track["machine"] for e in doc["traceEvents"] if e["ph"] == "i")
    sim, m, doc = traced(munmap_while_others_run(), LeakBatchPages)
    assert validate_trace(doc) == []
    leaks = [e for e in doc["traceEvents"] if e["ph"] == "i" and e["name"] == "violation: leak"]
    end = max(e["ts"] for e in doc["traceEvents"] if e["ph"] != "M")
    machine = tids(doc["traceEvents"])["machine"]
    assert leaks and all(e["tid"] == machine and e["ts"] == end for e in leaks)   # found after the run


def test_tracing_changes_nothing_in_the_run():
    sc = resolve_workload("small")
    plain = Simulation(sc, POLICIES["3.0"], seed=3).run()
    assert traced(sc, "3.0", seed=3)[1] == plain


def test_attaching_twice_is_refused():
    sim = Simulation(resolve_workload("small"), POLICIES["3.0"])
    attach_trace(sim)
    with pytest.raises(ValueError, match="traced already"):
        attach_trace(sim)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "mmugather", *args], capture_output=True, text=True, cwd=ROOT,
                          check=False)


def test_compare_trace_of_the_default_workload_has_one_process_per_policy(tmp_path):
    """`compare --trace --html` on the default workload: one valid trace file, a process per policy, flow
    ids unique across the file; and its offline HTML report with the table and every plot."""
    out, html = tmp_path / "default.json", tmp_path / "default.html"
    r = cli("compare", "--json", "--trace", str(out), "--html", str(html))
    assert r.returncode == 0, r.stderr
    runs = json.loads(r.stdout)["runs"]
    text = html.read_text()
    assert_self_contained(text)
    assert text.count("<svg") == 2 + len(DISTRIBUTIONS)
    assert f'<th>shootdown IPIs sent</th><td class="n">{runs[0]["metrics"]["ipis_sent"]:,}</td>' in text
    doc = json.loads(out.read_text())
    assert validate_trace(doc) == []
    events = doc["traceEvents"]
    procs = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert [p.split(":")[0] for _, p in sorted(procs.items())] == [run["policy"] for run in runs]
    pids_of_tid = {}
    for e in events:
        if "tid" in e:
            pids_of_tid.setdefault(e["tid"], set()).add(e["pid"])
    assert all(len(pids) == 1 and e not in procs for e, pids in pids_of_tid.items())   # tids unique in the file
    for pid, run in zip(sorted(procs), runs):
        assert sum(e["ph"] == "s" and e["pid"] == pid for e in events) == run["metrics"]["ipis_sent"]
        assert any(e["ph"] == "B" and e["pid"] == pid and e["name"] == "zap_pte_range" for e in events)


def test_run_trace_is_valid_and_byte_identical_for_the_same_seed(tmp_path):
    a, b, c = (tmp_path / n for n in ("a.json", "b.json", "c.json"))
    for path, seed in ((a, "4"), (b, "4"), (c, "5")):
        r = cli("run", "small", "--policy", "3.0", "--seed", seed, "--json", "--trace", str(path))
        assert r.returncode == 0, r.stderr
    assert validate_trace(json.loads(a.read_text())) == []
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_unwritable_trace_file_is_a_one_line_error(tmp_path):
    for args in (("compare", "--workload", "small"), ("run", "small")):
        r = cli(*args, "--trace", str(tmp_path / "no" / "such" / "dir.json"))
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--trace: cannot write" in r.stderr, r.stderr
