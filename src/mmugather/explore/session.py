"""One exploration end to end: search, shrink, tell; and the JSON replay file that reproduces it.

A replay file holds everything a run depends on: the scenario itself (not its path), the policy spec, the
fixes switched off, the seed and arch, and the schedule as deviations from the default choices. Its story
is stored too, so that `mmugather replay` can say whether the replay told the same story byte for byte.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from mmugather.errors import InputError, read_input
from mmugather.explore import search
from mmugather.explore.story import tell
from mmugather.explore.target import KernelTarget

FORMAT = "mmugather-replay/1"
STRATEGIES = ("exhaustive", "pct", "random")
DEFAULT_BUDGET = {"exhaustive": 200_000, "pct": 2000, "random": 2000}


def run_search(target, *, strategy: str = "exhaustive", max_preemptions: int = 2, budget: int | None = None,
               seed: int = 0, pct_depth: int = 3, max_steps: int = 10_000, hash_states: bool = True,
               por: bool = True, shrink: bool = True, progress: search.Progress | None = None) -> dict:
    """Search `target` with `strategy`; when a violation is found, shrink its schedule and tell its story.
    `por` off: exhaustive explores without sleep sets (the unpruned search, to compare against).
    Returns the report (JSON-ready)."""
    if strategy not in STRATEGIES:
        raise InputError(f"--strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    for option, value, least in (("--max-preemptions", max_preemptions, 0), ("--budget", budget, 1),
                                 ("--max-steps", max_steps, 1), ("--depth", pct_depth, 1)):
        if value is not None and value < least:
            raise InputError(f"{option}: expected a number >= {least}, got {value}")
    budget = budget or DEFAULT_BUDGET[strategy]
    if strategy == "exhaustive":
        res = search.exhaustive(target, max_preemptions=max_preemptions, max_depth=max_steps, budget=budget,
                                hash_states=hash_states, sleep_sets=por, progress=progress)
    elif strategy == "pct":
        res = search.pct(target, depth=pct_depth, budget=budget, seed=seed, max_depth=max_steps,
                         progress=progress)
    else:
        res = search.random_walk(target, budget=budget, seed=seed, max_depth=max_steps, progress=progress)
    report = {
        "strategy": strategy, "bound": res.bound, "covered": res.covered, "executions": res.executions,
        "transitions": res.transitions, "states": res.states, "cut_at_max_steps": res.cut,
        "pruned": res.pruned, "slept": res.slept, "por": por and strategy == "exhaustive",
        "longest": res.max_depth_seen, "seconds": round(res.seconds, 3),
        "violation": res.violation, "schedule": None, "story": None, "stale_use": None,
    }
    if res.violation is None or res.trace is None:      # (a violation comes with its trace)
        return report
    schedule = search.to_deviations(target, res.trace)
    report["found_schedule_length"] = len(schedule)
    if shrink:
        schedule = search.shrink(target, schedule, res.violation["kind"], max_steps=max_steps)
    told = tell(target, schedule, max_steps=max_steps)
    report["schedule"] = schedule
    report["story"] = told["lines"]
    report["stale_use"] = told["stale_use"]
    report["violation"] = told["violation"] or res.violation
    report["steps"] = told["steps"]
    return report


def coverage_sentence(report: dict) -> str:
    """What a clean search covered, in one sentence."""
    b = report["bound"]
    if report["strategy"] == "exhaustive":
        what = (f"every schedule with at most {b['max_preemptions']} preemption"
                f"{'' if b['max_preemptions'] == 1 else 's'}")
        if report["cut_at_max_steps"]:
            what += f" up to {b['max_depth']} steps ({report['cut_at_max_steps']} executions cut there)"
        if not report["covered"]:
            return (f"NOT covered: the budget of {b['budget']} executions ran out before {what} was explored "
                    f"({report['executions']} executions, {report['transitions']} transitions)")
        return (f"covered {what}: {report['executions']} executions, {report['transitions']} transitions, "
                f"{report['states']} distinct states")
    return (f"{report['executions']} {report['strategy']} schedules (seed {b['seed']}"
            f"{', depth ' + str(b['depth']) if 'depth' in b else ''}), {report['transitions']} transitions; "
            f"a random search proves nothing beyond them")


def target_spec(scenario, policy_spec: str, without_fixes, seed, arch) -> dict:
    """The inputs of a target, as stored in a replay file."""
    return {"scenario": scenario.model_dump(mode="json"), "policy": policy_spec,
            "without_fixes": list(without_fixes), "seed": seed, "arch": arch}


def replay_document(spec: dict, report: dict, actors: dict[int, str]) -> dict:
    return {"format": FORMAT, **spec, "schedule": report["schedule"], "violation": report["violation"],
            "actors": {str(k): v for k, v in sorted(actors.items())}, "story": report["story"],
            "found_by": {k: report[k] for k in ("strategy", "bound", "executions", "transitions")}}


def write_replay(path: str, doc: dict) -> None:
    try:
        Path(path).write_text(json.dumps(doc, indent=1) + "\n")
    except OSError as e:
        raise InputError(f"--out: cannot write {path}: {e.strerror}") from None


def load_replay(path: str, max_memory: int | None = None) -> tuple[KernelTarget, dict]:
    """Read a replay file: (its target, the document). Problems are one InputError line; so is a scenario
    estimated to need more than `max_memory` bytes (checked before anything is built)."""
    from mmugather.policies import get_policy
    from mmugather.workloads.scenario import parse_scenario
    p = Path(path)
    try:
        doc = json.loads(read_input(p))
    except OSError as e:
        raise InputError(f"{path}: cannot read replay file: {e.strerror}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a JSON replay file: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"{path}: not a replay file of format {FORMAT}")
    sched = doc.get("schedule")
    if not isinstance(sched, list) or not all(isinstance(d, list) and len(d) == 2 and
                                               all(isinstance(x, int) for x in d) for d in sched):
        raise InputError(f"{path}: schedule: expected a list of [step, actor] pairs of integers")
    policy, fixes = doc.get("policy"), doc.get("without_fixes") or []
    if not isinstance(policy, str) or not _NAME.match(policy):
        raise InputError(f"{path}: policy: expected a policy name or plugin spec, got {_short(policy)}")
    if not isinstance(fixes, list) or not all(isinstance(f, str) and _NAME.match(f) for f in fixes):
        raise InputError(f"{path}: without_fixes: expected a list of fix names, got {_short(fixes)}")
    scenario = parse_scenario(doc.get("scenario"), f"{path}: scenario")
    if max_memory is not None:
        from mmugather.workloads.scenario import estimate_memory, human_bytes
        if estimate_memory(scenario) > max_memory:
            raise InputError(f"--max-memory: {path}: its scenario needs about "
                             f"{human_bytes(estimate_memory(scenario))}; the limit is {human_bytes(max_memory)}")
    policy = get_policy(policy)
    target = KernelTarget(scenario, policy, without_fixes=tuple(fixes),
                          seed=doc.get("seed"), arch=doc.get("arch"))
    _check_actors(path, sched, target, scenario)
    return target, doc


_NAME = re.compile(r"^[^\x00-\x20\x7f]+$")       # a name or spec: printable, no spaces or newlines


def _short(v) -> str:
    text = json.dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_actors(path: str, schedule: list, target: KernelTarget, scenario) -> None:
    """Every deviation names an actor of the scenario: a task of a fresh build, the IPIs of one of its CPUs,
    or (when a program forks) a task started later. A replay would otherwise ignore the entry and tell
    the default story as if nothing were wrong."""
    from mmugather.workloads.scenario import ForkOp, walk_ops
    actors = target.actor_names()
    forks = any(isinstance(op, ForkOp) for p in scenario.process for t in p.thread for op, _ in walk_ops(t.program))
    last_tid = max((a for a in actors if a >= 0), default=-1)
    for k, (step, actor) in enumerate(schedule):
        if step < 0:
            raise InputError(f"{path}: schedule[{k}]: step {step} is negative")
        if actor in actors or (forks and actor > last_tid):
            continue
        known = ", ".join(f"{a} ({n})" for a, n in sorted(actors.items()))
        raise InputError(f"{path}: schedule[{k}]: [{step}, {actor}]: no actor {actor} in this scenario "
                         f"(actors: {known})")
