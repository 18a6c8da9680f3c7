"""Accounts: spot balances, the futures account and balances, position risk, leverage brackets,
leverage / margin type / isolated margin changes and income (funding, commissions, realised P&L,
quarterly deliveries). Futures rows cover the perps and the listed quarterlies."""

from __future__ import annotations

from typing import Any

from basis_mcp.sim.instruments import CROSSED, ISOLATED, QUOTE, BinanceError, Position, _r8, _s8
from basis_mcp.sim.state import SimState


class AccountsApi:
    """Binance's account endpoints (spot and USD-M), read from and applied to a `SimState`."""

    def __init__(self, state: SimState):
        self.state = state

    def interest_rate_history(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        """``GET /sapi/v1/margin/interestRateHistory``: the newest first, ``limit`` rows, one a day."""
        asset = str(p.get("asset") or "").upper()
        with self.state.lock:
            rates = dict(self.state.lend_rates)
            day_ms = self.state.ms // 86_400_000 * 86_400_000
        if asset not in rates:
            raise BinanceError(-3045, f"The system does not have enough asset now: {asset} is not borrowable.", 400)
        limit = min(int(p.get("limit") or 20), 100)
        return [{"asset": asset, "dailyInterestRate": f"{rates[asset]:.8f}", "timestamp": day_ms - k * 86_400_000,
                 "vipLevel": 0} for k in range(limit)]

    def spot_account(self) -> dict[str, Any]:
        with self.state.lock:
            return {
                "makerCommission": 10,
                "takerCommission": 10,
                "buyerCommission": 0,
                "sellerCommission": 0,
                "commissionRates": {
                    "maker": "0.00100000",
                    "taker": "0.00100000",
                    "buyer": "0.00000000",
                    "seller": "0.00000000",
                },
                "canTrade": True,
                "canWithdraw": True,
                "canDeposit": True,
                "brokered": False,
                "requireSelfTradePrevention": False,
                "preventSor": False,
                "updateTime": self.state.ms,
                "accountType": "SPOT",
                "balances": [
                    {"asset": a, "free": _s8(v), "locked": "0.00000000"}
                    for a, v in self.state.spot_bal.items()
                ],
                "permissions": ["SPOT"],
                "uid": 100000001,
            }

    def _futures_totals(self) -> dict[str, float]:
        tot = {"wallet": self.state.cross_wallet, "upnl": 0.0, "cross_upnl": 0.0, "im": 0.0, "mm": 0.0}
        for pos in self.state.positions.values():
            tot["wallet"] += pos.iso_wallet
            if pos.amt:
                m = self.state.pos_metrics(pos)
                tot["upnl"] += m["upnl"]
                tot["im"] += m["im"]
                tot["mm"] += m["mm"]
                if not m["iso"]:
                    tot["cross_upnl"] += m["upnl"]
        tot["available"] = self.state.available()
        return tot

    def futures_balance(self) -> list[dict[str, Any]]:
        with self.state.lock:
            t = self._futures_totals()
            return [
                {
                    "accountAlias": "SgsR",
                    "asset": QUOTE,
                    "balance": _s8(t["wallet"]),
                    "crossWalletBalance": _s8(self.state.cross_wallet),
                    "crossUnPnl": _s8(t["cross_upnl"]),
                    "availableBalance": _s8(t["available"]),
                    "maxWithdrawAmount": _s8(max(0.0, min(t["available"], self.state.cross_wallet))),
                    "marginAvailable": True,
                    "updateTime": self.state.ms,
                }
            ]

    def futures_account(self, version: int = 3) -> dict[str, Any]:
        with self.state.lock:
            t = self._futures_totals()
            asset = {
                "asset": QUOTE,
                "walletBalance": _s8(t["wallet"]),
                "unrealizedProfit": _s8(t["upnl"]),
                "marginBalance": _s8(t["wallet"] + t["upnl"]),
                "maintMargin": _s8(t["mm"]),
                "initialMargin": _s8(t["im"]),
                "positionInitialMargin": _s8(t["im"]),
                "openOrderInitialMargin": "0.00000000",
                "crossWalletBalance": _s8(self.state.cross_wallet),
                "crossUnPnl": _s8(t["cross_upnl"]),
                "availableBalance": _s8(t["available"]),
                "maxWithdrawAmount": _s8(max(0.0, min(t["available"], self.state.cross_wallet))),
                "updateTime": self.state.ms,
            }
            if version == 2:
                asset["marginAvailable"] = True
            positions = []
            for inst in self.state.futures_contracts():
                sym = inst.id
                pos = self.state.positions.get(sym) or Position(sym)
                if version == 3 and not pos.amt:
                    continue
                m = self.state.pos_metrics(pos)
                row = {
                    "symbol": sym,
                    "positionSide": "BOTH",
                    "positionAmt": f"{pos.amt:.{inst.qdec}f}",
                    "unrealizedProfit": _s8(m["upnl"]),
                    "isolatedMargin": _s8(pos.iso_wallet + m["upnl"] if m["iso"] and pos.amt else 0.0),
                    "notional": _s8(m["notional"]),
                    "isolatedWallet": _s8(pos.iso_wallet),
                    "initialMargin": _s8(m["im"]),
                    "maintMargin": _s8(m["mm"]),
                    "updateTime": pos.update_ms,
                }
                if version == 2:
                    lev = self.state.leverage_of(sym)
                    row |= {
                        "leverage": str(lev),
                        "isolated": m["iso"],
                        "entryPrice": _s8(pos.entry),
                        "breakEvenPrice": _s8(pos.entry),
                        "maxNotional": f"{self.state.max_notional(inst, lev):.0f}",
                        "positionInitialMargin": _s8(m["im"]),
                        "openOrderInitialMargin": "0",
                        "bidNotional": "0",
                        "askNotional": "0",
                    }
                positions.append(row)
            return {
                "feeTier": 0,
                "canTrade": True,
                "canDeposit": True,
                "canWithdraw": True,
                "feeBurn": False,
                "tradeGroupId": -1,
                "updateTime": 0,
                "multiAssetsMargin": False,
                "totalInitialMargin": _s8(t["im"]),
                "totalMaintMargin": _s8(t["mm"]),
                "totalWalletBalance": _s8(t["wallet"]),
                "totalUnrealizedProfit": _s8(t["upnl"]),
                "totalMarginBalance": _s8(t["wallet"] + t["upnl"]),
                "totalPositionInitialMargin": _s8(t["im"]),
                "totalOpenOrderInitialMargin": "0.00000000",
                "totalCrossWalletBalance": _s8(self.state.cross_wallet),
                "totalCrossUnPnl": _s8(t["cross_upnl"]),
                "availableBalance": _s8(t["available"]),
                "maxWithdrawAmount": _s8(max(0.0, min(t["available"], self.state.cross_wallet))),
                "assets": [asset],
                "positions": positions,
            }

    def position_risk(self, version: int = 3, symbol: str | None = None) -> list[dict[str, Any]]:
        """v3 lists open positions only and has no leverage/marginType (as on Binance);
        v2 lists every symbol."""
        with self.state.lock:
            insts = [self.state.inst(symbol, "perp")] if symbol else self.state.futures_contracts()
            rows = []
            for inst in insts:
                sym = inst.id
                pos = self.state.positions.get(sym) or Position(sym)
                if version == 3 and not pos.amt:
                    continue
                m = self.state.pos_metrics(pos)
                row = {
                    "symbol": sym,
                    "positionSide": "BOTH",
                    "positionAmt": f"{pos.amt:.{inst.qdec}f}",
                    "entryPrice": _s8(pos.entry),
                    "breakEvenPrice": _s8(pos.entry),
                    "markPrice": _s8(m["mark"]),
                    "unRealizedProfit": _s8(m["upnl"]),
                    "liquidationPrice": _s8(m["liq"]),
                    "isolatedMargin": _s8(pos.iso_wallet + m["upnl"] if m["iso"] and pos.amt else 0.0),
                    "notional": _s8(m["notional"]),
                    "marginAsset": QUOTE,
                    "isolatedWallet": _s8(pos.iso_wallet),
                    "updateTime": pos.update_ms,
                }
                if version == 3:
                    row |= {
                        "initialMargin": _s8(m["im"]),
                        "maintMargin": _s8(m["mm"]),
                        "positionInitialMargin": _s8(m["im"]),
                        "openOrderInitialMargin": "0",
                        "adl": 0,
                        "bidNotional": "0",
                        "askNotional": "0",
                    }
                else:
                    lev = self.state.leverage_of(sym)
                    row |= {
                        "leverage": str(lev),
                        "maxNotionalValue": f"{self.state.max_notional(inst, lev):.0f}",
                        "marginType": "isolated" if m["iso"] else "cross",
                        "isAutoAddMargin": "false",
                    }
                rows.append(row)
            return rows

    def leverage_brackets(self, symbol: str | None = None) -> Any:
        with self.state.lock:
            out = []
            for inst in [self.state.inst(symbol, "perp")] if symbol else self.state.futures_contracts():
                rows, floor = [], 0.0
                for n, b in enumerate(inst.brackets, 1):
                    cap = min(b.notional_cap_usd, 5e9)
                    rows.append(
                        {
                            "bracket": n,
                            "initialLeverage": max(1, int(1 / (2 * b.mmr))),
                            "notionalCap": int(cap),
                            "notionalFloor": int(floor),
                            "maintMarginRatio": b.mmr,
                            "cum": b.cum_usd,
                        }
                    )
                    floor = cap
                out.append({"symbol": inst.id, "notionalCoef": 1.0, "brackets": rows})
            return out[0] if symbol else out

    def change_leverage(self, symbol: str, leverage: int) -> dict[str, Any]:
        with self.state.lock:
            inst = self.state.inst(symbol, "perp")
            if not 1 <= leverage <= self.state.max_leverage(inst):
                raise BinanceError(-4028, f"Leverage {leverage} is not valid")
            pos, cap = self.state.positions.get(inst.id), self.state.max_notional(inst, leverage)
            if pos and pos.amt and abs(pos.amt) * inst.mark(self.state.t) > cap:
                raise BinanceError(-2027, "Exceeded the maximum allowable position at current leverage.")
            self.state.leverage[inst.id] = leverage
            return {
                "leverage": leverage,
                "maxNotionalValue": f"{cap:.0f}",
                "symbol": inst.id,
            }

    def change_margin_type(self, symbol: str, margin_type: str) -> dict[str, Any]:
        with self.state.lock:
            inst = self.state.inst(symbol, "perp")
            mt = margin_type.upper()
            if mt not in (ISOLATED, CROSSED):
                raise BinanceError(-1116, "Invalid marginType.")
            if self.state.margin_type_of(inst.id) == mt:
                raise BinanceError(-4046, "No need to change margin type.")
            pos = self.state.positions.get(inst.id)
            if pos and pos.amt:
                raise BinanceError(-4048, "Margin type cannot be changed if there exists position.")
            self.state.margin_type[inst.id] = mt
            return {"code": 200, "msg": "success"}

    def position_margin(self, symbol: str, amount: float, kind: int) -> dict[str, Any]:
        """Add (type 1) or remove (type 2) isolated margin."""
        with self.state.lock:
            inst = self.state.inst(symbol, "perp")
            pos = self.state.positions.get(inst.id)
            if self.state.margin_type_of(inst.id) != ISOLATED:
                raise BinanceError(-4049, "Add margin only support for isolated position.")
            if not pos or not pos.amt:
                raise BinanceError(-4054, "Cannot add position margin: position is 0.")
            amount = _r8(amount)
            if amount <= 0 or kind not in (1, 2):
                raise BinanceError(
                    -1102, "Mandatory parameter 'amount' was not sent, was empty/null, or malformed."
                )
            if kind == 1:
                if self.state.available() + 1e-9 < amount:
                    raise BinanceError(-4050, "Cross balance insufficient.")
                self.state.cross_wallet, pos.iso_wallet = (
                    _r8(self.state.cross_wallet - amount),
                    _r8(pos.iso_wallet + amount),
                )
            else:
                m = self.state.pos_metrics(pos)
                if pos.iso_wallet + min(m["upnl"], 0.0) - m["im"] + 1e-9 < amount:
                    raise BinanceError(-4051, "Isolated balance insufficient.")
                self.state.cross_wallet, pos.iso_wallet = (
                    _r8(self.state.cross_wallet + amount),
                    _r8(pos.iso_wallet - amount),
                )
            pos.update_ms = self.state.ms
            return {
                "amount": amount,
                "code": 200,
                "msg": "Successfully modify position margin.",
                "type": kind,
            }

    def income_history(self, p: dict[str, str]) -> list[dict[str, Any]]:
        """``/fapi/v1/income``: oldest first; without a time range, the last 7 days."""
        with self.state.lock:
            limit = min(int(p.get("limit") or 100), 1000)
            start, end = p.get("startTime"), p.get("endTime")
            lo = int(start) if start else (self.state.ms - 7 * 86_400_000 if not end else 0)
            hi = int(end) if end else 2**62
            rows = [
                r
                for r in self.state.income
                if lo <= r["time"] <= hi
                and (not p.get("symbol") or r["symbol"] == p["symbol"])
                and (not p.get("incomeType") or r["incomeType"] == p["incomeType"])
            ]
            return rows[:limit]
