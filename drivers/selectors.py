"""Pick LSL streams by name, type and/or source id.

Names are not unique in practice (the MuseLSL2 recordings carry four streams all named "Muse",
told apart by type), so a selector may name any combination of the three fields and every given
field must match. One network query serves all selectors; matching happens locally.
"""

from __future__ import annotations

from dataclasses import dataclass

import pylsl

__all__ = ["StreamSelector", "resolve", "xpath_literal"]

_FIELDS = ("name", "type", "source_id")


@dataclass(frozen=True)
class StreamSelector:
    """Which stream(s) a config entry means; unset fields are wildcards."""

    name: str | None = None
    type: str | None = None
    source_id: str | None = None

    def __post_init__(self) -> None:
        if all(getattr(self, f) is None for f in _FIELDS):
            raise ValueError("StreamSelector needs at least one of name, type, source_id")

    def matches(self, info: pylsl.StreamInfo) -> bool:
        """True when every field this selector sets equals the stream's."""
        return all(want is None or want == getattr(info, field)() for field, want in self._given())

    def describe(self) -> str:
        """Human-readable form for logs and errors: `name='Muse' type='GYRO'`."""
        return " ".join(f"{field}={want!r}" for field, want in self._given() if want is not None)

    def predicate(self) -> str | None:
        """The XPath predicate liblsl understands, or None if a value cannot be quoted."""
        parts = []
        for field, want in self._given():
            if want is None:
                continue
            literal = xpath_literal(want)
            if literal is None:
                return None
            parts.append(f"{field}={literal}")
        return " and ".join(parts)

    def _given(self) -> list[tuple[str, str | None]]:
        return [(f, getattr(self, f)) for f in _FIELDS]


def xpath_literal(value: str) -> str | None:
    """XPath 1.0 string literal; None when it holds both quote kinds (no escaping exists)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


def resolve(
    selectors: list[StreamSelector], timeout: float, *, minimum: int | None = None
) -> dict[StreamSelector, list[pylsl.StreamInfo]]:
    """Find the streams each selector matches, with one network query of `timeout` seconds.

    By default the query waits the whole `timeout` so that every stream sharing a name answers
    (returning at the first answer would hide duplicates). Pass `minimum` to return as soon as
    that many matching streams have answered. Selectors with no match map to an empty list; the
    returned StreamInfos have an empty desc (liblsl sends it only to an inlet).
    """
    if not selectors:
        return {}
    preds = [s.predicate() for s in selectors]
    if all(p is not None for p in preds):
        query = " or ".join(f"({p})" for p in preds)
        found = pylsl.resolve_bypred(
            query, minimum=minimum if minimum is not None else 1 << 30, timeout=timeout
        )
    else:
        found = pylsl.resolve_streams(wait_time=timeout)
    # The same outlet can answer twice (several network interfaces); keep one per uid.
    unique = list({info.uid(): info for info in found}.values())
    return {sel: [info for info in unique if sel.matches(info)] for sel in selectors}
