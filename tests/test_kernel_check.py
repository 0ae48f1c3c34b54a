"""kernel-check: one catalogue for host and model, the match rule, the skip path, and (on a 2-CPU x86 host
with a TLB row) the quick subset measured for real and matched against the model."""
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from mmugather.host import kernel_check as kc
from mmugather.host.probe import ProbeResult, Script, host_supported
from mmugather.workloads.builtin import resolve_workload

ROOT = Path(__file__).resolve().parents[1]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "mmugather", *args], capture_output=True, text=True, cwd=ROOT)


def test_every_catalogue_name_is_a_model_workload():
    """The host's script names are the model's workload names: each resolves, with the op and thread B
    the name says."""
    for c in kc.CATALOGUE:
        sc = resolve_workload(c.name)
        threads = sc.process[0].thread
        assert len(threads) == (1 if c.second == "alone" else 2), c.name


def test_catalogue_straddles_the_limits_the_issue_names():
    names = {c.name for c in kc.CATALOGUE}
    assert {"munmap:9677:running", "munmap:9678:running", "munmap:1000000:running", "munmap:1:alone",
            "munmap-sparse:508:running", "munmap-sparse:510:running", "munmap-untouched:1000000:running",
            "mremap:20000:running", "dontneed:1022:blocked", "dontneed:1023:blocked"} <= names
    assert {c.op for c in kc.CATALOGUE} == {"munmap", "dontneed", "mprotect", "mremap", "munmap-untouched",
                                            "munmap-sparse"}
    quick = kc.select(quick=True)
    assert 0 < len(quick) < len(kc.CATALOGUE) and all(c.pages <= 20000 for c in quick)


def test_host_layout_is_the_model_scenarios_layout():
    """The host maps what the model placed: the sparse region is N * 512 pages with one touched page per
    2 MiB, below the other VMAs; an mremap destination lies just below its region."""
    sim = kc.model_simulation(kc.Check("munmap-sparse", 40, "running"), 2)
    layout = kc.layout_of(sim)
    region = next(v for v in layout if v["role"] == "region")
    assert region["size"] == 40 * 512 * 4096 and len(region["populate"]) == 40
    assert all(region["below_top"] > v["below_top"] for v in layout if v is not region)
    lay = kc.layout_of(kc.model_simulation(kc.Check("mremap", 512, "alone"), 2))
    region, dest = (next(v for v in lay if v["role"] == r) for r in ("region", "dest"))
    assert dest["below_top"] == region["below_top"] + dest["size"] and dest["populate"] is False


def _result(median, status="ok"):
    s = Script("x", "munmap", 1, "running")
    return ProbeResult(s, status, cpus=[0, 1], samples=[median], median=median, spread=[0, 0], ns=[1000],
                       median_ns=1000)


def test_a_row_matches_only_when_every_cpu_agrees():
    c = kc.Check("munmap", 1, "running")
    assert kc.row(c, _result([0, 1]), ([0, 1], 5), "")["match"] is True
    assert kc.row(c, _result([0, 1.5]), ([0, 1], 5), "")["match"] is False
    assert kc.row(c, _result([1, 1]), ([0, 1], 5), "")["match"] is False
    failed = kc.row(c, ProbeResult(Script("x", "munmap", 1, "running"), "failed", "timed out"), None, "")
    assert failed["match"] is False and failed["reason"] == "timed out"
    assert kc.row(c, _result([0, 1]), None, "no policy")["match"] is False


def test_a_traced_mismatch_on_a_cpu_that_ran_another_user_task_says_so():
    """Host 1 IPI on CPU 1 where the model says 2, and the trace saw a user task from outside the probe
    run there: the row stays a mismatch, with that as its reason; none when that CPU agrees."""
    c = kc.Check("munmap", 1_000_000, "blocked")
    r = _result([0, 1])
    trace = {"sends": 104, "shootdown": [0, 0], "wrong_cpu": [0, 1]}
    noisy = kc.row(c, replace(r, trace=trace | {"others": [0, 6]}), ([0, 2], 5), "")
    assert noisy["match"] is False and noisy["reason"].startswith("other user tasks ran on CPU 1 during the call")
    quiet = kc.row(c, replace(r, trace=trace | {"others": [0, 0]}), ([0, 2], 5), "")
    assert quiet["match"] is False and "reason" not in quiet
    agree = kc.row(c, replace(r, trace=trace | {"others": [3, 6]}), ([0, 1], 5), "")
    assert agree["match"] is True and "reason" not in agree


