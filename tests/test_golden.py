"""Golden outputs: every user-visible result (compare --json of every built-in and example workload under
every policy and arch, bugs run, explore verdicts) is byte-identical to the recording in
tests/golden/outputs.json. A refactor that changes a number fails here; a deliberate model change
re-records with `python tests/golden/record.py` and says why in its commit. The default run checks every
workload under one policy/arch pair (each pair covered), every bug and every explore; `-m slow` the rest."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "golden"))
from record import OUT, cases, run_case  # noqa: E402

GOLDEN = json.loads(OUT.read_text())
CASES = cases()


@pytest.mark.parametrize("key,argv", [pytest.param(k, a, id=k, marks=[pytest.mark.slow] if slow else [])
                                      for k, a, slow in CASES])
def test_golden(key: str, argv: list[str]) -> None:
    """The command prints exactly what it printed when the golden file was recorded."""
    assert run_case(argv) == GOLDEN[key]
