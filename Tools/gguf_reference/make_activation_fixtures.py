#!/usr/bin/env python3
"""llama.cpp's own activation conversions and reference quantizers, as a QuantKit test fixture.

What: llama.cpp's CPU backend converts each matmul's float activations to the weight type's vec_dot_type
(ggml-cpu.c type_traits_cpu) before the dot products. ggml_activations.c runs ggml's own code on seeded rows
(normal values, a zero block, exact .5 ties for q8 and for f16/bf16 rounding, tiny and huge magnitudes,
NaN and infinities):
  - ggml_get_type_traits_cpu(T)->from_float then the stored values as floats, for T in f32, f16, bf16, q8_0,
    q8_1 (plus each block's stored s = fp16(d * sum q)) and q8_K;
  - ggml_quantize_chunk(Q8_0 / Q4_0, no imatrix) = quantize_row_q8_0_ref / quantize_row_q4_0_ref bytes, what
    llama-quantize writes without an imatrix.
Writes Tests/KernelsTests/Fixtures/ggml_activations.bin.zst (layout below, little-endian), read by
Tests/KernelsTests/GGMLBlocksTests.swift.

Pinned: llama.cpp as vendored in llama-cpp-python 0.3.36 (/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp),
built there with GGML_NATIVE on an AVX2/AVX-512 x86-64 machine (the AVX2 quantize_row_q8_0/q8_1 paths run);
numpy (any 1.x/2.x), zstd command-line tool.

Rerun: python3 Tools/gguf_reference/make_activation_fixtures.py [--llama-cpp DIR]
(or LLAMA_CPP_DIR=DIR); DIR holds ggml/include and build/bin/libggml-{base,cpu}.so.

Layout: b"QKGA", u32 version 1, u32 rows, u32 k; x (rows*k f32); for each format in FORMATS the stored values
(rows*k f32); q8_1 sums (rows*k/32 f32); Q8_0 reference bytes (rows*k/32*34); Q4_0 reference bytes (rows*k/32*18); u32 n, then the
vec_dot_type id of each of the n ggml type ids (ggml_get_type_traits_cpu(id)->vec_dot_type).
"""
import argparse
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_LLAMA = "/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp"
# ggml type ids, in the fixture's order.
FORMATS = [("f32", 0), ("f16", 1), ("bf16", 30), ("q8_0", 8), ("q8_1", 9), ("q8_K", 15)]
ROWS, K = 9, 512


def build_tool(llama_dir: str) -> str:
    """Compiles ggml_activations.c against the built llama.cpp; returns the executable's path."""
    lib = os.path.join(llama_dir, "build", "bin")
    out = os.path.join(tempfile.mkdtemp(prefix="ggml_act"), "ggml_activations")
    subprocess.run(["cc", "-O2", "-std=c11", "-I" + os.path.join(llama_dir, "ggml", "include"),
                    os.path.join(HERE, "ggml_activations.c"), "-L" + lib, "-lggml-base", "-lggml-cpu",
                    "-Wl,-rpath," + lib, "-o", out], check=True)
    return out


def run_tool(tool: str, *args: str) -> None:
    subprocess.run([tool, *args], check=True)


