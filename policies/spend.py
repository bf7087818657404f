"""Budget periods of virtual keys: which calendar period a moment belongs to, and when it ends. Pure.

Periods are UTC calendar periods: a day starts at 00:00 UTC, a week on Monday 00:00 UTC (ISO weeks),
a month on its first day. Every replica names the current period the same way, so the spend of one
period is one counter in the shared store.
"""

from datetime import UTC, datetime, timedelta
from typing import Literal

Period = Literal["day", "week", "month"]


def period_id(period: Period, now: float) -> str:
    """The name of the period `now` (wall clock) falls in: 2025-03-31, 2025-W14, 2025-03."""
    moment = datetime.fromtimestamp(now, UTC)
    if period == "day":
        return moment.strftime("%Y-%m-%d")
    if period == "week":
        year, week, _ = moment.isocalendar()
        return f"{year}-W{week:02d}"
    return moment.strftime("%Y-%m")


def period_end(period: Period, now: float) -> float:
    """Wall clock when the period `now` falls in ends (the budget is whole again)."""
    moment = datetime.fromtimestamp(now, UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        end = day + timedelta(days=1)
    elif period == "week":
        end = day + timedelta(days=7 - day.weekday())
    else:
        end = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
    return end.timestamp()


PERIOD_S: dict[str, float] = {"day": 86400.0, "week": 7 * 86400.0, "month": 31 * 86400.0}
"""The longest each period lasts (how long its counter must be kept)."""
