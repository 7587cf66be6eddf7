"""The OpenAPI 3.1 document served at ``/openapi.json``.

It describes every route with its request body, its parameters and every status it can
answer, with the JSON schema of each body, so that generated clients and schema-driven test
tools (e.g. schemathesis) can rely on it.
"""

from __future__ import annotations

from typing import Any

from ._http import Receive, Reply, Scope, dump_json
from ._models import State
from ._options import SERVER_VERSION, ServingOptions
from ._v2_codec import DATATYPES

_ERROR = {
    "type": "object",
    "required": ["error", "type"],
    "properties": {
        "error": {"type": "string", "description": "one line for people"},
        "type": {"type": "string", "description": "e.g. validation_error, overloaded"},
        "field": {"type": "string", "description": "the request field at fault (422)"},
        "stage": {"type": "string", "description": "the pipeline stage where the item failed"},
    },
}
_REASONS = {
    400: "malformed request (e.g. invalid JSON)",
    404: "no such model (or version)",
    413: "body over the size limit",
    415: "unsupported content type",
    422: "invalid field (named in 'field'); on v2 infer, also a pipeline whose answers are "
    "lists (a flat stage)",
    500: "the model (or a pipeline stage, named in 'stage') failed for an item",
    503: "overloaded, loading, failed or shutting down: retry after Retry-After seconds",
    504: "the deadline passed before the item ran",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
_TIMEOUT_HEADER = {
    "name": "X-Request-Timeout",
    "in": "header",
    "required": False,
    "description": "Seconds until the request's items are dropped (answered 504) if not run",
    "schema": {"type": "number", "exclusiveMinimum": 0},
}
_MODEL_STATE = {
    "type": "object",
    "required": ["name", "state"],
    "properties": {
        "name": {"type": "string"},
        "state": {"enum": [state.value for state in State]},
        "error": {"type": "string", "description": "why it failed (state 'failed')"},
    },
}
_MODEL_STATES = {
    "type": "object",
    "required": ["models"],
    "properties": {"models": {"type": "array", "items": _MODEL_STATE}},
}
_READINESS = {
    "type": "object",
    "required": ["status", "models"],
    "properties": {
        "status": {"enum": ["ready", "not ready"]},
        "models": {"type": "array", "items": _MODEL_STATE},
    },
}
_OUTPUT_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"enum": list(DATATYPES)},
        "data": {"type": "array", "description": "row-major values, flat"},
        "parameters": {
            "type": "object",
            "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
        },
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    responses = {}
    for status in statuses:
        response = _json(_ref("Error"), _REASONS[status])
        if status == 503:
            response["headers"] = _RETRY_AFTER
        responses[str(status)] = response
    return responses