def inputs(rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((ROWS, K)).astype(np.float32)
    # Row 1: a zero block for q8_0/q8_1 (32) and for q8_K (256).
    x[1, :256] = 0
    # Row 2: exact ties. Max |x| = 127 makes the q8 scale 1 (q8_K: signed max 127, iscale -1), so x.5 must round
    # to even; also -0.5, 0.5 and the max itself.
    ties = np.array([127, 2.5, -3.5, 0.5, -0.5, 1.5, -1.5, 126.5, -126.5, 4.5, 5.5, -6.5, 0, 64.5, -64.5, 3],
                    dtype=np.float32)
    x[2] = np.tile(ties, K // 16)
    # Row 3: f16 ties (1 + 2^-11 + k 2^-10 lie halfway between fp16 neighbours) and bf16 ties (1 + 2^-8 ...).
    k = np.arange(K // 2, dtype=np.float32) % 64
    x[3, : K // 2] = (1 + 2.0 ** -11 + k * 2.0 ** -10).astype(np.float32)
    x[3, K // 2:] = (1 + 2.0 ** -8 + k * 2.0 ** -7).astype(np.float32) * np.where(k % 2 == 0, 1, -1)
    # Row 4: large dynamic range, 1e-6 .. 1e6 within every block.
    x[4] *= (10.0 ** rng.uniform(-6, 6, K)).astype(np.float32)
    # Row 5: tiny blocks (fp16 d underflows to subnormal or zero while q stays nonzero) and bf16 subnormals.
    x[5, :128] *= np.float32(1e-9)
    x[5, 128:256] *= np.float32(1e-40)
    x[5, 256:] *= np.float32(1e-6)
    # Row 6: huge blocks (fp16 d overflows to inf; f16 values to inf) next to ordinary ones.
    x[6, :64] *= np.float32(1e7)
    x[6, 64:128] *= np.float32(3e4)
    # Row 7: one dominant value per block, negative in some blocks (signed max for q8_K and q4_0).
    x[7, ::32] = np.where(np.arange(K // 32) % 2 == 0, -50, 50).astype(np.float32)
    # Row 8: non-finite values: NaN and +-inf inside ordinary blocks, an all-inf block, a NaN with a payload.
    x[8, 5] = np.nan
    x[8, 40] = np.inf
    x[8, 70] = -np.inf
    x[8, 64 + 33] = np.nan
    x[8, 128:160] = np.inf
    x[8, 300] = np.array([0x7FC00123], dtype="<u4").view("<f4")[0]
    x[8, 301] = -np.inf
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-cpp", default=os.environ.get("LLAMA_CPP_DIR", DEFAULT_LLAMA))
    ap.add_argument("--out", default=os.path.join(ROOT, "Tests/KernelsTests/Fixtures/ggml_activations.bin.zst"))
    args = ap.parse_args()
    tool = build_tool(args.llama_cpp)
    x = inputs(np.random.default_rng(20240611))
    tmp = tempfile.mkdtemp(prefix="ggml_act_io")
    path = lambda name: os.path.join(tmp, name)
    outs, sums = [], []
    for name, tid in FORMATS:
        rows = []
        for r in range(ROWS):
            x[r].tofile(path("x"))
            extra = [path("s")] if name == "q8_1" else []
            run_tool(tool, "act", str(tid), str(K), path("x"), path("y"), *extra)
            rows.append(np.fromfile(path("y"), dtype=np.float32))
            if name == "q8_1":
                sums.append(np.fromfile(path("s"), dtype=np.float32))
        outs.append(np.stack(rows))
    x.tofile(path("x"))
    quant = {}
    for name, tid in [("q8_0", 8), ("q4_0", 2)]:
        run_tool(tool, "quant", str(tid), str(ROWS), str(K), path("x"), path("q"))
        quant[name] = np.fromfile(path("q"), dtype=np.uint8)
    run_tool(tool, "table", "0", "0", "-", path("table"))
    table = np.fromfile(path("table"), dtype="<u4")
    blob = b"QKGA" + struct.pack("<III", 1, ROWS, K) + x.astype("<f4").tobytes()
    for o in outs:
        blob += o.astype("<f4").tobytes()
    blob += np.stack(sums).astype("<f4").tobytes() + quant["q8_0"].tobytes() + quant["q4_0"].tobytes()
    blob += struct.pack("<I", table.size) + table.tobytes()
    raw = path("fixture.bin")
    with open(raw, "wb") as f:
        f.write(blob)
    subprocess.run(["zstd", "-19", "-q", "-f", raw, "-o", args.out], check=True)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, {len(blob)} raw)", file=sys.stderr)


if __name__ == "__main__":
    main()
