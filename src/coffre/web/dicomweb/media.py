"""Media type negotiation for DICOMweb (PS3.18 8.7): Accept parsing and selection."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One entry of an Accept header: ``type/subtype; params; q=…``."""

    type: str
    subtype: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def essence(self) -> str:
        return f"{self.type}/{self.subtype}"

    def matches(self, media_type: str) -> bool:
        main, _, sub = media_type.partition("/")
        return self.type in ("*", main) and self.subtype in ("*", sub)


def _split(value: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
    out: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == sep and not quoted:
            out.append("".join(current))
            current = []
        else:
            current.append(char)
    out.append("".join(current))
    return out


def parse_media_type(value: str) -> MediaRange | None:
    """One media type or range with its parameters, or None if malformed."""
    pieces = _split(value.strip(), ";")
    essence = pieces[0].strip().lower()
    main, slash, sub = essence.partition("/")
    if not slash or not main or not sub or " " in essence:
        return None
    params: dict[str, str] = {}
    q = 1.0
    for piece in pieces[1:]:
        name, eq, raw = piece.strip().partition("=")
        if not eq:
            continue
        name, raw = name.strip().lower(), raw.strip().strip('"')
        if name == "q":
            try:
                q = min(max(float(raw), 0.0), 1.0)
            except ValueError:
                q = 0.0
        else:
            params[name] = raw
    return MediaRange(main, sub, params, q)


def parse_accept(header: str | None, *, limit: int = 64) -> list[MediaRange]:
    """The media ranges of an Accept header, most preferred first; ``*/*`` when absent."""
    if not header or not header.strip():
        return [MediaRange("*", "*")]
    ranges = [r for r in (parse_media_type(v) for v in _split(header, ",")[:limit]) if r is not None]
    ranges = [r for r in ranges if r.q > 0]
    return sorted(ranges, key=lambda r: (-r.q, r.type == "*", r.subtype == "*"))
