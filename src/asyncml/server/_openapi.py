"""The OpenAPI 3.1 document served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

from ._http import Receive, Reply, Scope, dump_json
from ._options import SERVER_VERSION
from ._v2_codec import DATATYPES

_ERROR = {
    "type": "object",
    "required": ["error", "type"],
    "properties": {
        "error": {"type": "string", "description": "one line for people"},
        "type": {"type": "string", "description": "e.g. validation_error, overloaded"},
        "field": {"type": "string", "description": "the request field at fault (422)"},
    },
}
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"enum": list(DATATYPES)},
        "data": {"type": "array", "description": "row-major values, flat or nested"},
        "parameters": {"type": "object"},
    },
}
_TIMEOUT_HEADER = {
    "name": "X-Request-Timeout",
    "in": "header",
    "required": False,
    "description": "Seconds until the request's items are dropped (answered 504) if not run",
    "schema": {"type": "number", "exclusiveMinimum": 0},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "malformed request (e.g. invalid JSON)",
        404: "no such model",
        413: "body over the size limit",
        415: "unsupported content type",
        422: "invalid field (named in 'field')",
        500: "the model failed for an item",
        503: "overloaded, loading or shutting down: retry after Retry-After seconds",
        504: "the deadline passed before the item ran",
    }
    return {
        str(s): {
            "description": reasons[s],
            "content": {"application/json": {"schema": _ref("Error")}},
        }
        for s in statuses
    }


def openapi_document(model_names: list[str]) -> dict[str, Any]:
    """The document, with the served models' names as the ``name`` parameter's values."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"enum": model_names}}
    json_body: dict[str, Any] = {"application/json": {"schema": {}}}
    every_error = _errors(400, 404, 413, 415, 422, 500, 503, 504)

    def get(summary: str, statuses: tuple[int, ...] = (200,), *params: Any) -> dict[str, Any]:
        responses = {str(s): {"description": "", "content": json_body} for s in statuses}
        return {"get": {"summary": summary, "parameters": list(params), "responses": responses}}

    return {
        "openapi": "3.1.0",
        "info": {"title": "asyncml", "version": SERVER_VERSION},
        "paths": {
            "/v1/models": get("The served models and their states"),
            "/v1/models/{name}/predict": {
                "post": {
                    "summary": "Runs one item ('input') or a list ('inputs') through a model",
                    "parameters": [name, _TIMEOUT_HEADER],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("PredictRequest")}},
                    },
                    "responses": {
                        "200": {
                            "description": "the outputs, in input order",
                            "content": {"application/json": {"schema": _ref("PredictResponse")}},
                        },
                        **every_error,
                    },
                }
            },
            "/v2": get("Server metadata (Open Inference Protocol)"),
            "/v2/health/live": get("Liveness (Open Inference Protocol)"),
            "/v2/health/ready": get("Readiness of every model", (200, 503)),
            "/v2/models/{name}": get("Model metadata", (200, 404), name),
            "/v2/models/{name}/ready": get("Model readiness", (200, 503), name),
            "/v2/models/{name}/infer": {
                "post": {
                    "summary": "Inference (Open Inference Protocol): row i of each input is item i",
                    "parameters": [name, _TIMEOUT_HEADER],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("InferRequest")}},
                    },
                    "responses": {
                        "200": {
                            "description": "the output tensors",
                            "content": {"application/json": {"schema": _ref("InferResponse")}},
                        },
                        **every_error,
                    },
                }
            },
            "/healthz": get("Liveness: the server answers"),
            "/readyz": get("Readiness: every model's workers ran setup()", (200, 503)),
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "", "content": {"text/plain": {}}}},
                }
            },
        },
        "components": {
            "schemas": {
                "Error": _ERROR,
                "PredictRequest": {
                    "type": "object",
                    "properties": {
                        "input": {"description": "one item"},
                        "inputs": {"type": "array", "minItems": 1, "description": "items"},
                        "timeout": {"type": "number", "exclusiveMinimum": 0},
                    },
                },
                "PredictResponse": {
                    "type": "object",
                    "properties": {"output": {}, "outputs": {"type": "array"}},
                },
                "Tensor": _TENSOR,
                "InferRequest": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {
                            "type": "object",
                            "properties": {"timeout": {"type": "integer", "description": "µs"}},
                        },
                        "inputs": {"type": "array", "minItems": 1, "items": _ref("Tensor")},
                        "outputs": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "InferResponse": {
                    "type": "object",
                    "properties": {
                        "model_name": {"type": "string"},
                        "model_version": {"type": "string"},
                        "id": {"type": "string"},
                        "outputs": {"type": "array", "items": _ref("Tensor")},
                    },
                },
            }
        },
    }


class OpenAPI:
    """``GET /openapi.json``."""

    def __init__(self, model_names: list[str]):
        self._body = dump_json(openapi_document(model_names))

    async def __call__(self, scope: Scope, receive: Receive) -> Reply:
        return Reply(200, self._body)
