"""A request's deadline: the ``X-Request-Timeout`` header or a field in the body."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ._problems import invalid

#: The request header that carries a timeout, in seconds.
TIMEOUT_HEADER = b"x-request-timeout"


def seconds(value: Any, field: str, unit: str = "seconds") -> float | None:
    """``value`` as a timeout in ``unit`` (``None`` stays ``None``).

    Raises:
        Problem: 422 unless it is a finite number > 0.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(field, f"must be a number of {unit}, not {value!r}")
    if not 0 < value < math.inf:
        raise invalid(field, f"must be a finite number of {unit} > 0, not {value!r}")
    return float(value)


def request_timeout(headers: Mapping[bytes, bytes], body_timeout: float | None) -> float | None:
    """The tighter of the header's timeout and the body's; ``None`` if neither is given.

    Raises:
        Problem: 422 for a header that is not a positive finite number.
    """
    raw = headers.get(TIMEOUT_HEADER)
    if raw is None:
        return body_timeout
    try:
        parsed = float(raw)
    except ValueError:
        raise invalid(
            "X-Request-Timeout", f"must be a number of seconds, not {raw.decode('latin-1')!r}"
        ) from None
    from_header = seconds(parsed, "X-Request-Timeout")
    assert from_header is not None
    return from_header if body_timeout is None else min(from_header, body_timeout)
