"""The Open Inference Protocol (v2) endpoints: tensors to items and back, over HTTP."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import asyncml
from asyncml.server._problems import Problem
from asyncml.server._v2_codec import (
    InferRequest,
    RequestedOutput,
    decode_request,
    encode_response,
)
from tests.test_server import started

SCRIPTS = Path(__file__).parent / "scripts"


def row_sums(batch: list[Any]) -> list[Any]:
    """One row of floats in, a dict of two outputs out."""
    return [{"sum": np.float32(row.sum()), "twice": row * 2} for row in batch]


def tensor(name: str, shape: Any, datatype: str, data: Any) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


async def test_infer_maps_rows_to_items_and_outputs_to_tensors() -> None:
    async with started([asyncml.load(row_sums)]) as running:
        body = {"id": "r1", "inputs": [tensor("x", [2, 3], "FP32", [1, 2, 3, 4, 5, 6])]}
        status, answer, _ = await running.post("/v2/models/row_sums/infer", json=body)
        assert status == 200
        assert answer == {
            "model_name": "row_sums",
            "model_version": "1",
            "id": "r1",
            "outputs": [
                {"name": "sum", "datatype": "FP32", "shape": [2], "data": [6.0, 15.0]},
                {
                    "name": "twice",
                    "datatype": "FP32",
                    "shape": [2, 3],
                    "data": [2.0, 4.0, 6.0, 8.0, 10.0, 12.0],
                },
            ],
        }
        body["outputs"] = [{"name": "twice"}]
        status, answer, _ = await running.post("/v2/models/row_sums/versions/1/infer", json=body)
        assert [output["name"] for output in answer["outputs"]] == ["twice"]
        assert (await running.get("/v2/models/row_sums"))[1]["versions"] == ["1"]
        assert (await running.get("/v2/models/row_sums/versions/1/ready"))[0] == 200
        assert (await running.get("/v2/models/row_sums/versions/2"))[0] == 404
        assert (await running.get("/v2/health/live"))[0] == 200
        assert (await running.get("/v2"))[1]["name"] == "asyncml"


async def test_infer_validation_errors_name_the_field() -> None:
    async with started([asyncml.load(row_sums)]) as running:
        cases = [
            ({"inputs": []}, "inputs"),
            ({"inputs": [tensor("x", [2], "FP99", [1, 2])]}, "inputs.0.datatype"),
            (
                {"inputs": [{**tensor("x", [2], "FP32", [1, 2]), "datatype": {}}]},
                "inputs.0.datatype",
            ),
            ({"inputs": [tensor("x", [3], "FP32", [1, 2])]}, "inputs.0.data"),
            ({"inputs": [tensor("x", [2], "FP32", ["a", "b"])]}, "inputs.0.data"),
            ({"inputs": [tensor("x", "2", "FP32", [1, 2])]}, "inputs.0.shape"),
            ({"inputs": [tensor("x", [1], "FP32", [1])], "outputs": [{"name": "nope"}]}, None),
        ]
        for body, field in cases:
            status, error, _ = await running.post("/v2/models/row_sums/infer", json=body)
            assert status == 422, error
            if field is not None:
                assert error["field"] == field
            else:
                assert error["field"] == "outputs.0.name"


def test_binary_tensor_data_round_trips() -> None:
    rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    header = {
        "inputs": [
            {
                "name": "x",
                "shape": [2, 3],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 24},
            },
            {
                "name": "s",
                "shape": [2],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": 10},
            },
        ],
        "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
    }
    texts = struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0)
    request = decode_request(header, rows.tobytes() + texts, max_items=10)
    assert len(request.items) == 2
    np.testing.assert_array_equal(request.items[1]["x"], rows[1])
    assert request.items[0]["s"] == b"ab"
    body, header_length = encode_response("m", request, [row["x"] for row in request.items])
    assert header_length is not None
    document = json.loads(body[:header_length])
    (output,) = document["outputs"]
    assert output["parameters"] == {"binary_data_size": 24}
    decoded = np.frombuffer(body[header_length:], dtype="<f4").reshape(output["shape"])
    np.testing.assert_array_equal(decoded, rows)


def test_json_tensors_reach_the_model_as_binary_ones_would() -> None:
    top = 2**64 - 1
    big = decode_request(
        {"inputs": [tensor("a", [2, 2], "UINT64", [[top, 1], [2**63, 0]])]}, b"", max_items=10
    )
    assert [row.tolist() for row in big.items] == [[top, 1], [2**63, 0]]
    assert big.items[0].dtype == np.uint64
    texts = decode_request({"inputs": [tensor("s", [2], "BYTES", ["ab", "é"])]}, b"", 10)
    binary = decode_request(
        {
            "inputs": [
                {
                    "name": "s",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 12},
                }
            ]
        },
        struct.pack("<I", 2) + b"ab" + struct.pack("<I", 2) + "é".encode(),
        max_items=10,
    )
    assert texts.items == binary.items == [b"ab", "é".encode()]


def test_dict_outputs_form_tensors_whatever_their_key_order() -> None:
    request = InferRequest(None, [1, 2], None, [], False)
    text, _ = encode_response("m", request, [{"a": 1, "b": 2}, {"b": 4, "a": 3}])
    outputs = {o["name"]: o["data"] for o in json.loads(text)["outputs"]}
    assert outputs == {"a": [1, 3], "b": [2, 4]}


def test_the_codec_rejects_what_does_not_form_a_batch() -> None:
    mismatched = [tensor("a", [2], "INT64", [1, 2]), tensor("b", [3], "INT64", [1, 2, 3])]
    with pytest.raises(Problem, match="disagree on the batch size"):
        decode_request({"inputs": mismatched}, b"", max_items=10)
    with pytest.raises(Problem, match="out of the range of UINT8"):
        decode_request({"inputs": [tensor("a", [1], "UINT8", [300])]}, b"", max_items=10)
    with pytest.raises(Problem, match="at most 1 per request"):
        decode_request({"inputs": [tensor("a", [2], "INT64", [1, 2])]}, b"", max_items=1)
    for datatype, data in (("INT64", [2**63]), ("UINT64", [2**64]), ("UINT64", [-1])):
        with pytest.raises(Problem, match=f"out of the range of {datatype}"):
            decode_request({"inputs": [tensor("a", [1], datatype, data)]}, b"", max_items=10)
    with pytest.raises(Problem, match="out of the range of FP32"):
        decode_request({"inputs": [tensor("a", [2], "FP32", [1e40, 1])]}, b"", max_items=10)
    with pytest.raises(Problem, match="INT64 elements must be integers"):
        decode_request({"inputs": [tensor("a", [2], "INT64", [2**63, 0.5])]}, b"", max_items=10)
    request = InferRequest(None, [1, 2], None, [RequestedOutput("y", False)], False)
    with pytest.raises(Problem, match="does not form a tensor"):
        encode_response("m", request, [[1, 2], [3]])
    text, _ = encode_response("m", request, ["a", "bc"])
    assert json.loads(text)["outputs"][0] == {
        "name": "y",
        "datatype": "BYTES",
        "shape": [2],
        "data": ["a", "bc"],
    }


@pytest.mark.skipif(
    importlib.util.find_spec("tritonclient") is None, reason="tritonclient is not installed"
)
async def test_tritonclient_http_client_works() -> None:
    def summed(batch: list[Any]) -> list[Any]:
        return [{"sum": np.float32(row.sum())} for row in batch]

    async with started({"summer": asyncml.load(summed)}) as running:
        script = str(SCRIPTS / "triton_client.py")
        client = await asyncio.create_subprocess_exec(
            sys.executable, script, running.server.url, "summer",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await client.communicate()
    assert client.returncode == 0, err.decode()
    results = json.loads(out)
    for key in ("binary=True", "binary=False", "default"):
        assert results[key] == [6.0, 22.0, 38.0]
    assert results["live"] is True
    assert results["ready"] is True
    assert results["metadata"] == "summer"
