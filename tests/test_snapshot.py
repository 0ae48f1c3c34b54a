"""Snapshots of real processes: strict loading, capture of a live process, and scenarios built from them."""
import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from mmugather.errors import InputError
from mmugather.policies import POLICIES
from mmugather.sim.simulation import Simulation
from mmugather.workloads.scenario import PAGE, parse_scenario
from mmugather.workloads.snapshot import (NO_STRUCT_PAGE, Snapshot, builtin_snapshots, capture, load_snapshot,
                                          resolve_snapshot, snapshot_to_scenario)

BUILTIN = builtin_snapshots()
NODE = BUILTIN["node"]


def _populated_pages(scenario: dict) -> int:
    return sum(length for v in scenario["process"][0]["vma"] for _, length in v.get("populate", [])) // PAGE


def _copy(tmp_path, src=NODE, without=()) -> Path:
    d = tmp_path / "snap"
    shutil.copytree(src, d)
    for name in without:
        (d / name).unlink()
    return d


def test_three_real_snapshots_ship_small():
    assert {"python", "node", "postgres"} <= set(BUILTIN)
    for d in BUILTIN.values():
        assert sum(f.stat().st_size for f in d.iterdir()) < 300_000


@pytest.mark.parametrize("name", sorted(BUILTIN))
@pytest.mark.parametrize("variant", ["exit", "munmap-largest"])
def test_each_shipped_snapshot_becomes_a_scenario_that_tears_down_exactly_its_rss(name, variant):
    snap = resolve_snapshot(name)
    data = snapshot_to_scenario(snap, variant)
    sc = parse_scenario(data, name)
    assert snap.has_present and snap.rss_pages > 1000
    assert _populated_pages(data) == snap.rss_pages
    assert not any(v.name.split(":", 1)[1] in NO_STRUCT_PAGE for v in sc.process[0].vma)
    assert any(v.name.endswith(":[vdso]") for v in sc.process[0].vma)
    metrics = Simulation(sc, POLICIES["3.0"]).run()
    assert metrics["pages_unmapped"] == snap.rss_pages == sum(v.rss for v in snap.vmas) // PAGE  # smaps' whole Rss
    assert metrics["violations"] == []


def test_populate_follows_pagemap_where_it_agrees_with_rss():
    snap = resolve_snapshot("postgres")
    vma = next(v for v in snap.vmas if v.rss and sum(n for _, n in v.present) == v.rss and len(v.present) > 1)
    spec = next(s for s in snapshot_to_scenario(snap)["process"][0]["vma"] if s["start"] == vma.start)
    assert [tuple(r) for r in spec["populate"]] == list(vma.present)


def test_without_pagemap_rss_is_placed_from_each_vma_start(tmp_path):
    snap = load_snapshot(_copy(tmp_path, without=["present", "meta.json"]))
    assert not snap.has_present and snap.threads == 1 and snap.pid is None
    data = snapshot_to_scenario(snap)
    assert _populated_pages(data) == snap.rss_pages == resolve_snapshot("node").rss_pages
    assert all(v["populate"][0][0] == 0 and len(v["populate"]) == 1
               for v in data["process"][0]["vma"] if "populate" in v)
    assert "from each VMA start" in data["description"]


def test_anon_huge_pages_are_populated_as_512_small_pages():
    snap = resolve_snapshot("python")
    huge = [v for v in snap.vmas if v.anon_huge]
    assert huge and sum(v.anon_huge for v in huge) >= 16 << 21
    data = snapshot_to_scenario(snap)
    assert f"{sum(v.anon_huge for v in huge) >> 21} THPs populated as 512 pages each" in data["description"]
    assert _populated_pages(data) == snap.rss_pages


def test_threads_are_capped_by_cpus_and_churn_away_from_the_munmapped_vma():
    snap = resolve_snapshot("node")
    assert snap.threads == 7
    data = snapshot_to_scenario(snap, "munmap-largest", cpus=3)
    threads = data["process"][0]["thread"]
    assert [t["cpu"] for t in threads] == [0, 1, 2] and data["machine"]["cpus"] == 3
    target = threads[0]["program"][0]["vma"]
    largest = max(snap.torn_down, key=lambda v: v.rss)
    assert target.split(":")[0] == str(snap.torn_down.index(largest))
    assert all(t["program"][0]["op"] == "churn" and t["program"][0]["vma"] != target for t in threads[1:])
    assert len(snapshot_to_scenario(snap)["process"][0]["thread"]) == 7


def test_file_vmas_are_files_and_shared_mappings_are_shared():
    data = snapshot_to_scenario(resolve_snapshot("postgres"))
    vmas = data["process"][0]["vma"]
    shm = [v for v in vmas if v.get("shared")]
    assert shm and all(v["kind"] == "file" for v in shm)
    assert {f["name"] for f in data["files"]} == {v["file"] for v in vmas if v.get("kind") == "file"}
    assert any(v.get("kind", "anon") == "anon" and v["name"].endswith("[heap]") for v in vmas)


