"""Pydantic models at the edge: every tool's input and output.

Units are in the names: ``_pct`` is percent (0.05 means 0.05 %), ``_usd`` is US dollars
(USDT), ``_time`` is an ISO-8601 UTC timestamp, ``seconds``/``hours``/``days`` say so.
Signs: basis > 0 means the perp trades above spot (contango); a positive funding rate
means longs pay shorts, so a cash-and-carry (short perp) RECEIVES it; money amounts are
positive when they are received/earned and negative when paid/lost, except fields named
``*_cost_usd``/``fees_usd``/``slippage_usd`` which are costs (positive = paid).
"""

from basis_mcp.models.inputs import *  # noqa: F403
from basis_mcp.models.inputs import _plain_text  # noqa: F401
from basis_mcp.models.outputs import *  # noqa: F403
