"""argparse types for the commands' numbers: a bad value is refused before anything starts.

Why one module: each command used to check its numbers after parsing, some not at all
(`bench --subjects 0` and `--warmup -1` ended in tracebacks, `start --duration -5` started
and stopped a lab, `--metrics-port 99999` failed inside the socket library).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["at_least_0", "at_least_1", "positive", "tcp_port"]


def _number(kind: type, text: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def _rule(kind: type, ok: Callable[[float], bool], words: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = _number(kind, text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {words}, got {text}")
        return value

    return parse


positive = _rule(float, lambda v: v > 0, "> 0")  # seconds, rates, hours
at_least_0 = _rule(float, lambda v: v >= 0, ">= 0")  # warm-ups, offsets, jitter
at_least_1 = _rule(int, lambda v: v >= 1, "a whole number >= 1")  # subjects, workers, steps
tcp_port = _rule(int, lambda v: 0 <= v <= 65535, "a TCP port 0-65535")
