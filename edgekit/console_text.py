"""Terminal output that shows text as text: every string that reaches a console may come from a device, a
model file or a fleet file (an error "disk [/] full", a CPU name, an IPv6 host "[::1]", a node name), so no
console of ours reads rich markup or emoji codes in it. Colour comes from `styled` (rich Text with styles),
never from markup inside a string; control characters (terminal escape sequences) are shown as \\xNN.
"""

from __future__ import annotations

import re
from typing import Any

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline


def printable(text: str) -> str:
    """`text` with control characters (ESC of a terminal escape sequence, ...) written as \\xNN."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def as_text(text: str) -> Any:
    """A rich Text of `text` as it is: never markup, control characters made visible."""
    from rich.text import Text

    return Text(printable(text))


def plain_console(**kwargs: Any) -> Any:
    """A rich Console that prints strings literally (no markup, emoji codes or highlighting)."""
    from rich.console import Console

    return Console(markup=False, emoji=False, highlight=False, **kwargs)


def styled(*parts: str | tuple[str, str]) -> Any:
    """One line of text from plain strings and (text, style) pairs, e.g. styled(("failed", "red"), ": ", why)."""
    from rich.text import Text

    return Text.assemble(*(printable(p) if isinstance(p, str) else (printable(p[0]), p[1]) for p in parts))
