"""Writes digits.jsonl: scikit-learn's 1,797 bundled digits, one JSON object per line
(``{"pixels": [64 values from 0 to 16], "label": digit}``), then two defective lines
that show where bad rows go (a line cut short, and a row without pixels).

    python examples/digits/make_digits_jsonl.py
"""

from __future__ import annotations

from pathlib import Path

import orjson
from sklearn.datasets import load_digits


def main() -> None:
    pixels, labels = load_digits(return_X_y=True)
    lines = [
        orjson.dumps({"pixels": row.astype(int).tolist(), "label": int(label)})
        for row, label in zip(pixels, labels, strict=True)
    ]
    lines += [b'{"pixels": [0, 0, 5, 13', b'{"label": 7}']
    path = Path(__file__).with_name("digits.jsonl")
    path.write_bytes(b"\n".join(lines) + b"\n")
    print(f"wrote {len(lines):,} rows to {path}")


if __name__ == "__main__":
    main()
