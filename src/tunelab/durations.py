"""Durations as people write them: 90s, 10m, 2h, 1h30m."""

from __future__ import annotations

import re

DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([hms])")
UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str) -> float:
    """Seconds in ``10m``, ``90s``, ``2h``, ``1h30m`` or a bare number of seconds."""
    cleaned = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", cleaned):
        seconds = float(cleaned)
    elif cleaned and re.fullmatch(rf"(?:{DURATION.pattern}\s*)+", cleaned):
        seconds = sum(float(n) * UNIT_SECONDS[unit] for n, unit in DURATION.findall(cleaned))
    else:
        raise ValueError(f"expected a duration such as 90s, 10m, 2h or 1h30m, got {text!r}")
    if seconds <= 0:
        raise ValueError(f"expected a duration above zero, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``9m52s``, ``1h02m``, ``45s``."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