def test_a_host_that_cannot_probe_skips_every_script(monkeypatch):
    """One CPU or no TLB row: every script skipped, exit 0 (here in-process, the reason forced)."""
    monkeypatch.setattr(kc, "host_supported", lambda: "needs CPUs 0 and 1")
    out = kc.run_check(kc.select(quick=True))
    assert out["skipped"] is True and out["reason"] == "needs CPUs 0 and 1"
    assert all(r["status"] == "skipped" and r["match"] is None for r in out["scripts"])


def test_unknown_check_name_is_a_one_line_error():
    r = cli("kernel-check", "--only", "munmap:7:spinning")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown check" in r.stderr


@pytest.mark.host
@pytest.mark.skipif(host_supported() != "", reason=f"host cannot run the probes: {host_supported()}")
def test_quick_catalogue_host_and_model_agree():
    """The CI subset, measured on this host's kernel and simulated: every script's per-CPU shootdown
    counts (medians of 5) equal the model's, and the command exits 0."""
    r = cli("kernel-check", "--quick", "--json", "--repeat", "5")
    out = json.loads(r.stdout)
    assert out["skipped"] is False
    bad = [(s["name"], s["host_ipis_by_cpu"], s["model_ipis_by_cpu"], s.get("reason", ""))
           for s in out["scripts"] if not s["match"]]
    assert not bad and r.returncode == 0, bad


TRACE = (Path(__file__).parent / "fixtures" / "ftrace_tlb_flush.txt").read_text()   # tracefs `trace` of two windows


def test_trace_windows_count_the_callers_sends_and_each_cpus_handler_outcomes():
    """Only events between a window's markers count; sends only on the CPU that wrote them (CPU 1's
    `other` task sent one too); each CPU's remote shootdowns and wrong-CPU exits apart; and the switches
    to user tasks outside the probe (not to the probe's threads 9 and 11, idle, or kernel thread 40),
    once per run: agent 77 switched in and out counts once, and once when only its switch out is seen."""
    from mmugather.host.ftrace import windows
    w = windows(TRACE, [0, 1], own={9, 11}, is_user=lambda pid: pid != 40)
    assert w == {0: {"sends": 2, "shootdown": [0, 1], "wrong_cpu": [0, 1], "others": [0, 1]},
                 3: {"sends": 1, "shootdown": [0, 0], "wrong_cpu": [0, 0], "others": [1, 1]}}


def _tracefs():
    from mmugather.host.ftrace import find_tracefs
    return find_tracefs()[0] if host_supported() == "" else None


@pytest.mark.host
@pytest.mark.skipif(_tracefs() is None, reason="no usable tlb:tlb_flush tracepoint or host cannot probe")
def test_traced_kernel_decides_a_remote_flush_and_skips_a_lazy_cpu():
    """The kernel's own trace of the decisions the model makes: a 1-page munmap with thread B running
    sends one remote flush that CPU 1 handles; with B blocked (CPU 1 lazy) it still decides one remote
    flush (CPU 1 is in the mm's cpumask), but no CPU handles it: native_flush_tlb_multi() dropped the lazy
    CPU, as the model's 0 IPIs say."""
    out = kc.run_check(kc.select(names=["munmap:1:running", "munmap:1:blocked"]), repeats=3, trace_root=_tracefs())
    running, blocked = out["scripts"]
    tlb = ("sends", "shootdown", "wrong_cpu")
    assert {k: running["host_trace"][k] for k in tlb} == {"sends": 1, "shootdown": [0, 1], "wrong_cpu": [0, 0]}
    assert running["model_ipis_by_cpu"] == [0, 1]
    assert {k: blocked["host_trace"][k] for k in tlb} == {"sends": 1, "shootdown": [0, 0], "wrong_cpu": [0, 0]}
    assert blocked["model_ipis_by_cpu"] == [0, 0] and blocked["match"]


