"""Build `basis_mcp/data/funding_venues.npz` from the multi-venue funding CSVs.

Usage: python scripts/build_funding_venues.py ../shared/data/funding-venues

Each `{venue}/{SYM}_funding.csv` (columns `time` ISO-8601 UTC, `rate` as a decimal fraction) is
stored as settlement times (int64 epoch seconds, delta-encoded) and rates as integer multiples of
1e-10 (the source has at most 10 decimals), so the loader gives back exactly the CSV's values.
"""

from __future__ import annotations

import csv
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np

from basis_mcp.clock import parse_time

SCALE = 10**10


def main(src: str) -> None:
    root = Path(src)
    arrays: dict[str, np.ndarray] = {}
    names = []
    for csv_path in sorted(root.glob("*/*_funding.csv")):
        venue, sym = csv_path.parent.name, csv_path.name.split("_")[0]
        rows = list(csv.DictReader(csv_path.open()))
        t = np.array([int(parse_time(r["time"])) for r in rows], dtype=np.int64)
        ticks = np.array([int(Decimal(r["rate"]) * SCALE) for r in rows], dtype=np.int64)
        assert all(Decimal(r["rate"]) * SCALE == int(Decimal(r["rate"]) * SCALE) for r in rows), csv_path
        assert np.all(np.diff(t) > 0), f"{csv_path}: times not increasing"
        assert np.abs(ticks).max() < 2**31 and np.diff(t).max() < 2**31, f"{csv_path}: out of int32 range"
        key = f"{venue}/{sym}"
        names.append(key)
        arrays[key + "/time0"] = t[:1]
        arrays[key + "/dtime"] = np.diff(t).astype(np.int32)
        arrays[key + "/rate"] = ticks.astype(np.int32)
    out = Path(__file__).resolve().parents[1] / "basis_mcp" / "data" / "funding_venues.npz"
    np.savez_compressed(out, series=np.array(names), scale=np.array([SCALE], dtype=np.int64), **arrays)
    print(f"{out}: {len(names)} series, {out.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/funding-venues")
