"""Record (or check) the golden outputs that prove a refactor changed no user-visible result.

`python tests/golden/record.py` writes tests/golden/outputs.json: `compare --json` of every built-in workload
and example scenario (and a few parametric workloads) under every policy and arch it supports, `bugs run
--json` of every catalogued bug, and `explore --json` of every example scenario under its policy with a small
budget. Host-time fields (`seconds`) are dropped. tests/test_golden.py runs the same commands and compares.
Each command runs in this interpreter through the console entry point (helpers.cli_in_process), not in a
subprocess. The default test run checks a subset (`slow` False): every workload under one policy/arch pair
(in turn, so each pair is covered), every bug and every explore; `-m slow` checks the rest.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import cli_in_process  # noqa: E402  (tests/helpers, also when run as a script)

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).with_name("outputs.json")

POLICY_ARCHES = {"2.6.39": ["x86"], "3.0": ["x86", "ppc64"], "6.18": ["x86", "x86-kvm", "arm64"]}
BUILTINS = ["default", "small", "exit-1g", "munmap-1g", "execve"]
EXAMPLES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*.toml"))
PARAMETRIC = ["munmap:512:blocked", "dontneed:9000", "munmap-sparse:600", "mremap:64",
              "wis:tlb_flush2:threads:2:2", "snapshot:python"]
BUGS = ["fast-mode-3.0", "madv-dontneed-flush-miss", "mremap-flush-after-unlock", "nested-flush-reset-range"]
SLOW = {"default", "exit-1g", "munmap-1g", "snapshot:python"}
QUICK_BUGS = {"fast-mode-3.0"}          # the others search for 10-50 s of CPU each (test_bugs.py covers their verdicts)


def cases() -> list[tuple[str, list[str], bool]]:
    """(key, argv, slow) for every golden command. Not slow: the i-th quick workload under the i-th
    policy/arch pair (mod their number), the quick bug, every explore."""
    pairs = [(policy, arch) for policy, arches in POLICY_ARCHES.items() for arch in arches]
    out = []
    quick = 0
    for workload in BUILTINS + EXAMPLES + PARAMETRIC:
        default_pair = None if workload in SLOW else pairs[quick % len(pairs)]
        quick += workload not in SLOW
        for policy, arch in pairs:
            argv = ["compare", "--workload", workload, "--policies", policy, "--arch", arch, "--json"]
            out.append((f"compare {workload} {policy} {arch}", argv, (policy, arch) != default_pair))
    for bug in BUGS:
        out.append((f"bugs {bug}", ["bugs", "run", bug, "--json"], bug not in QUICK_BUGS))
    for example in EXAMPLES:
        out.append((f"explore {example}", ["explore", example, "--budget", "40", "--json"], False))
    return out


def scrub(obj: object) -> object:
    """Drop host-time fields, recursively."""
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items() if k not in ("seconds",)}
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    return obj


def run_case(argv: list[str]) -> object:
    """Run `mmugather ARGV` from the repository root; its JSON (scrubbed), or its exit and stderr."""
    code, out, err = cli_in_process(argv, cwd=ROOT)
    try:
        return {"exit": code, "json": scrub(json.loads(out))}
    except json.JSONDecodeError:
        return {"exit": code, "stderr": err.strip().splitlines()[-1:]}


def main() -> None:
    results = {}
    for key, argv, _slow in cases():
        results[key] = run_case(argv)
        print(key, results[key].get("exit"), file=sys.stderr, flush=True)
    OUT.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