def test_trace_without_a_usable_tracepoint_is_a_one_line_error(monkeypatch, capsys):
    from mmugather.cli import entry
    from mmugather.host import ftrace
    monkeypatch.setattr(ftrace, "find_tracefs", lambda: (None, "tracefs is not mounted and could not be (needs root)"))
    monkeypatch.setattr(sys, "argv", ["mmugather", "kernel-check", "--only", "munmap:1:running", "--trace"])
    with pytest.raises(SystemExit) as e:
        entry()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "--trace: the tlb:tlb_flush tracepoint is not usable" in err


# ------------------------------------------------------------------ the profile matching the host (issue 24, item 2)
def _fake_cpuid(features: int, hints: int = 0, ecx1: int = 0, base: int = 0x40000000):
    """CPUID of a KVM guest whose leaves sit at `base` (ebx, ecx, edx of base spell KVMKVMKVM)."""
    import struct
    sig = struct.unpack("<3I", b"KVMKVMKVM\0\0\0")
    leaves = {base: (base + 1, *sig), base | 1: (features, 0, 0, hints), 1: (0, 0, ecx1, 0)}
    return lambda leaf: leaves.get(leaf, (0, 0, 0, 0))


def test_detect_arch_follows_pv_tlb_flush_supported():
    """x86-kvm exactly when arch/x86/kernel/kvm.c kvm_guest_init() installs kvm_flush_tlb_multi(): its log
    line, or pv_tlb_flush_supported() on CPUID (PV_TLB_FLUSH bit 9 and STEAL_TIME bit 5 of 0x40000001 EAX,
    no REALTIME hint, no MWAIT, more than one possible CPU); native x86 otherwise."""
    from mmugather.host.hypervisor import detect_arch
    pv = (1 << 9) | (1 << 5)
    assert detect_arch(log=["kvm-guest: KVM setup pv remote TLB flush"], probe=False)[0] == "x86-kvm"
    assert detect_arch(cpuid=_fake_cpuid(pv), ncpus=2, probe=False)[0] == "x86-kvm"
    assert detect_arch(cpuid=_fake_cpuid(pv, base=0x40000100), ncpus=2, probe=False)[0] == "x86-kvm"
    for no in (_fake_cpuid(1 << 9), _fake_cpuid(pv, hints=1), _fake_cpuid(pv, ecx1=1 << 3)):
        assert detect_arch(log=[], cpuid=no, ncpus=2, probe=False)[0] == "x86"
    assert detect_arch(cpuid=_fake_cpuid(pv), ncpus=1, probe=False)[0] == "x86"
    assert detect_arch(cpuid=lambda leaf: (0, 0, 0, 0), ncpus=2, probe=False)[0] == "x86"
    arch, why = detect_arch(flags={"fpu", "hypervisor"}, probe=False)
    assert arch == "x86" and "--arch" in why
    assert detect_arch(flags={"fpu"}, probe=False) == ("x86", "/proc/cpuinfo: no hypervisor flag (bare metal)")


def test_kernel_check_reports_and_uses_the_arch_it_compares_with(monkeypatch):
    """The model side runs on the detected arch, and the JSON says which and why: on x86-kvm a blocked
    (halted) CPU 1 gets the flush that frees the region's page table (munmap:512:blocked: 1 IPI)."""
    monkeypatch.setattr(kc, "detect_arch", lambda: ("x86-kvm", "test"))
    monkeypatch.setattr(kc, "host_supported", lambda: "")
    monkeypatch.setattr(kc, "run_script", lambda s, *a: ProbeResult(s, "ok", cpus=[0, 1], samples=[[0, 1]],
                                                                     median=[0, 1], spread=[0, 0]))
    monkeypatch.setattr(kc, "host_info", lambda: {"cpus": [0, 1]})
    out = kc.run_check(kc.select(names=["munmap:512:blocked"]))
    assert out["model"]["arch"] == "x86-kvm" and out["model"]["arch_reason"] == "test"
    assert out["scripts"][0]["model_ipis_by_cpu"] == [0, 1] and out["scripts"][0]["match"] is True
