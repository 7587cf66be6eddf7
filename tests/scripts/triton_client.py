"""Calls an asyncml server with tritonclient's HTTP client, as Triton users do; prints JSON.

Usage: python triton_client.py URL MODEL
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.http as httpclient  # type: ignore[import-untyped, import-not-found, unused-ignore]


def main(url: str, model: str) -> None:
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    results = {}
    for binary in (True, False):
        tensor = httpclient.InferInput("x", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=binary)
        wanted = httpclient.InferRequestedOutput("sum", binary_data=binary)
        answer = client.infer(model, [tensor], outputs=[wanted], request_id="r1")
        results[f"binary={binary}"] = answer.as_numpy("sum").tolist()
    default = client.infer(model, [tensor])  # no outputs named: all of them, as binary
    results["default"] = default.as_numpy("sum").tolist()
    results["live"] = client.is_server_live()
    results["ready"] = client.is_model_ready(model)
    results["metadata"] = client.get_model_metadata(model)["name"]
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
