#!/usr/bin/env python3
"""Writes tests/data/quant_vectors.json: random GGML blocks and their dequantisation by the
reference implementation, the `gguf` Python package (pip install gguf==0.19.0 numpy).

Raw block bytes are random; the f16 scale fields are overwritten with finite values so that the
reference output has no inf/NaN. Rerun to regenerate (seeded, deterministic)."""
import json
import numpy as np
from gguf import GGMLQuantizationType as T, quants

rng = np.random.default_rng(20261129)
# (type, bytes per block, offsets of f16 scale fields)
SPECS = [
    (T.Q4_0, 18, [0]), (T.Q4_1, 20, [0, 2]), (T.Q5_0, 22, [0]), (T.Q5_1, 24, [0, 2]),
    (T.Q8_0, 34, [0]), (T.Q2_K, 84, [80, 82]), (T.Q3_K, 110, [108]), (T.Q4_K, 144, [0, 2]),
    (T.Q5_K, 176, [0, 2]), (T.Q6_K, 210, [208]),
]
out = {}
for ty, bb, scales in SPECS:
    blocks = 3
    raw = bytearray(rng.integers(0, 256, size=bb * blocks, dtype=np.uint8).tobytes())
    for b in range(blocks):
        for off in scales:
            v = np.float16(rng.uniform(-0.05, 0.05))
            raw[b * bb + off: b * bb + off + 2] = v.tobytes()
    arr = np.frombuffer(bytes(raw), dtype=np.uint8).reshape(1, -1)
    deq = quants.dequantize(arr, ty).reshape(-1)
    out[ty.name] = {"bytes": bytes(raw).hex(), "values": [float(x) for x in deq.astype(np.float32)]}
for ty, np_dtype in [(T.F16, np.float16)]:
    vals = rng.normal(0, 3, size=64).astype(np_dtype)
    out[ty.name] = {"bytes": vals.tobytes().hex(), "values": [float(x) for x in vals.astype(np.float32)]}
vals = rng.normal(0, 3, size=64).astype(np.float32)
bf = (vals.view(np.uint32) >> 16).astype(np.uint16)  # truncation gives an exact bf16 value
deq = quants.dequantize(bf.view(np.uint8).reshape(1, -1), T.BF16).reshape(-1)
out["BF16"] = {"bytes": bf.tobytes().hex(), "values": [float(x) for x in deq.astype(np.float32)]}
json.dump(out, open("tests/data/quant_vectors.json", "w"), indent=0)
print({k: len(v["values"]) for k, v in out.items()})
