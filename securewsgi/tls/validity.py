"""Whole days between a certificate's dates and now, and how to say them.

The one place that counts days for certificates: the start-up line, the expiry
warnings, the reload line, `SSL_CLIENT_V_REMAIN`, the refusal log lines and
`securewsgi-check` all ask here, so they cannot disagree about "1 day" near a boundary.

Counting is by whole elapsed days, rounded down: a certificate that expired 9 seconds
ago expired "less than a day ago", and 24 h 9 s after it "1 day ago".
"""
from __future__ import annotations

import datetime
from typing import Optional

DAY = datetime.timedelta(days=1)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def days_left(not_after: datetime.datetime, now: Optional[datetime.datetime] = None) -> int:
    """Whole days until `not_after`, rounded down: negative once it has passed (-1 for
    the first day after it), so `days_left(...) < 0` means expired."""
    return (not_after - (now or utcnow())) // DAY


def days_since(moment: datetime.datetime, now: Optional[datetime.datetime] = None) -> int:
    """Whole days that have passed since `moment` (0 during the first day)."""
    return ((now or utcnow()) - moment) // DAY


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def time_left(not_after: datetime.datetime, now: Optional[datetime.datetime] = None) -> str:
    """`364 days left`, `1 day left`, `less than a day left`, `expired less than a day
    ago`, `expired 1 day ago`, `expired 3 days ago`."""
    now = now or utcnow()
    if now > not_after:
        return f"expired {_ago(days_since(not_after, now))}"
    days = days_left(not_after, now)
    return "less than a day left" if days == 0 else f"{plural(days, 'day')} left"


def expires(not_after: datetime.datetime, now: Optional[datetime.datetime] = None) -> str:
    """`expires in 9 days`, `expires in 1 day`, `expires within a day`, or
    `expired 2 days ago` once it has passed."""
    now = now or utcnow()
    if now > not_after:
        return f"expired {_ago(days_since(not_after, now))}"
    days = days_left(not_after, now)
    return "expires within a day" if days == 0 else f"expires in {plural(days, 'day')}"


def when(moment: datetime.datetime) -> str:
    """`2026-12-01 19:30 UTC`: a date an operator can compare with a clock."""
    return f"{moment.astimezone(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"


def _ago(days: int) -> str:
    return "less than a day ago" if days == 0 else f"{plural(days, 'day')} ago"
