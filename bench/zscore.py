"""Z-score update cost at window 1 080 vs 100 000: O(1) means the ratio stays ~1.

    python bench/zscore.py

Times RollingZScore.add (the desk's per-sample update: Welford add/remove plus the
amortised exact recompute every `window` samples) on a full window, both windows in this
run, best of 5. For contrast it also times the naive approach (recompute mean/std over the
window with NumPy on every sample), whose cost grows with the window.
"""

from __future__ import annotations

import time

import numpy as np

from basis_mcp.signals import RollingZScore

N_UPDATES = 200_000  # covers at least one full exact recompute at both windows


def per_update_seconds(window: int, data: np.ndarray) -> float:
    best = float("inf")
    for _ in range(5):
        tr = RollingZScore(window)
        for v in data[:window].tolist():  # fill the window first: eviction on every add
            tr.add(v)
        stream = data[window : window + N_UPDATES].tolist()
        t0 = time.perf_counter()
        for v in stream:
            tr.add(v)
        best = min(best, (time.perf_counter() - t0) / len(stream))
    return best


def naive_per_update_seconds(window: int, data: np.ndarray, n: int = 300) -> float:
    t0 = time.perf_counter()
    for i in range(window, window + n):
        w = data[i - window : i]
        _ = (data[i] - w.mean()) / w.std()
    return (time.perf_counter() - t0) / n


def main() -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(-0.012, 0.063, size=100_000 + N_UPDATES + 10)
    small = per_update_seconds(1080, data)
    large = per_update_seconds(100_000, data)
    naive_small = naive_per_update_seconds(1080, data)
    naive_large = naive_per_update_seconds(100_000, data)
    print(f"RollingZScore.add   window 1080:   {small * 1e9:8.0f} ns/update")
    print(f"RollingZScore.add   window 100000: {large * 1e9:8.0f} ns/update")
    print(f"naive numpy recompute 1080:        {naive_small * 1e9:8.0f} ns/update")
    print(f"naive numpy recompute 100000:      {naive_large * 1e9:8.0f} ns/update  ({naive_large / naive_small:.0f}x its 1080 cost)")
    print(f"zscore: {large / small:.2f}x update cost at window 100000 vs 1080")


if __name__ == "__main__":
    main()
