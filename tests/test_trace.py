"""The Chrome/Perfetto trace writer: what it writes is valid, and the validator catches broken traces."""
import json

from mmugather.report.trace import PID, ChromeTrace, validate_trace


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