def test_bad_arguments_are_input_errors():
    snap = resolve_snapshot("node")
    with pytest.raises(InputError, match="variant"):
        snapshot_to_scenario(snap, "execve")
    with pytest.raises(InputError, match="cpus"):
        snapshot_to_scenario(snap, cpus=0)
    with pytest.raises(InputError, match="neither a snapshot directory nor a built-in"):
        resolve_snapshot("no-such-snapshot")


def test_capture_of_this_process_round_trips(tmp_path):
    snap = capture(os.getpid(), tmp_path / "me")
    meta = json.loads((tmp_path / "me" / "meta.json").read_text())
    assert meta["pid"] == os.getpid() and meta["captured_by"] == "mmugather" and meta["kernel"] == os.uname().release
    assert snap.threads >= 1 and snap.has_present and snap.rss_pages > 1000
    assert any(v.path == "[stack]" and v.present for v in snap.vmas)
    assert load_snapshot(tmp_path / "me") == snap
    assert _populated_pages(snapshot_to_scenario(snap)) == snap.rss_pages


def test_capture_of_a_missing_pid_is_one_line():
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    with pytest.raises(InputError, match=rf"^pid {pid_max + 1}: no such process$"):
        capture(pid_max + 1, "/nonexistent/out")


def _edit(d: Path, name: str, fn) -> None:
    (d / name).write_text(fn((d / name).read_text()))


def _set_field(key, value, nth=0):
    """Replace the value of the nth entry's `key` line in smaps."""
    def fn(text):
        lines, seen = text.split("\n"), -1
        for k, line in enumerate(lines):
            if line.startswith(key + ":"):
                seen += 1
                if seen == nth:
                    lines[k] = f"{key}:{value:>16} kB"
                    return "\n".join(lines)
        raise AssertionError(key)
    return fn


def _first_big(key):
    """Index of the first smaps entry whose `key` is positive."""
    text = (NODE / "smaps").read_text()
    vals = [int(line.split()[1]) for line in text.split("\n") if line.startswith(key + ":")]
    return next(i for i, v in enumerate(vals) if v > 0)


BROKEN = {
    "overlap": ("maps", lambda t: _overlap(t), r"maps:3: range .* overlaps"),
    "truncated maps line": ("maps", lambda t: _cut_line(t, 2), r"maps:2: not a maps line"),
    "rss over size": ("smaps", _set_field("Rss", 1 << 30), r"smaps:5: Rss 1073741824 kB exceeds Size"),
    "anon over rss": ("smaps", _set_field("Anonymous", 999996, _first_big("Rss")), r"Anonymous 999996 kB exceeds Rss"),
    "thp over anon": ("smaps", _set_field("AnonHugePages", 2048, _first_big("Rss")),
                      r"AnonHugePages 2048 kB exceeds Anonymous|Anonymous .* exceeds"),
    "not 4 kB": ("smaps", _set_field("Swap", 6), r"smaps:\d+: Swap 6 kB is not a multiple of the 4 kB page"),
    "parts do not add up": ("smaps", _set_field("Private_Dirty", 4, _first_big("Private_Clean")),
                            r"Shared_Clean \+ Shared_Dirty \+ Private_Clean \+ Private_Dirty = \d+ kB, not Rss"),
    "smaps from elsewhere": ("smaps", lambda t: t.replace(" r--p ", " r--s ", 1), r"smaps:1: entry does not match"),
    "smaps truncated at an entry": ("smaps", lambda t: t[:t.rindex("\n", 0, t.rindex("VmFlags"))],
                                    r"keys differ from the first entry's .*truncated"),
    "garbled number": ("smaps", lambda t: t.replace("Rss:", "Rss: x", 1), r"smaps:\d+: not a 'Key: N kB' line"),
    "present outside": ("present", lambda t: t.rstrip("\n") + " 999999+1\n", r"present:\d+: run 999999\+1"),
    "present unknown vma": ("present", lambda t: t + "1000-2000 0+1\n", r"present:\d+: '1000-2000' is not"),
    "meta garbled": ("meta.json", lambda t: t[:-3], r"meta.json:\d+: malformed JSON"),
    "meta threads": ("meta.json", lambda t: t.replace('"threads": 7', '"threads": "7"'), r"'threads' must be"),
}


def _overlap(text):
    lines = text.split("\n")
    a, b = lines[1].split("-", 1)[0], lines[2].split("-", 1)
    lines[2] = f"{int(a, 16) + 0x1000:x}-{b[1]}"
    return "\n".join(lines)


