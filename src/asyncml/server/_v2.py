"""The Open Inference Protocol (v2) REST endpoints, as KServe and Triton clients use them.

``POST /v2/models/{name}[/versions/1]/infer``, ``GET /v2/models/{name}[/versions/1]``
(metadata), ``GET /v2/models/{name}[/versions/1]/ready``, ``GET /v2/health/live``,
``GET /v2/health/ready`` and ``GET /v2`` (server metadata). Every model has one version,
``"1"``. A request's deadline is ``parameters.timeout`` in microseconds (as tritonclient
sends it) or the ``X-Request-Timeout`` header in seconds.

A pipeline is served like a model, unless it has a ``flat`` stage: its answer per item is a
list of any length, which tensors of one row per item cannot hold, so ``infer`` refuses it
with 422 (``unsupported_protocol``) and points to the v1 endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._calls import run_items
from ._deadline import request_timeout
from ._http import (
    Receive,
    Reply,
    Scope,
    is_large,
    json_reply,
    media_type,
    off_loop,
    parse_json,
    read_body,
    request_headers,
    require_json,
)
from ._models import Models, ServedModel, State
from ._options import SERVER_VERSION, ServingOptions
from ._problems import Problem
from ._v2_codec import InferRequest, decode_request, encode_response

#: The one version every model has.
MODEL_VERSION = "1"
#: The header that gives the length of the JSON part of a body with binary tensor data.
HEADER_LENGTH = b"inference-header-content-length"
_OCTET_STREAM = b"application/octet-stream"


def _served(models: Models, scope: Scope) -> ServedModel:
    params = scope["path_params"]
    served = models.get(params["name"])
    model_version = params.get("version", MODEL_VERSION)
    if model_version != MODEL_VERSION:
        raise Problem(
            404, "model_not_found", f"model {served.name!r} has no version {model_version!r}"
        )
    return served


class Infer:
    """The handler of ``POST /v2/models/{name}/infer``."""

    def __init__(self, models: Models, options: ServingOptions):
        self._models = models
        self._options = options

    async def __call__(self, scope: Scope, receive: Receive) -> Reply:
        options = self._options
        served = _served(self._models, scope)
        if served.answers_lists:
            raise Problem(
                422,
                "unsupported_protocol",
                f"pipeline {served.name!r} answers each item with a list of outputs (it has a "
                "flat stage), which v2 tensors cannot hold: use "
                f"POST /v1/models/{served.name}/predict",
            )
        model = served.require_ready(options.retry_after)
        headers = request_headers(scope)
        json_length = _json_length(headers)
        body = await read_body(headers, receive, options.max_body_size)
        if json_length is not None and json_length > len(body):
            raise Problem(400, "bad_request", "Inference-Header-Content-Length exceeds the body")
        large = is_large(body)
        if large:
            request = await off_loop(_decode, body, json_length, options)
        else:
            request = _decode(body, json_length, options)
        outputs = await run_items(
            served,
            model,
            request.items,
            item_timeout=request_timeout(headers, request.timeout),
            receive=receive,
            retry_seconds=options.retry_after,
        )
        if large:
            encoded = await off_loop(encode_response, served.name, request, outputs)
        else:
            encoded = encode_response(served.name, request, outputs)
        content, header_length = encoded
        if header_length is None:
            return Reply(200, content)
        extra = [(HEADER_LENGTH, str(header_length).encode())]
        return Reply(200, content, _OCTET_STREAM, extra)


def _json_length(headers: Mapping[bytes, bytes]) -> int | None:
    """The JSON header's length for a body with binary data; ``None`` for a JSON body.

    Raises:
        Problem: 400 for a malformed length, 415 for a content type that is neither.
    """
    raw = headers.get(HEADER_LENGTH)
    if raw is None:
        require_json(headers)
        return None
    if media_type(headers) not in (None, _OCTET_STREAM, b"application/json"):
        require_json(headers)
    try:
        length = int(raw)
    except ValueError:
        message = "Inference-Header-Content-Length is not a number"
        raise Problem(400, "bad_request", message) from None
    if length < 0:
        raise Problem(400, "bad_request", "Inference-Header-Content-Length is negative")
    return length


def _decode(body: bytes, json_length: int | None, options: ServingOptions) -> InferRequest:
    if json_length is None:
        return decode_request(parse_json(body), b"", options.max_items_per_request)
    document = parse_json(body[:json_length])
    return decode_request(document, body[json_length:], options.max_items_per_request)


class ModelMetadata:
    """``GET /v2/models/{name}``: the model's name, versions and platform."""

    def __init__(self, models: Models):
        self._models = models

    async def __call__(self, scope: Scope, receive: Receive) -> Reply:
        served = _served(self._models, scope)
        return json_reply(
            {
                "name": served.name,
                "versions": [MODEL_VERSION],
                "platform": "asyncml",
                "inputs": [],
                "outputs": [],
            }
        )


class ModelReady:
    """``GET /v2/models/{name}/ready``: 200 when the model is ready, else 503."""

    def __init__(self, models: Models):
        self._models = models

    async def __call__(self, scope: Scope, receive: Receive) -> Reply:
        served = _served(self._models, scope)
        ready = served.state is State.READY
        return json_reply({"name": served.name, "ready": ready}, 200 if ready else 503)


class ServerLive:
    """``GET /v2/health/live``: the server answers."""

    async def __call__(self, scope: Scope, receive: Receive) -> Reply:
        return json_reply({"live": True})


class ServerReady:
    """``GET /v2/health/ready``: 200 when every model is ready, else 503."""

    def __init__(self, models: Models):
        self._models = models

    async def __call__(self, scope: Scope, receive: Receive) -> Reply:
        ready = self._models.ready
        return json_reply({"ready": ready}, 200 if ready else 503)


class ServerMetadata:
    """``GET /v2``: the server's name, version and protocol extensions."""

    async def __call__(self, scope: Scope, receive: Receive) -> Reply:
        return json_reply(
            {"name": "asyncml", "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]}
        )
