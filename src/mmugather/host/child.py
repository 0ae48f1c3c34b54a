"""The measurement child's entry point: `python -m mmugather.host.child JOB_JSON` runs one job and prints its
JSON result on stdout. worker.run_worker starts it pinned to CPU 0; the jobs live in probe.py and calibrate.py,
which import worker.py for the second thread, so this table sits above all three.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable

from mmugather.host import calibrate, probe

JOBS: dict[str, Callable[[dict], dict]] = {"ipis": probe.measure_ipis, **calibrate.JOBS}


def main(argv: list[str]) -> int:
    """Run the job named by argv[0]'s "kind" and print its result as one JSON object."""
    job = json.loads(argv[0])
    print(json.dumps(JOBS[job["kind"]](job)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
