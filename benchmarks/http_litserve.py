"""LitServe's side of the HTTP benchmarks: a ``LitAPI`` defined at module level, because
LitServe pickles it to its inference worker process. Annotations stay evaluated (no
``from __future__ import annotations``): LitServe reads ``decode_request``'s to build its
endpoint, and a ``Request`` there means "the JSON body"."""

from pathlib import Path
from typing import Any

import litserve as ls
from starlette.requests import Request
from workloads import build_model


class WorkloadAPI(ls.LitAPI):  # type: ignore[misc]
    """Serves one workload's batch function: ``{"input": x}`` -> ``{"output": y}``."""

    def __init__(self, workload: str, cache: Path, **batching: Any):
        super().__init__(**batching)
        self.workload = workload
        self.cache = cache

    def setup(self, device: Any) -> None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
        self.model = build_model(self.workload, self.cache)

    def decode_request(self, request: Request) -> Any:
        return request["input"]  # LitServe passes the parsed JSON body

    def predict(self, batch: Any) -> Any:
        return self.model(list(batch))

    def encode_response(self, output: Any) -> Any:
        return {"output": output.tolist() if hasattr(output, "tolist") else output}
