"""The explorer's time to a verdict, this tree beside another (an older checkout): every catalogued bug's
`bugs run NAME --json` (the buggy search and the fixed variant's proof) and `explore` of every example
scenario, each run in a subprocess of this interpreter with PYTHONPATH at each tree's src/, old and new in
turn so that both see the same machine load.

Usage: python benchmarks/verdict_time.py --old /path/to/old/checkout [--bugs NAME,...] [--examples X,...]
       [--example-args "--max-preemptions 1 --budget 100"] [--repeat N]
       python benchmarks/verdict_time.py --old X --pruning [--bugs NAME,...]   (this tree, POR on and off)
Prints one line per command (seconds old, new, old/new, and whether the verdicts agree) and, last, one JSON
object with every figure. Seconds are the search's own (`seconds` in the JSON: the proof of the fixed
variant, the search of an example), the best of `--repeat` runs; CPU seconds are the whole command's (both
variants of a bug, shrinking and the story included), steadier than wall time on a busy machine. Bugs
the old tree does not catalogue are skipped.
Target (issue 19): every fixed-variant proof and example at least 5x shorter than at a5dff87.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

NEW = Path(__file__).resolve().parents[1]


def run(tree: Path, argv: list[str]) -> tuple[int, dict]:
    """`mmugather ARGV` with PYTHONPATH at `tree`/src, from this tree's root; (exit code, its JSON with
    "cpu_seconds": the command's CPU time, user + system, start-up included)."""
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run([sys.executable, "-m", "mmugather", *argv], cwd=NEW, env=env, capture_output=True,
                       text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    try:
        out = json.loads(p.stdout)
        if isinstance(out, dict):
            out["cpu_seconds"] = cpu
        return p.returncode, out
    except json.JSONDecodeError:
        raise SystemExit(f"{tree}: mmugather {' '.join(argv)} printed no JSON (exit {p.returncode}): "
                         f"{p.stderr.strip().splitlines()[-1:]}") from None


def bug_verdict(code: int, out: dict) -> tuple:
    return (code, out["ok"], (out["buggy"]["violation"] or {}).get("kind"), out["fixed"]["violation"],
            out["fixed"]["bound"]["covered"])


def explore_verdict(code: int, out: dict) -> tuple:
    return code, (out["violation"] or {}).get("kind"), out["covered"]


def best(tree: Path, argv: list[str], repeat: int, key) -> tuple[float, tuple, dict]:
    runs = [run(tree, argv) for _ in range(repeat)]
    secs = min(key(out) for _, out in runs)
    code, out = runs[0]
    return secs, code, out


def pruning(bugs: list[str]) -> None:
    """Per bug and variant: executions and transitions without partial-order reduction over those with it."""
    out = {}
    for name in bugs:
        _, on = run(NEW, ["bugs", "run", name, "--json"])
        _, off = run(NEW, ["bugs", "run", name, "--no-por", "--json"])
        for key in ("buggy", "fixed"):
            a, b = on[key], off[key]
            fx, ft = b["executions"] / max(a["executions"], 1), b["transitions"] / max(a["transitions"], 1)
            out[f"{name}/{key}"] = {"executions": [a["executions"], b["executions"]], "factor": round(fx, 3),
                                    "transitions": [a["transitions"], b["transitions"]],
                                    "transitions_factor": round(ft, 3), "slept": a["slept"]}
            print(f"{name + '/' + key:40s} executions {a['executions']:>7,} with POR, {b['executions']:>7,} without"
                  f" (x{fx:.3f}); transitions x{ft:.3f}; {a['slept']:,} branches slept", flush=True)
    print(json.dumps(out))


def side_by_side(a: argparse.Namespace, argv: list[str], seconds_of, fields) -> dict:
    """`mmugather ARGV` in the old tree and in this one (best of --repeat by `seconds_of`): per tree the
    verdict's seconds, the whole command's CPU seconds and `fields(code, out)`, then the ratios old/new."""
    row: dict = {}
    for label, tree in (("old", a.old), ("new", NEW)):
        secs, code, out = best(tree, argv, a.repeat, seconds_of)
        row[label] = {"seconds": round(secs, 3), "cpu_seconds": round(out["cpu_seconds"], 3), **fields(code, out)}
    row.update(ratio=round(row["old"]["seconds"] / max(row["new"]["seconds"], 1e-3), 2),
               cpu_ratio=round(row["old"]["cpu_seconds"] / max(row["new"]["cpu_seconds"], 1e-3), 2),
               same_verdict=row["old"]["verdict"] == row["new"]["verdict"])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, type=Path, help="the older checkout (its src/ is imported)")
    ap.add_argument("--bugs", default=None, help="comma-separated bug names (default: every bug of `bugs list`)")
    ap.add_argument("--examples", default=None, help="comma-separated example files (default: examples/*.toml)")
    ap.add_argument("--example-args", default="--max-preemptions 1 --budget 100",
                    help="explore options for the examples (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--pruning", action="store_true",
                    help="instead: this tree's work with and without --no-por per bug (the pruning factor)")
    a = ap.parse_args()
    if not (a.old / "src" / "mmugather").is_dir():
        print(f"verdict_time.py: --old {a.old}: no src/mmugather there", file=sys.stderr)
        raise SystemExit(2)
    if a.pruning:
        pruning(a.bugs.split(",") if a.bugs else [b["name"] for b in run(NEW, ["bugs", "list", "--json"])[1]])
        return
    _, listed = run(NEW, ["bugs", "list", "--json"])
    _, old_listed = run(a.old, ["bugs", "list", "--json"])
    both = [b["name"] for b in listed if b["name"] in {o["name"] for o in old_listed}]
    bugs = a.bugs.split(",") if a.bugs else both
    for name in sorted({b["name"] for b in listed} - set(both)):
        print(f"{name:32s} not in the old tree's catalogue: skipped", flush=True)
    examples = a.examples.split(",") if a.examples else sorted(str(p.relative_to(NEW))
                                                               for p in (NEW / "examples").glob("*.toml"))
    report: dict = {"bugs": {}, "examples": {}, "example_args": a.example_args}
    for name in bugs:
        row = side_by_side(a, ["bugs", "run", name, "--json"], lambda o: o["fixed"]["seconds"],
                           lambda code, out: {"buggy_seconds": out["buggy"]["seconds"],
                                              "executions": out["fixed"]["executions"],
                                              "verdict": bug_verdict(code, out)})
        report["bugs"][name] = row
        print(f"{name:32s} fixed proof {row['old']['seconds']:7.2f} s -> {row['new']['seconds']:6.2f} s"
              f"  x{row['ratio']:4.2f}; whole command {row['old']['cpu_seconds']:6.2f} -> "
              f"{row['new']['cpu_seconds']:6.2f} CPU s x{row['cpu_ratio']:4.2f}  (fixed executions "
              f"{row['old']['executions']:,} -> {row['new']['executions']:,}; buggy found "
              f"{row['old']['buggy_seconds']:.2f} -> {row['new']['buggy_seconds']:.2f} s)"
              f"{'' if row['same_verdict'] else '  VERDICTS DIFFER'}", flush=True)
    for ex in examples:
        row = side_by_side(a, ["explore", ex, *a.example_args.split(), "--json"], lambda o: o["seconds"],
                           lambda code, out: {"executions": out["executions"],
                                              "verdict": explore_verdict(code, out)})
        report["examples"][ex] = row
        print(f"{ex:32s} verdict in {row['old']['seconds']:7.2f} s -> {row['new']['seconds']:6.2f} s "
              f"x{row['ratio']:4.2f}; whole command {row['old']['cpu_seconds']:6.2f} -> "
              f"{row['new']['cpu_seconds']:6.2f} CPU s x{row['cpu_ratio']:4.2f}  (executions "
              f"{row['old']['executions']:,} -> {row['new']['executions']:,}; {row['new']['verdict']})"
              f"{'' if row['same_verdict'] else '  VERDICTS DIFFER ' + str(row['old']['verdict'])}", flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
