"""Seconds-first cron expressions, evaluated in UTC (spec/workers.md §5.2).

``second minute hour day-of-month month day-of-week [year]``. Each field takes ``*``, numbers,
ranges ``a-b``, lists ``a,b``, steps ``*/n``, ``a/n`` and ``a-b/n``; ``?`` means ``*`` in the two
day fields. Months accept ``JAN``-``DEC`` and weekdays ``SUN``-``SAT`` (any case). Numeric
weekdays are 1-7 with 1 = Sunday, as in the reference system's scheduler; ``0`` is refused with a
hint to use names. A day must satisfy both day fields. Years are 1970-2099.

A small parser of our own rather than a library: the weekday numbering (1 = Sunday), the
both-day-fields rule and the year field differ from what the common Python cron libraries do.
"""

from __future__ import annotations

import bisect
import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

MIN_YEAR, MAX_YEAR = 1970, 2099

_MONTHS = {name: i + 1 for i, name in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"))}
_WEEKDAYS = {name: i + 1 for i, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}

_MACROS = {
    "@yearly": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * SUN",
    "@daily": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}


class CronError(ValueError):
    """An expression that cannot be used; ``str()`` is the message for the registering worker."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] | None = None
    question_mark: bool = False


_FIELDS = (
    _Field("second", 0, 59),
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31, question_mark=True),
    _Field("month", 1, 12, _MONTHS),
    _Field("day-of-week", 1, 7, _WEEKDAYS, question_mark=True),
    _Field("year", MIN_YEAR, MAX_YEAR),
)


def _value(field: _Field, text: str) -> int:
    if field.names is not None and text.upper() in field.names:
        return field.names[text.upper()]
    if not text.isdigit():
        if field.names is not None:
            first, last = list(field.names)[0], list(field.names)[-1]
            raise CronError(f"{field.name}: '{text}' is neither a number nor a name {first}-{last}")
        raise CronError(f"{field.name}: '{text}' is not a number")
    value = int(text)
    if field.name == "day-of-week" and value == 0:
        raise CronError("day-of-week 0 is not accepted: numeric weekdays are 1-7 with 1 = Sunday; "
                        "use names SUN-SAT instead")
    if not field.low <= value <= field.high:
        hint = " (1 = Sunday)" if field.name == "day-of-week" else ""
        raise CronError(f"{field.name}: {value} is out of range {field.low}-{field.high}{hint}")
    return value


def _parse_field(field: _Field, text: str) -> tuple[frozenset[int], bool]:
    """The allowed values, and whether the field is unrestricted (``*`` / ``?``)."""
    if text == "?" and field.question_mark:
        return frozenset(range(field.low, field.high + 1)), True
    if text == "*":
        return frozenset(range(field.low, field.high + 1)), True
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"{field.name}: empty list item in '{text}'")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{field.name}: step '{step_text}' must be a positive integer")
            step = int(step_text)
        if base == "*" or (base == "?" and field.question_mark):
            start, end = field.low, field.high
        elif "-" in base:
            first, _, last = base.partition("-")
            start, end = _value(field, first), _value(field, last)
            if start > end:
                raise CronError(f"{field.name}: range '{base}' runs backwards")
        else:
            start = _value(field, base)
            end = field.high if slash else start
        values.update(range(start, end + 1, step))
    return frozenset(values), False


class CronExpression:
    """A parsed expression; ``next_after`` gives the first tick strictly after a moment."""

    def __init__(self, text: str) -> None:
        self.text = text
        source = text.strip()
        source = _MACROS.get(source.lower(), source)
        if source.startswith("@"):
            raise CronError(f"Invalid cron expression '{text}': unknown macro '{source}' "
                            f"(accepted: {', '.join(_MACROS)})")
        parts = source.split()
        if len(parts) == 5:
            raise CronError(f"Invalid cron expression '{text}': expected 6 or 7 fields "
                            f"(seconds first); did you mean '0 {text}'?")
        if len(parts) not in (6, 7):
            raise CronError(f"Invalid cron expression '{text}': expected 6 or 7 fields "
                            f"(seconds first), got {len(parts)}")
        if len(parts) == 6:
            parts.append("*")
        try:
            parsed = [_parse_field(field, part) for field, part in zip(_FIELDS, parts)]
        except CronError as exc:
            raise CronError(f"Invalid cron expression '{text}': {exc}") from None
        (self.seconds, self.minutes, self.hours, self.days, self.months, self.weekdays,
         self.years) = (sorted(values) for values, _ in parsed)
        self._days = frozenset(self.days)
        self._weekdays = frozenset(self.weekdays)

    def __repr__(self) -> str:
        return f"CronExpression({self.text!r})"

    def _day_matches(self, year: int, month: int, day: int) -> bool:
        if day not in self._days:
            return False
        weekday = (calendar.weekday(year, month, day) + 1) % 7 + 1  # Monday=0 → 2, Sunday=6 → 1
        return weekday in self._weekdays

    def next_after(self, moment: datetime) -> datetime | None:
        """The first matching second strictly after ``moment`` (UTC), or None before 2100."""
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        moment = moment.astimezone(timezone.utc).replace(microsecond=0) + timedelta(seconds=1)
        year, month, day = moment.year, moment.month, moment.day
        hour, minute, second = moment.hour, moment.minute, moment.second
        while True:
            if year > MAX_YEAR:
                return None
            if year not in self.years:
                i = bisect.bisect_left(self.years, year)
                if i == len(self.years):
                    return None
                year, month, day, hour, minute, second = self.years[i], 1, 1, 0, 0, 0
                continue
            if month not in self.months:
                i = bisect.bisect_left(self.months, month)
                if i == len(self.months):
                    year, month, day, hour, minute, second = year + 1, 1, 1, 0, 0, 0
                else:
                    month, day, hour, minute, second = self.months[i], 1, 0, 0, 0
                continue
            if day > calendar.monthrange(year, month)[1]:
                year, month = (year + 1, 1) if month == 12 else (year, month + 1)
                day, hour, minute, second = 1, 0, 0, 0
                continue
            if not self._day_matches(year, month, day):
                day, hour, minute, second = day + 1, 0, 0, 0
                continue
            i = bisect.bisect_left(self.hours, hour)
            if i == len(self.hours):
                day, hour, minute, second = day + 1, 0, 0, 0
                continue
            if self.hours[i] != hour:
                hour, minute, second = self.hours[i], 0, 0
            i = bisect.bisect_left(self.minutes, minute)
            if i == len(self.minutes):
                hour, minute, second = hour + 1, 0, 0
                if hour > 23:
                    day, hour = day + 1, 0
                continue
            if self.minutes[i] != minute:
                minute, second = self.minutes[i], 0
            i = bisect.bisect_left(self.seconds, second)
            if i == len(self.seconds):
                minute, second = minute + 1, 0
                if minute > 59:
                    hour, minute = hour + 1, 0
                    if hour > 23:
                        day, hour = day + 1, 0
                continue
            second = self.seconds[i]
            return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)


def parse(text: object) -> CronExpression:
    """Validate a binding's ``expression`` with the refusal messages of spec/workers.md §5.2."""
    if text is None or (isinstance(text, str) and not text.strip()):
        raise CronError("Cron expression is required")
    if not isinstance(text, str):
        raise CronError(f"Invalid cron expression '{text}': the expression must be a string")
    return CronExpression(text)
