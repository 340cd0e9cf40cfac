"""Time as a Kenyan merchant means it: "today", "this week", "2026-11-29", turned into the UTC
instants the store compares (stored times are UTC ISO-8601 text that sorts).

M-Pesa STK Push is Kenyan only, so days are East Africa Time (UTC+3, no daylight saving): a fixed
offset, exact, and no time-zone database to read.
"""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

EAT = timezone(timedelta(hours=3), "EAT")
# Names the chat tools and the API accept for a period; each is [since, until) in EAT.
PERIODS = ("today", "yesterday", "this_week", "last_week", "this_month", "last_month", "last_7_days",
           "last_30_days")


class InvalidTime(ValueError):
    """The text is not a date or time this module understands."""


def stamp(moment: datetime) -> str:
    """The store's form of an instant: UTC with milliseconds (what `store.utcnow()` writes)."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def parse_time(raw: str, *, end: bool = False) -> datetime:
    """An aware datetime for `2026-11-29`, `2026-11-29T10:00`, `...Z` or `...+03:00`.

    A date alone is that day in Kenya: its start, or with `end` the start of the next day (so
    `until=2026-11-29` includes the 29th). A time without an offset is Kenyan time too."""
    text = str(raw).strip()
    if not text or len(text) > 40:
        raise InvalidTime(f"{text[:40]!r} is not a date or time; use 2026-11-29 or 2026-11-29T10:00:00Z")
    try:
        if len(text) == 10:
            moment = datetime.combine(date.fromisoformat(text) + timedelta(days=1 if end else 0), time(), EAT)
        else:
            moment = datetime.fromisoformat(text.replace("z", "Z"))
            moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=EAT)
        stamp(moment)  # an instant too close to year 1 or 9999 to convert is refused here
    except (ValueError, OverflowError):
        raise InvalidTime(f"{text!r} is not a date or time; use 2026-11-29 or 2026-11-29T10:00:00Z") from None
    return moment


def period(name: str, now: datetime) -> tuple[datetime, datetime]:
    """[since, until) of a named period (one of PERIODS) around `now`, in Kenyan days."""
    local = now.astimezone(EAT)
    today = datetime.combine(local.date(), time(), EAT)
    week = today - timedelta(days=today.weekday())  # weeks start on Monday
    month = today.replace(day=1)
    spans = {
        "today": (today, today + timedelta(days=1)),
        "yesterday": (today - timedelta(days=1), today),
        "this_week": (week, week + timedelta(days=7)),
        "last_week": (week - timedelta(days=7), week),
        "this_month": (month, _next_month(month)),
        "last_month": (_next_month(month - timedelta(days=1), back=True), month),
        "last_7_days": (today - timedelta(days=6), today + timedelta(days=1)),
        "last_30_days": (today - timedelta(days=29), today + timedelta(days=1)),
    }
    if name not in spans:
        raise InvalidTime(f"period must be one of {', '.join(PERIODS)}, got {name[:30]!r}")
    return spans[name]


def _next_month(day: datetime, back: bool = False) -> datetime:
    """The first of the month after `day`'s (with `back`, the first of `day`'s own month)."""
    if back:
        return day.replace(day=1)
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1)


def local_hour(utc_hour: str) -> datetime:
    """`2026-11-29T21` (a UTC hour, the first 13 characters of a stored time) as a Kenyan datetime."""
    return datetime.fromisoformat(utc_hour + ":00:00+00:00").astimezone(EAT)
