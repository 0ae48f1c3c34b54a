"""The arch layer (arch/): every arch class holds to its Protocol, and the hooks mm/ calls exist on each."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from mmugather.policies import POLICIES
from mmugather.sim.machine import Simulation
from mmugather.workloads.builtin import resolve_workload

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("policy", ["2.6.39", "3.0"])
def test_mprotect_on_x86_of_2_6_39_and_3_0_flushes_the_whole_mm(policy):
    """mprotect's flush_tlb_range() is flush_tlb_mm() on x86 of that era: one flush, an IPI to the CPU
    running the other thread (it crashed before X86Legacy had flush_tlb_range)."""
    m = Simulation(resolve_workload("mprotect:64:running"), POLICIES[policy], cpus=2, arch="x86").run()
    assert (m["tlb_flushes"], m["ipis_by_cpu"], m["violations"]) == (1, [0, 1], [])


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed (test extras)")
def test_every_registered_arch_satisfies_its_protocol_under_mypy():
    """mypy, configured in pyproject.toml, checks arch/ (the registry's types hold each arch class to Arch
    or Arch618)."""
    r = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
