"""Rebuild the shipped market-data extract from a freqtrade data directory.

    python scripts/build_extract.py ../shared/data/binance-1h

Writes basis_mcp/data/binance_1h.npz (BTC, ETH full span; SOL from its perp listing in the
source) and checks that it reads back identical to the source to the tick.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from basis_mcp.history import load_extract, load_freqtrade_dir, save_extract, shipped_extract_path


def main(src: str) -> None:
    histories = load_freqtrade_dir(src, ["BTC", "ETH", "SOL"])
    out = shipped_extract_path()
    save_extract(histories, out)
    back = load_extract(out)
    for sym, h in histories.items():
        for k in ("spot", "perp", "mark", "mark_high", "mark_low", "funding_rate"):
            a, b = getattr(h, k), getattr(back[sym], k)
            assert np.array_equal(np.isnan(a), np.isnan(b)), (sym, k)
            assert np.nanmax(np.abs(a - b)) < 1e-9, (sym, k)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    for sym, h in histories.items():
        print(f"  {sym}: {h.n} hours, {len(h.funding_time)} settlements, {int(np.isnan(h.spot).sum())} spot gaps")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[2] / "shared/data/binance-1h"))
