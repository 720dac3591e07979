#!/usr/bin/env python3
"""Random ggml blocks and their dequantized values, as a QuantKit test fixture.

What: for every type GGMLBlocks decodes (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K,
Q6_K, Q8_K, IQ4_NL, IQ4_XS), seeded random block bytes whose fp16 scale fields hold sensible finite values
(normal * 0.05, plus zero, negative and subnormal scales), several rows per type, including 32-block row lengths
that are not multiples of 256 (32, 96, 160, 288). Values come from gguf-py's numpy gguf.quants.dequantize, an
implementation independent of ggml's C code (Q8_K, which gguf-py lacks, from numpy d * q). When the built
llama.cpp is present the same bytes are also dequantized with ggml's own to_float (ggml_activations.c, mode deq)
and the script fails unless both agree bit for bit.
Writes Tests/KernelsTests/Fixtures/ggml_blocks.bin.zst, read by Tests/KernelsTests/GGMLBlocksTests.swift.

Pinned: gguf==0.19.0 (pip install gguf==0.19.0 numpy; the version vendored in llama-cpp-python 0.3.36), numpy,
zstd command-line tool; optional cross-check against llama.cpp as in make_activation_fixtures.py.

Rerun: python3 Tools/gguf_reference/make_block_fixtures.py [--llama-cpp DIR | --no-ggml]

Layout (little-endian): b"QKGB", u32 version 1, u32 records; each record: u32 ggml type id, u32 rows,
u32 row length, the rows' block bytes, then rows * row length f32 values.
"""
import argparse
import importlib.metadata
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

from make_activation_fixtures import DEFAULT_LLAMA, ROOT, build_tool, run_tool

# Byte offsets of each block's fp16 scale fields (ggml-common.h layouts).
HALF_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0], T.IQ4_NL: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208], T.IQ4_XS: [0],
}
SMALL_ROWS = [32, 96, 160, 288, 512]
K_ROWS = [256, 512, 768]


def random_rows(t: T, n: int, rng: np.random.Generator) -> np.ndarray:
    """Bytes of one row of n elements of type t."""
    bs, ts = gguf.GGML_QUANT_SIZES[t]
    if t == T.F32:
        return rng.standard_normal(n).astype("<f4").view(np.uint8)
    if t == T.F16:
        return (rng.standard_normal(n) * 4).astype("<f2").view(np.uint8)
    if t == T.BF16:
        bits = (rng.standard_normal(n) * 4).astype("<f4").view("<u4") >> 16
        return bits.astype("<u2").view(np.uint8)
    nb = n // bs
    blocks = rng.integers(0, 256, size=(nb, ts), dtype=np.uint8)
    if t == T.Q8_K:
        d = (rng.standard_normal(nb) * 0.01).astype("<f4")
        blocks[:, 0:4] = d.view(np.uint8).reshape(nb, 4)
        return blocks.reshape(-1)
    for f in HALF_FIELDS[t]:
        h = (rng.standard_normal(nb) * 0.05).astype("<f2")
        # Edge scales: zero, negative zero, a subnormal, a large one.
        special = np.array([0.0, -0.0, 3e-6, 900.0], dtype="<f2")
        for i in range(min(nb, 4)):
            if rng.random() < 0.5:
                h[i] = special[rng.integers(0, 4)]
        blocks[:, f:f + 2] = h.view(np.uint8).reshape(nb, 2)
    return blocks.reshape(-1)


def reference(t: T, data: np.ndarray, n: int) -> np.ndarray:
    if t == T.Q8_K:
        blocks = data.reshape(-1, 292)
        d = blocks[:, 0:4].copy().view("<f4")
        q = blocks[:, 4:260].view(np.int8).astype(np.float32)
        return (d * q).reshape(-1).astype(np.float32)
    return np.asarray(dequantize(data, t), dtype=np.float32).reshape(-1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-cpp", default=os.environ.get("LLAMA_CPP_DIR", DEFAULT_LLAMA))
    ap.add_argument("--no-ggml", action="store_true", help="skip the cross-check against ggml's to_float")
    ap.add_argument("--out", default=os.path.join(ROOT, "Tests/KernelsTests/Fixtures/ggml_blocks.bin.zst"))
    args = ap.parse_args()
    version = importlib.metadata.version("gguf")
    if version != "0.19.0":
        print(f"warning: gguf {version}, fixtures were made with 0.19.0", file=sys.stderr)
    tool = None if args.no_ggml else build_tool(args.llama_cpp)
    tmp = tempfile.mkdtemp(prefix="ggml_blocks")
    rng = np.random.default_rng(7_2024)
    types = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.IQ4_NL,
             T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_K, T.IQ4_XS]
    records = []
    checked = 0
    for t in types:
        bs = gguf.GGML_QUANT_SIZES[t][0]
        lengths = K_ROWS if bs == 256 else SMALL_ROWS
        for n in lengths:
            rows = 2
            data = np.concatenate([random_rows(t, n, rng) for _ in range(rows)])
            values = np.concatenate([reference(t, data[r * len(data) // rows:(r + 1) * len(data) // rows], n)
                                     for r in range(rows)])
            assert values.size == rows * n and np.all(np.isfinite(values)), t.name
            if tool:
                data.tofile(os.path.join(tmp, "q"))
                run_tool(tool, "deq", str(int(t)), str(rows * n), os.path.join(tmp, "q"), os.path.join(tmp, "y"))
                ggml = np.fromfile(os.path.join(tmp, "y"), dtype=np.float32)
                if not np.array_equal(ggml.view("<u4"), values.view("<u4")):
                    bad = np.flatnonzero(ggml.view("<u4") != values.view("<u4"))
                    sys.exit(f"{t.name} n={n}: gguf-py and ggml differ at {bad[:5]}: {values[bad[:5]]} vs {ggml[bad[:5]]}")
                checked += 1
            records.append(struct.pack("<III", int(t), rows, n) + data.tobytes() + values.astype("<f4").tobytes())
    blob = b"QKGB" + struct.pack("<II", 1, len(records)) + b"".join(records)
    raw = os.path.join(tmp, "fixture.bin")
    with open(raw, "wb") as f:
        f.write(blob)
    subprocess.run(["zstd", "-19", "-q", "-f", raw, "-o", args.out], check=True)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, {len(blob)} raw, {len(records)} records; "
          f"{checked} bit-identical to ggml's to_float)", file=sys.stderr)


if __name__ == "__main__":
    main()
