"""Every number a tool returns, rounded to what it means, chosen by its name (see `basis_mcp.models`).

- ``*_usd``: dollars, to the cent;
- ``*_pct`` / ``*_bps``, rates (``*rate*``, ``*apr*``, ``*apy*``), z-scores, ratios, multiples,
  leverage, scales, sigmas, shares: 6 significant digits;
- prices (``*price*``): 8 significant digits (no venue quotes more);
- quantities (``*quantity*``, ``*qty*``): 10 significant digits (lot steps reach 1e-8 of a coin);
- times in ``*seconds*`` / ``*hours*`` / ``*days*``: 6 significant digits;
- anything else: 10 significant digits, enough for any measured value and none of a float's noise
  (``61136.187371400316`` -> ``61136.1873714``).

A list takes the rule of the field it is in; a dict's entries the rule of their own keys. Whole
numbers, booleans, strings and non-finite values pass through. The rule is applied when a model is
serialised (`RoundedModel`), so the JSON schema the client validates against does not change.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, model_serializer

SIX = ("_pct", "_bps", "rate", "apr", "apy", "zscore", "ratio", "multiple", "leverage", "scale", "sigmas", "share")
TIME = ("seconds", "hours", "days")


def significant(x: float, digits: int) -> float:
    """``x`` to ``digits`` significant digits (0 stays 0)."""
    if x == 0.0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - math.floor(math.log10(abs(x))))


@lru_cache(maxsize=4096)
def _rule(key: str) -> tuple[str, int]:
    """How a name's numbers are rounded: ("cents", 2) or ("sig", digits). Names repeat: cached."""
    k = key.lower()
    if k.endswith("_usd") or k == "usd":
        return "cents", 2
    if "price" in k:
        return "sig", 8
    if "quantity" in k or "qty" in k:
        return "sig", 10
    if any(s in k for s in SIX + TIME):
        return "sig", 6
    return "sig", 10


def round_number(key: str, x: float) -> float:
    """One float, by the name it is shown under."""
    if not math.isfinite(x):
        return x
    kind, digits = _rule(key)
    if kind == "cents":
        return round(x, 2) + 0.0  # + 0.0: no "-0.0"
    return significant(x, digits) + 0.0


READING_FIELDS = ("limit", "hard_ceiling", "current")  # a limit reading's numbers are in the unit of its `name`


def tidy(key: str, value: Any) -> Any:
    """``value`` with every float in it rounded by its name (``key`` for a bare value or a list's items). A dict
    holding ``name`` and ``hard_ceiling`` is a limit reading (`LimitReading`): its ``limit``, ``hard_ceiling``
    and ``current`` are rounded by the unit its ``name`` carries."""
    t = type(value)
    if t is float:
        return round_number(key, value)
    if t is dict:
        if "hard_ceiling" in value and "name" in value:
            unit = str(value["name"])
            return {k: tidy(unit if k in READING_FIELDS else k, v) for k, v in value.items()}
        return {k: tidy(k if type(k) is str else key, v) for k, v in value.items()}
    if t is list or t is tuple:
        return [tidy(key, v) for v in value]
    return value


class RoundedModel(BaseModel):
    """A tool's output model: every float in it, nested models included, is rounded by `round_number` when it
    is serialised (one walk over the dumped tree at the top; the models inside are plain)."""

    @model_serializer(mode="wrap")
    def _rounded(self, handler: Any) -> Any:
        data = handler(self)
        return tidy("", data) if type(data) is dict else data
