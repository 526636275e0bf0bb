"""Planner estimate vs peak memory measured on an H200 (data/reference/h200_smollm2-1.7b.json).

Prints one row per measured recipe: estimate, measurement and relative error; exits 1 if any
error is beyond 15%. Runs in seconds on a CPU (only an empty meta-device model is built).

    python benchmarks/planner_vs_reference.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from course_utils.planner import compare_with_reference  # noqa: E402

TOLERANCE = 0.15


def main() -> int:
    rows = compare_with_reference()
    print(f"{'recipe':<22} {'estimate GiB':>12} {'measured GiB':>12} {'error':>8}  peak phase")
    worst = 0.0
    for r in rows:
        worst = max(worst, abs(r["rel_error"]))
        flag = "" if abs(r["rel_error"]) <= TOLERANCE else "  <-- beyond 15%"
        print(
            f"{r['name']:<22} {r['estimate_GiB']:>12.2f} {r['measured_GiB']:>12.2f} "
            f"{100 * r['rel_error']:>+7.1f}%  {r['peak_phase']}{flag}"
        )
    print(f"worst |error|: {100 * worst:.1f}% (tolerance {100 * TOLERANCE:.0f}%)")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
