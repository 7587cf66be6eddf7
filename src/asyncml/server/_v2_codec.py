"""Open Inference Protocol (v2) tensors to items and back, JSON and binary alike.

A request's tensors share their first dimension, the batch: row ``i`` of every input is item
``i``. A request with one input gives the model the rows themselves (numpy arrays, or a
scalar for a 1-D tensor); with several, each item is a dict of rows by input name. Outputs
go the other way: a model returning one value per item gives one tensor (``"output"``, or
the single output the request asked for); one returning dicts gives a tensor per key.

Binary tensor data (the extension that tritonclient uses by default) is supported both ways:
a body whose first ``Inference-Header-Content-Length`` bytes are the JSON header, followed
by each input's raw little-endian bytes (``BYTES`` elements as 4-byte length + bytes).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ._deadline import seconds
from ._http import dump_json
from ._problems import Problem, invalid

#: The protocol's datatypes and their numpy types (BYTES elements are str or bytes).
DATATYPES: dict[str, npt.DTypeLike] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
#: The name of the one output tensor of a model whose outputs are not dicts.
DEFAULT_OUTPUT = "output"
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output the client asked for, and whether it wants it as binary data."""

    name: str
    binary: bool


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A decoded v2 inference request."""

    id: str | None
    items: list[Any]
    timeout: float | None
    outputs: list[RequestedOutput]
    #: outputs not listed in ``outputs`` are sent as binary data
    binary_by_default: bool


def decode_request(document: Any, binary: bytes, max_items: int) -> InferRequest:
    """The items and options of a v2 request (``binary``: the bytes after its JSON header).

    Raises:
        Problem: 422 naming the field at fault.
    """
    if not isinstance(document, dict):
        raise invalid("body", "must be a JSON object with 'inputs'")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise invalid("id", "must be a string")
    parameters = _object(document.get("parameters"), "parameters")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise invalid("inputs", "must be a non-empty list of tensors")
    offset = 0
    tensors: dict[str, npt.NDArray[Any]] = {}
    for index, tensor in enumerate(inputs):
        name, array, offset = _decode_tensor(tensor, f"inputs.{index}", binary, offset)
        if name in tensors:
            raise invalid(f"inputs.{index}.name", f"input {name!r} is given twice")
        tensors[name] = array
    if offset != len(binary):
        raise invalid("inputs", f"{len(binary) - offset} bytes of binary data belong to no input")
    rows = {len(array) for array in tensors.values()}
    if len(rows) > 1:
        raise invalid("inputs", f"inputs disagree on the batch size (first dimension): {rows}")
    count = rows.pop()
    if count == 0:
        raise invalid("inputs", "the batch (first dimension) is empty")
    if count > max_items:
        raise invalid("inputs", f"holds {count} rows; at most {max_items} per request")
    if len(tensors) == 1:
        items: list[Any] = list(next(iter(tensors.values())))
    else:
        items = [{name: array[row] for name, array in tensors.items()} for row in range(count)]
    timeout_us = parameters.get("timeout")
    timeout = seconds(timeout_us, "parameters.timeout", "microseconds")
    return InferRequest(
        request_id,
        items,
        None if timeout is None else timeout / 1e6,
        _requested_outputs(document.get("outputs")),
        _flag(parameters.get("binary_data_output"), "parameters.binary_data_output"),
    )


def _decode_tensor(
    tensor: Any, field: str, binary: bytes, offset: int
) -> tuple[str, npt.NDArray[Any], int]:
    if not isinstance(tensor, dict):
        raise invalid(field, "must be a tensor object with name, shape, datatype and data")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise invalid(f"{field}.name", "must be a non-empty string")
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise invalid(f"{field}.shape", f"must be a non-empty list of sizes >= 0, not {shape!r}")
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        known = ", ".join(DATATYPES)
        raise invalid(f"{field}.datatype", f"must be one of {known}, not {datatype!r}")
    size = math.prod(shape)
    parameters = _object(tensor.get("parameters"), f"{field}.parameters")
    binary_size = parameters.get("binary_data_size")
    if binary_size is not None:
        if isinstance(binary_size, bool) or not isinstance(binary_size, int) or binary_size < 0:
            raise invalid(f"{field}.parameters.binary_data_size", "must be a size in bytes")
        if offset + binary_size > len(binary):
            raise invalid(f"{field}.parameters.binary_data_size", "exceeds the binary data sent")
        chunk = binary[offset : offset + binary_size]
        flat = _from_binary(chunk, datatype, f"{field}.parameters.binary_data_size")
        offset += binary_size
    elif "data" in tensor:
        flat = _from_json(tensor["data"], datatype, f"{field}.data")
    else:
        raise invalid(f"{field}.data", "required (or binary data with parameters.binary_data_size)")
    if flat.size != size:
        raise invalid(f"{field}.data", f"has {flat.size} elements; shape {shape} needs {size}")
    return name, flat.reshape(shape), offset


def _from_json(data: Any, datatype: str, field: str) -> npt.NDArray[Any]:
    if not isinstance(data, list):
        raise invalid(field, "must be a list of values (flat or nested, row-major)")
    try:
        if datatype == "BYTES":
            return _bytes_from_json(data, field)
        raw = np.asarray(data).reshape(-1)
    except ValueError as error:  # ragged nesting
        raise invalid(field, f"not a tensor of {datatype}: {error}") from None
    if raw.size == 0:
        return raw.astype(DATATYPES[datatype])
    if "INT" in datatype and raw.dtype.kind in "ufO":
        # Integers past int64 (UINT64's upper half) make numpy guess uint64, float64 or
        # object: convert them exactly, one by one.
        return _big_integers(data, datatype, field)
    expected = "b" if datatype == "BOOL" else "bi" if "INT" in datatype else "bif"
    if raw.dtype.kind not in expected:
        kind = {"b": "true or false", "bi": "integers", "bif": "numbers"}[expected]
        raise invalid(field, f"{datatype} elements must be {kind}")
    with np.errstate(over="ignore"):
        array = raw.astype(DATATYPES[datatype])
    if raw.dtype.kind in "bi" and not np.array_equal(array, raw):
        raise invalid(field, f"values out of the range of {datatype}")
    if array.dtype.kind == "f" and array.dtype.itemsize < 8 and not np.isfinite(array).all():
        raise invalid(field, f"values out of the range of {datatype}")  # JSON has no inf
    return array


def _big_integers(data: list[Any], datatype: str, field: str) -> npt.NDArray[Any]:
    values = np.array(data, dtype=np.object_).reshape(-1)
    if not all(type(value) is int for value in values):
        raise invalid(field, f"{datatype} elements must be integers")
    try:
        return values.astype(DATATYPES[datatype])
    except OverflowError:
        raise invalid(field, f"values out of the range of {datatype}") from None


def _bytes_from_json(data: list[Any], field: str) -> npt.NDArray[Any]:
    """JSON strings as the UTF-8 bytes that binary BYTES data would have carried: a model
    sees the same item whichever way the client sent it."""
    strings = np.array(data, dtype=np.object_).reshape(-1)
    if not all(isinstance(value, str) for value in strings):
        raise invalid(field, "BYTES elements must be strings")
    array = np.empty(len(strings), dtype=np.object_)
    try:
        array[:] = [value.encode() for value in strings]
    except UnicodeEncodeError as error:
        raise invalid(field, f"BYTES elements must be valid text: {error.reason}") from None
    return array


def _from_binary(chunk: bytes, datatype: str, field: str) -> npt.NDArray[Any]:
    if datatype != "BYTES":
        dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
        if len(chunk) % dtype.itemsize:
            raise invalid(field, f"{len(chunk)} bytes are not a whole number of {datatype}")
        return np.frombuffer(chunk, dtype=dtype)
    elements: list[bytes] = []
    position = 0
    while position < len(chunk):
        if position + 4 > len(chunk):
            raise invalid(field, "BYTES data ends inside an element's length")
        (length,) = _LENGTH.unpack_from(chunk, position)
        position += 4
        if position + length > len(chunk):
            raise invalid(field, "BYTES data ends inside an element")
        elements.append(chunk[position : position + length])
        position += length
    array = np.empty(len(elements), dtype=np.object_)
    array[:] = elements
    return array


def _requested_outputs(outputs: Any) -> list[RequestedOutput]:
    if outputs is None:
        return []
    if not isinstance(outputs, list):
        raise invalid("outputs", "must be a list of requested outputs")
    requested = []
    for index, output in enumerate(outputs):
        field = f"outputs.{index}"
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise invalid(f"{field}.name", "must be a string")
        parameters = _object(output.get("parameters"), f"{field}.parameters")
        binary = _flag(parameters.get("binary_data"), f"{field}.parameters.binary_data")
        requested.append(RequestedOutput(output["name"], binary))
    return requested


def _object(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(field, "must be an object")
    return value


def _flag(value: Any, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(field, "must be true or false")
    return value


# -- outputs -------------------------------------------------------------------------------


def output_tensors(
    outputs: list[Any], requested: list[RequestedOutput]
) -> dict[str, npt.NDArray[Any]]:
    """The model's per-item outputs as tensors by name (the batch first), those requested.

    Raises:
        Problem: 422 for a requested output the model does not have; 500 for outputs that
            do not stack into tensors.
    """
    if all(isinstance(output, dict) for output in outputs):
        names = list(outputs[0])
        keys = set(names)
        if any(output.keys() != keys for output in outputs):  # in any order
            raise Problem(500, "bad_output", "the model's outputs have different keys per item")
        tensors = {
            str(name): _stack([output[name] for output in outputs], str(name)) for name in names
        }
    else:
        name = requested[0].name if len(requested) == 1 else DEFAULT_OUTPUT
        tensors = {name: _stack(outputs, name)}
    if not requested:
        return tensors
    chosen = {}
    for index, output in enumerate(requested):
        if output.name not in tensors:
            known = ", ".join(map(repr, tensors))
            raise invalid(f"outputs.{index}.name", f"no output {output.name!r}; there is {known}")
        chosen[output.name] = tensors[output.name]
    return chosen


def _stack(values: list[Any], name: str) -> npt.NDArray[Any]:
    try:
        array = np.asarray(values)
    except ValueError as error:
        raise Problem(
            500, "bad_output", f"output {name!r} does not form a tensor (ragged shapes?): {error}"
        ) from None
    if array.dtype.kind in "US":
        array = array.astype(np.object_)
    return array


def datatype_of(array: npt.NDArray[Any], name: str) -> str:
    """The protocol datatype of ``array``.

    Raises:
        Problem: 500 for arrays the protocol has no datatype for.
    """
    kind, bits = array.dtype.kind, array.dtype.itemsize * 8
    if kind == "b":
        return "BOOL"
    if kind in "iuf":
        datatype = {"i": "INT", "u": "UINT", "f": "FP"}[kind] + str(bits)
        if datatype in DATATYPES:
            return datatype
    if kind == "O" and all(isinstance(v, str | bytes) for v in array.flat):
        return "BYTES"
    raise Problem(
        500, "bad_output", f"output {name!r} has no protocol datatype (numpy {array.dtype})"
    )


def encode_response(
    model: str, request: InferRequest, outputs: list[Any]
) -> tuple[bytes, int | None]:
    """The response body, and the length of its JSON header when binary data follows it.

    Raises:
        Problem: see :func:`output_tensors` and :func:`datatype_of`.
    """
    binary_names = {o.name for o in request.outputs if o.binary}
    listed = {o.name for o in request.outputs}
    tensors = []
    chunks = []
    for name, array in output_tensors(outputs, request.outputs).items():
        datatype = datatype_of(array, name)
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in binary_names or (request.binary_by_default and name not in listed):
            raw = _to_binary(array, datatype)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES":
            tensor["data"] = [_text(value) for value in array.flat]
        else:
            tensor["data"] = array.reshape(-1).tolist()
        tensors.append(tensor)
    document: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": tensors}
    if request.id is not None:
        document["id"] = request.id
    header = dump_json(document)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _to_binary(array: npt.NDArray[Any], datatype: str) -> bytes:
    if datatype != "BYTES":
        return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    parts = []
    for value in array.flat:
        data = value.encode() if isinstance(value, str) else value
        parts += [_LENGTH.pack(len(data)), data]
    return b"".join(parts)


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")