def _cut_line(text, n):
    lines = text.split("\n")
    lines[n - 1] = lines[n - 1][:20]
    return "\n".join(lines)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_snapshots_are_one_line_errors_naming_file_and_line(tmp_path, case):
    name, fn, pattern = BROKEN[case]
    d = _copy(tmp_path)
    _edit(d, name, fn)
    with pytest.raises(InputError, match=pattern) as e:
        load_snapshot(d)
    assert str(e.value).startswith(str(d / name)) and "\n" not in str(e.value)


@pytest.mark.parametrize("missing", ["maps", "smaps"])
def test_a_missing_required_file_is_named(tmp_path, missing):
    d = _copy(tmp_path, without=[missing])
    with pytest.raises(InputError, match=rf"^{d / missing}: missing$"):
        load_snapshot(d)


TEXTS = {name: (NODE / name).read_text().split("\n") for name in ("maps", "smaps", "present")}


@st.composite
def mutations(draw):
    """The node snapshot with 1-3 of: a line cut short, a number garbled, two lines swapped, a line
    dropped or repeated, a range made to overlap its predecessor."""
    files = {k: list(v) for k, v in TEXTS.items()}
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(files)))
        lines = files[name]
        i = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["cut", "garble", "swap", "drop", "repeat", "overlap"]))
        if kind == "cut":
            lines[i] = lines[i][:draw(st.integers(0, max(0, len(lines[i]) - 1)))]
        elif kind == "garble":
            digits = [k for k, c in enumerate(lines[i]) if c in "0123456789abcdef"]
            if digits:
                k = draw(st.sampled_from(digits))
                repl = draw(st.sampled_from(["", "-", "x", " ", "9999999999999999999999", "0", "1", "ffff"]))
                lines[i] = lines[i][:k] + repl + lines[i][k + 1:]
        elif kind == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "drop":
            del lines[i]
        elif kind == "repeat":
            lines.insert(i, lines[i])
        elif i > 0 and "-" in lines[i] and "-" in lines[i - 1]:
            start = lines[i - 1].split("-", 1)[0]
            lines[i] = start + "-" + lines[i].split("-", 1)[1]
    return {k: "\n".join(v) for k, v in files.items()}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(mutations())
def test_mutated_real_snapshots_load_or_fail_with_one_line(tmp_path, files):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    try:
        snap = load_snapshot(tmp_path)
    except InputError as e:
        assert "\n" not in str(e) and str(e).startswith(str(tmp_path))
        event(str(e).removeprefix(str(tmp_path)).split(":")[0] + " rejected")
        return
    event("loaded")
    assert isinstance(snap, Snapshot)
    data = snapshot_to_scenario(snap)
    assert _populated_pages(data) == snap.rss_pages
    try:
        parse_scenario(data, "fuzz")
    except InputError as e:
        assert "\n" not in str(e)


_MAPS = ["555555554000-555555556000 rw-p 00000000 00:00 0 [heap]",
         "7f0000000000-7f0000004000 r--p 00000000 00:00 0 [vvar]",
         "7f0000004000-7f0000006000 r-xp 00000000 00:00 0 [vdso]",
         "7f0000010000-7f0000012000 rw-s 00000000 00:05 7 /dev/mem",
         "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]"]
_SMAPS = [(8, 8, "rd wr mr mw me ac"), (16, 0, "rd mr pf io de dd"), (8, 4, "rd ex mr mw me de"),
          (8, 0, "rd wr sh mr mw me ms io pf dd"), (4, 0, "ex")]


def test_vdso_pages_are_unmapped_but_not_freed_and_pfn_maps_are_skipped(tmp_path):
    """[vdso]'s page is a normal page mapped with get_page() (vdso_fault(), arch/x86/entry/vdso/vma.c):
    exit_mmap unmaps it and its put_page after the flush leaves it to the vdso image. [vvar], [vsyscall]
    and a PFN map (/dev/mem, VmFlags pf) have no struct pages: not in the scenario at all."""
    d = tmp_path / "snap"
    d.mkdir()
    (d / "maps").write_text("\n".join(_MAPS) + "\n")
    (d / "smaps").write_text("".join(f"{h}\nSize: {size} kB\nRss: {rss} kB\nVmFlags: {flags}\n"
                                     for h, (size, rss, flags) in zip(_MAPS, _SMAPS)))
    snap = load_snapshot(d)
    assert [v.path for v in snap.torn_down] == ["[heap]", "[vdso]"] and snap.rss_pages == 3
    sc = parse_scenario(snapshot_to_scenario(snap), "vdso")
    for policy in ("2.6.39", "3.0", "6.18"):
        metrics = Simulation(sc, POLICIES[policy]).run()
        assert (metrics["pages_unmapped"], metrics["pages_freed"]) == (3, 2), policy
        assert metrics["violations"] == [], policy
