"""asyncml's own JSON endpoint: ``POST /v1/models/{name}/predict``.

``{"input": item}`` answers ``{"output": ...}``; ``{"inputs": [items]}`` answers
``{"outputs": [...]}`` in input order. An optional ``"timeout"`` (seconds) sets the items'
deadline, as does the ``X-Request-Timeout`` header. Items reach the model as parsed JSON
values (lists, numbers, strings, objects).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._calls import run_items
from ._deadline import request_timeout, seconds
from ._http import (
    Receive,
    Reply,
    Scope,
    dump_json,
    is_large,
    off_loop,
    parse_json,
    read_body,
    request_headers,
    require_json,
)
from ._models import Models
from ._options import ServingOptions
from ._problems import invalid

_FIELDS = ("input", "inputs", "timeout")


@dataclass(frozen=True, slots=True)
class PredictRequest:
    """A parsed v1 request."""

    items: list[Any]
    #: sent as ``{"input": ...}``, so answered as ``{"output": ...}``
    single: bool
    timeout: float | None


def parse_predict(document: Any, max_items: int) -> PredictRequest:
    """Validates a v1 request body.

    Raises:
        Problem: 422 naming the field at fault.
    """
    if not isinstance(document, dict):
        raise invalid("body", "must be a JSON object with 'input' (one item) or 'inputs' (a list)")
    for key in document:
        if key not in _FIELDS:
            raise invalid(key, f"unknown field; expected one of {', '.join(_FIELDS)}")
    timeout = seconds(document.get("timeout"), "timeout")
    if "input" in document:
        if "inputs" in document:
            raise invalid("inputs", "give either 'input' (one item) or 'inputs', not both")
        return PredictRequest([document["input"]], True, timeout)
    if "inputs" not in document:
        raise invalid("input", "required: 'input' (one item) or 'inputs' (a list of items)")
    inputs = document["inputs"]
    if not isinstance(inputs, list):
        raise invalid("inputs", f"must be a list of items, not {type(inputs).__name__}")
    if not inputs:
        raise invalid("inputs", "must hold at least one item")
    if len(inputs) > max_items:
        raise invalid("inputs", f"holds {len(inputs)} items; at most {max_items} per request")
    return PredictRequest(inputs, False, timeout)


class Predict:
    """The handler of ``POST /v1/models/{name}/predict``."""

    def __init__(self, models: Models, options: ServingOptions):
        self._models = models
        self._options = options

    async def __call__(self, scope: Scope, receive: Receive) -> Reply:
        options = self._options
        served = self._models.get(scope["path_params"]["name"])
        model = served.require_ready(options.retry_after)
        headers = request_headers(scope)
        require_json(headers)
        body = await read_body(headers, receive, options.max_body_size)
        large = is_large(body)
        document = await off_loop(parse_json, body) if large else parse_json(body)
        request = parse_predict(document, options.max_items_per_request)
        outputs = await run_items(
            served,
            model,
            request.items,
            item_timeout=request_timeout(headers, request.timeout),
            receive=receive,
            retry_seconds=options.retry_after,
        )
        payload = {"output": outputs[0]} if request.single else {"outputs": outputs}
        return Reply(200, await off_loop(dump_json, payload) if large else dump_json(payload))
