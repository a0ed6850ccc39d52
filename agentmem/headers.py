"""Request headers, looked up by name without regard to case.

nats-py hands a message's headers over as a dict keyed by the names as the sender spelled
them, and header names, as in HTTP, are not case-sensitive: ``authorization`` and
``AUTHORIZATION`` are ``Authorization``. Every lookup of a request header goes through
:func:`header`.
"""

from __future__ import annotations

from collections.abc import Mapping


def header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """The value of the header ``name`` in ``headers``, whatever the case of either name;
    None when there is none. Spelled exactly as ``name``, a header wins over the others."""
    if not headers:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, value in headers.items():
        # ASCII only, as header names are: lower() would turn the Kelvin sign into a "k".
        if key.isascii() and key.lower() == lowered:
            return value
    return None
