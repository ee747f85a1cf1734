"""How a metric and its 95% confidence interval are written, in every text dermalens makes.

One home for "0.812 (95% CI 0.790 – 0.845)": the model card, report.md and the
command line's summary should all say it the same way. Plain Python (values
may be numpy scalars; `float()` takes them), so any layer may import it.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

__all__ = ["NOT_AVAILABLE", "ci_of", "format_interval", "format_metric_ci", "format_value"]

NOT_AVAILABLE = "n/a"
INTERVAL_DASH = " – "   # an en dash: "-0.100 – -0.050" stays readable where a hyphen would not


def _number(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def format_value(value, digits: int = 3) -> str:
    """0.81234 -> '0.812'; None, NaN or infinite -> 'n/a'."""
    number = _number(value)
    return NOT_AVAILABLE if number is None else f"{number:.{digits}f}"


def ci_of(ci95: Mapping | None, key: str) -> Sequence | None:
    """The (low, high) pair of `key` in an evaluation's "ci95" record, or None."""
    return (ci95 or {}).get(key)


def format_interval(low_high: Sequence | None, digits: int = 3) -> str:
    """(0.79, 0.845) -> '0.790 – 0.845'; a missing or undefined bound -> 'n/a'."""
    if not low_high or len(low_high) != 2:
        return NOT_AVAILABLE
    low, high = (_number(bound) for bound in low_high)
    if low is None or high is None:
        return NOT_AVAILABLE
    return f"{low:.{digits}f}{INTERVAL_DASH}{high:.{digits}f}"


def format_metric_ci(value, low_high: Sequence | None = None, digits: int = 3) -> str:
    """'0.812 (95% CI 0.790 – 0.845)'; the value alone when there is no interval; 'n/a' without a value."""
    text = format_value(value, digits)
    interval = format_interval(low_high, digits)
    if text == NOT_AVAILABLE or interval == NOT_AVAILABLE:
        return text
    return f"{text} (95% CI {interval})"
