"""Coverage of the true mean by evalkit's clustered 95% bootstrap interval and by the
unclustered one (standalone: `python bench/bench_coverage.py [n_sets]`).

Simulated accuracy data with a known true mean (0.6): clips with a per-clip accuracy
drawn from a Beta distribution with intra-cluster correlation ICC, several questions per
clip (tests/test_statistics.py `simulate_coverage`, which the unit test runs at a smaller
size). A correct 95% interval covers ~95% of the time; the unclustered interval ignores
that questions on one clip are correlated and under-covers as the design effect
1 + (size - 1) * ICC grows.
"""
from __future__ import annotations

import os
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, ".."))
sys.path.insert(0, os.path.join(here, "..", "tests"))

from test_statistics import simulate_coverage  # noqa: E402

SETTINGS = [  # (clips, questions per clip, ICC)
    (40, 5, 0.0),
    (40, 5, 0.1),
    (40, 5, 0.3),
    (100, 4, 0.5),
    (20, 10, 0.3),
]


def main() -> None:
    n_sets = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    print(f"coverage of the true mean by the 95% interval, {n_sets} simulated datasets each, 1000 resamples")
    print(f"{'clips':>5} {'q/clip':>6} {'ICC':>4} {'design eff.':>11} {'clustered':>9} {'unclustered':>11}")
    t = time.perf_counter()
    for clips, size, icc in SETTINGS:
        clustered, single = simulate_coverage(n_sets, clips, size, max(icc, 1e-6), n_boot=1000, seed=1)
        print(f"{clips:>5} {size:>6} {icc:>4.1f} {1 + (size - 1) * icc:>11.2f} {clustered:>9.1%} {single:>11.1%}")
    se = (0.95 * 0.05 / n_sets) ** 0.5
    print(f"(sd of a coverage figure at 95%: {se:.1%}; {time.perf_counter() - t:.1f} s)")


if __name__ == "__main__":
    main()
