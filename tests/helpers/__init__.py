"""Helpers shared by the test modules (conftest.py exposes the fixtures): scenarios built as dicts, a run
under a policy, and the command line run as a user runs it (a subprocess) or in this interpreter."""
from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from hypothesis import settings

from mmugather.policies import POLICIES
from mmugather.sim.simulation import Simulation
from mmugather.workloads.scenario import Scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[2]
SLOW_PROFILE_EXAMPLES = 300                      # conftest.py's `slow` hypothesis profile
EXTERNAL = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", re.IGNORECASE)


def scenario(vmas, threads, cpus=4, preempt="voluntary", latency=True, seed=1, fail_nowait=0.0) -> Scenario:
    """One process with these VMAs and threads on a machine of `cpus` CPUs."""
    return parse_scenario({"seed": seed, "machine": {"cpus": cpus, "preempt": preempt, "latency_task": latency,
                                                     "fail_nowait": fail_nowait},
                           "process": [{"name": "app", "vma": vmas, "thread": threads}]}, "test")


def run(sc, policy, **kw) -> dict:
    """The metrics of `sc` under `policy` (a built-in name or a Kernel subclass)."""
    cls = POLICIES[policy] if isinstance(policy, str) else policy
    return Simulation(sc, cls, **kw).run()


def munmap_while_others_run(size="4MiB", cpus=4, preempt="voluntary", fail_nowait=0.0) -> Scenario:
    """Thread 0 munmaps a populated region while the other threads keep touching their own memory."""
    threads = [{"cpu": 0, "program": [{"op": "munmap", "vma": "a"}, {"op": "exit"}]}]
    warm = {"op": "touch", "vma": "a", "size": "64KiB", "write": False}
    threads += [{"cpu": i, "program": [warm, {"op": "churn", "vma": "w", "gap_ns": 1500}]} for i in range(1, cpus)]
    return scenario([{"name": "a", "size": size, "populate": True},
                     {"name": "w", "size": "1MiB", "populate": True}], threads, cpus=cpus, preempt=preempt,
                    fail_nowait=fail_nowait)


def examples(n: int) -> int:
    """max_examples for a property worth `n` examples: all of them under the `slow` hypothesis profile, a
    tenth (at least 10) under the default one (conftest.py loads the profile before modules import)."""
    if settings.default.max_examples >= SLOW_PROFILE_EXAMPLES:
        return n
    return max(10, n // 10)


def cli(*args, cwd=ROOT, **kw) -> subprocess.CompletedProcess:
    """`python -m mmugather ARGS` in a fresh interpreter, as a user runs it (exit code, stdout, stderr)."""
    return subprocess.run([sys.executable, "-m", "mmugather", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, **kw)


def cli_here(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    """cli() without the interpreter start-up: the console entry point in this interpreter (for tests of
    what a command prints and returns; signals, process trees and crashes need cli())."""
    argv = [str(a) for a in args]
    code, out, err = cli_in_process(argv, cwd=Path(cwd))
    return subprocess.CompletedProcess(argv, code, out, err)


def cli_in_process(argv: list[str], cwd: Path = ROOT) -> tuple[int, str, str]:
    """`mmugather ARGV` through the console entry point in this interpreter, from `cwd`: (exit code, stdout,
    stderr). Same code path as `python -m mmugather` without an interpreter start-up."""
    from mmugather.cli import entry
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = ["mmugather", *argv]
    code = 0
    try:
        with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            entry()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
    return code, out.getvalue(), err.getvalue()


def assert_self_contained(text: str) -> None:
    """Nothing is fetched (no external src/href, no scripts or images) and every inline SVG is well formed."""
    assert not EXTERNAL.search(text)
    assert not re.search(r"<(script|link|img|iframe)\b", text, re.IGNORECASE)
    for svg in re.findall(r"<svg\b.*?</svg>", text, re.DOTALL):
        assert ET.fromstring(svg).tag == "{http://www.w3.org/2000/svg}svg"