def openapi_document(model_names: list[str], options: ServingOptions) -> dict[str, Any]:
    """The document, with the served models' names as the ``name`` parameter's values."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"enum": model_names}}
    version = {"name": "version", "in": "path", "required": True, "schema": {"enum": ["1"]}}
    every_error = _errors(400, 404, 413, 415, 422, 500, 503, 504)
    max_items = options.max_items_per_request

    def get(summary: str, ok: dict[str, Any], *extra: tuple[int, Any]) -> dict[str, Any]:
        responses: dict[str, Any] = {"200": _json(ok)}
        for status, schema in extra:
            responses[str(status)] = _json(schema, _REASONS.get(status, ""))
        return {"get": {"summary": summary, "responses": responses}}

    def with_params(operation: dict[str, Any], *params: dict[str, Any]) -> dict[str, Any]:
        for method in operation.values():
            method["parameters"] = list(params)
        return operation

    def infer(*params: dict[str, Any]) -> dict[str, Any]:
        return {
            "post": {
                "summary": "Inference (Open Inference Protocol): row i of each input is item i",
                "description": "JSON tensors; or, with the Inference-Header-Content-Length "
                "header, a JSON header followed by binary tensor data",
                "parameters": [*params, _TIMEOUT_HEADER],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("InferRequest")}},
                },
                "responses": {
                    "200": {
                        "description": "the output tensors (binary data follows the JSON "
                        "header when asked for)",
                        "content": {
                            "application/json": {"schema": _ref("InferResponse")},
                            "application/octet-stream": {},
                        },
                    },
                    **every_error,
                },
            }
        }

    metadata = {
        "type": "object",
        "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array"},
            "outputs": {"type": "array"},
        },
    }
    model_ready = {
        "type": "object",
        "required": ["name", "ready"],
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    }
    error = _ref("Error")
    ready_flag = {
        "type": "object",
        "required": ["ready"],
        "properties": {"ready": {"type": "boolean"}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "asyncml", "version": SERVER_VERSION},
        "paths": {
            "/v1/models": get("The served models and their states", _MODEL_STATES),
            "/v1/models/{name}/predict": {
                "post": {
                    "summary": "Runs one item ('input') or a list ('inputs') through a model "
                    "or a pipeline",
                    "parameters": [name, _TIMEOUT_HEADER],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("PredictRequest")}},
                    },
                    "responses": {
                        "200": _json(_ref("PredictResponse"), "the outputs, in input order"),
                        **every_error,
                    },
                }
            },
            "/v2": get(
                "Server metadata (Open Inference Protocol)",
                {
                    "type": "object",
                    "required": ["name", "version", "extensions"],
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "extensions": {"type": "array", "items": {"type": "string"}},
                    },
                },
            ),
            "/v2/health/live": get(
                "Liveness (Open Inference Protocol)",
                {"type": "object", "required": ["live"], "properties": {"live": {"const": True}}},
            ),
            "/v2/health/ready": get("Readiness of every model", ready_flag, (503, ready_flag)),
            "/v2/models/{name}": with_params(get("Model metadata", metadata, (404, error)), name),
            "/v2/models/{name}/versions/{version}": with_params(
                get("Model metadata", metadata, (404, error)), name, version
            ),
            "/v2/models/{name}/ready": with_params(
                get("Model readiness", model_ready, (503, model_ready), (404, error)), name
            ),
            "/v2/models/{name}/versions/{version}/ready": with_params(
                get("Model readiness", model_ready, (503, model_ready), (404, error)),
                name,
                version,
            ),
            "/v2/models/{name}/infer": infer(name),
            "/v2/models/{name}/versions/{version}/infer": infer(name, version),
            "/healthz": get(
                "Liveness: the server answers",
                {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"const": "live"}},
                },
            ),
            "/readyz": get(
                "Readiness: every model's workers ran setup()", _READINESS, (503, _READINESS)
            ),
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "", "content": {"text/plain": {}}}},
                }
            },
            "/openapi.json": get("This document", {"type": "object"}),
        },
        "components": {
            "schemas": {
                "Error": _ERROR,
                "PredictRequest": {
                    "type": "object",
                    "description": "exactly one of 'input' and 'inputs'",
                    "oneOf": [{"required": ["input"]}, {"required": ["inputs"]}],
                    "properties": {
                        "input": {"description": "one item (any JSON value)"},
                        "inputs": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": max_items,
                            "description": "items",
                        },
                        "timeout": {
                            "type": "number",
                            "exclusiveMinimum": 0,
                            "description": "seconds",
                        },
                    },
                    "additionalProperties": False,
                },
                "PredictResponse": {
                    "type": "object",
                    "description": "'output' for a request with 'input', else 'outputs'",
                    "oneOf": [{"required": ["output"]}, {"required": ["outputs"]}],
                    "properties": {"output": {}, "outputs": {"type": "array"}},
                    "additionalProperties": False,
                },
                "Tensor": {
                    "type": "object",
                    "description": "binary data (see the infer operation) replaces 'data' by "
                    "parameters.binary_data_size",
                    "required": ["name", "shape", "datatype", "data"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "shape": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "integer", "minimum": 0},
                        },
                        "datatype": {"enum": list(DATATYPES)},
                        "data": {
                            "type": "array",
                            "description": "row-major values, flat or nested",
                        },
                        "parameters": {"type": "object"},
                    },
                },
                "RequestedOutput": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "parameters": {
                            "type": "object",
                            "properties": {"binary_data": {"type": "boolean"}},
                        },
                    },
                },
                "InferRequest": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {
                            "type": "object",
                            "properties": {
                                "timeout": {
                                    "type": "number",
                                    "exclusiveMinimum": 0,
                                    "description": "microseconds",
                                },
                                "binary_data_output": {"type": "boolean"},
                            },
                        },
                        "inputs": {"type": "array", "minItems": 1, "items": _ref("Tensor")},
                        "outputs": {"type": "array", "items": _ref("RequestedOutput")},
                    },
                },
                "InferResponse": {
                    "type": "object",
                    "required": ["model_name", "model_version", "outputs"],
                    "properties": {
                        "model_name": {"type": "string"},
                        "model_version": {"type": "string"},
                        "id": {"type": "string"},
                        "outputs": {"type": "array", "items": _OUTPUT_TENSOR},
                    },
                },
            }
        },
    }


class OpenAPI:
    """``GET /openapi.json``."""

    def __init__(self, model_names: list[str], options: ServingOptions):
        self._document = openapi_document(model_names, options)
        self._bodies: dict[str, bytes] = {}  # by the path the app is mounted at

    async def __call__(self, scope: Scope, receive: Receive) -> Reply:
        root: str = scope.get("root_path", "")
        body = self._bodies.get(root)
        if body is None:
            # Mounted under a path, the document's paths are relative to it: say so, as
            # clients generated from the document would otherwise call the wrong URLs.
            document = {**self._document, "servers": [{"url": root}]} if root else self._document
            body = self._bodies[root] = dump_json(document)
        return Reply(200, body)
