"""A backtest's files: the JSON result and the chart beside it."""

from __future__ import annotations

import json
from pathlib import Path

from basis_mcp.backtest.chart import backtest_chart
from basis_mcp.backtest.runner import BacktestResult


def write_outputs(result: BacktestResult, out_dir: Path, chart: bool = True) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"backtest_{'-'.join(result.symbols)}_{result.start[:10]}_{result.end[:10]}"
    paths = {"json": out_dir / f"{stem}.json"}
    paths["json"].write_text(json.dumps(result.to_json(), indent=2))
    if chart:
        paths["png"] = out_dir / f"{stem}.png"
        paths["png"].write_bytes(backtest_chart(result))
    return paths
