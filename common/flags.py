"""Boolean model-config parameters: config.pbtxt carries every parameter as a string."""

from __future__ import annotations


def parse_flag(text: str) -> bool | None:
    """"true" or "false" in any case, spaces around ignored; None for anything else, which the
    caller refuses in its own words."""
    word = text.strip().lower()
    return True if word == "true" else False if word == "false" else None
