#!/usr/bin/env python3
"""llama.cpp's CPU matrix products (ggml_mul_mat on the CPU backend), as a QuantKit test fixture.

What: for each weight type in TYPES and each row length K in CASES, seeded float weights (M = 64 rows) are quantized
with ggml_quantize_chunk (no imatrix, as llama-quantize) and multiplied by the first N of seeded activation rows,
N in CASES[K] (1, 7, 128 for K = 256; 1, 7, 64 for K = 512, to keep the fixture under 2 MB), by ggml_mul_mat(weight, activations) on the CPU backend with 2 threads (ggml_mulmat.c). The weight
is placed as llama.cpp's model loader places it: in the CPU_REPACK extra buffer where the device accepts the
product there (this build: Q4_0, IQ4_NL, Q4_K, Q2_K with rows % 8 == 0), so the repack kernels run as in
llama-perplexity; otherwise in the plain CPU buffer. Which kernel then runs on this x86-64 (AVX-512) build is
recorded per case (ggml-cpu.c ggml_compute_forward_mul_mat):
  repack   the weight carries repack traits (arch/x86/repack.cpp gemv for N = 1 .. gemm for N >= 4);
  tiled    K-quants and IQ4_XS with N >= 8 (tiled/tiled.cpp; on by default, GGML_CPU_TILED_MM);
  tinyBLAS F32, F16, BF16, Q8_0, Q4_0, Q5_0, IQ4_NL with N >= 2 (llamafile/sgemm.cpp);
  vec_dot  everything else (arch/x86/quants.c ggml_vec_dot_*).
--check-paths reruns with GGML_CPU_TILED_MM=0 and reports which tiled cases change (evidence that path ran).
Writes Tests/ModelsTests/Fixtures/ggml_mulmat.bin.zst, read by Tests/ModelsTests/GGUFLinearTests.swift.

Pinned: llama.cpp as vendored in llama-cpp-python 0.3.36 (/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp,
ggml 0.25.3), built there with GGML_NATIVE=ON, GGML_LLAMAFILE=ON, GGML_CPU_REPACK=ON on an AMD EPYC with AVX-512
(F, BW, VL, VNNI, BF16); numpy (any 1.x/2.x), a C compiler, zstd command-line tool. On another CPU other kernels
may run (the fixture records what ran here).

Rerun: python3 Tools/gguf_reference/make_mulmat_fixtures.py [--llama-cpp DIR] [--check-paths]
(or LLAMA_CPP_DIR=DIR); DIR holds ggml/include and build/bin/libggml{,-base,-cpu}.so.

Layout (little-endian): b"QKGM", u32 version 1, u32 M, u32 nK; for each K: u32 K, u32 nN, nN x u32 N, then
max(N) x K f32 activations (row-major, token rows); u32 ntypes; for each type: u32 ggml type id, then for each K:
u32 byte count, the weight's stored bytes (M rows), then for each N: u8 path (0 vec_dot, 1 tinyBLAS, 2 repack,
3 tiled) and N*M f32 products (row i = token i's M outputs).
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
TYPES = [("F32", 0), ("F16", 1), ("BF16", 30), ("Q8_0", 8), ("Q4_0", 2), ("Q4_1", 3), ("Q5_0", 6), ("Q5_1", 7),
         ("Q2_K", 10), ("Q3_K", 11), ("Q4_K", 12), ("Q5_K", 13), ("Q6_K", 14), ("IQ4_NL", 20), ("IQ4_XS", 23)]
M = 64
CASES = {256: [1, 7, 128], 512: [1, 7, 64]}
PATHS = ["vec_dot", "tinyBLAS", "repack", "tiled"]
TINYBLAS = {0, 1, 30, 8, 2, 6, 20}
TILED = {10, 11, 12, 13, 14, 23}


def build_tool(llama_dir: str) -> str:
    lib = os.path.join(llama_dir, "build", "bin")
    out = os.path.join(tempfile.mkdtemp(prefix="ggml_mm"), "ggml_mulmat")
    subprocess.run(["cc", "-O2", "-std=c11", "-I" + os.path.join(llama_dir, "ggml", "include"),
                    os.path.join(HERE, "ggml_mulmat.c"), "-L" + lib, "-lggml", "-lggml-base", "-lggml-cpu",
                    "-Wl,-rpath," + lib, "-o", out], check=True)
    return out


def weights(rng: np.random.Generator, k: int) -> np.ndarray:
    """LLM-like rows: std ~0.02 with per-row scales over two decades, some rows off-centre (exercises the mins of
    Q4_1/Q5_1/K-quants), a few large weights."""
    w = rng.standard_normal((M, k)).astype(np.float32) * np.float32(0.02)
    w *= (10.0 ** rng.uniform(-1, 1, (M, 1))).astype(np.float32)
    w[::5] += (0.01 * rng.standard_normal((len(range(0, M, 5)), 1))).astype(np.float32)
    w[3, ::37] *= 8
    return w.astype(np.float32)


def activations(rng: np.random.Generator, k: int, rows: int) -> np.ndarray:
    """Residual-stream-like rows: unit scale with lognormal channel scales and three outlier channels, varying row
    scales, and special rows among the first seven (N = 7 sees all of them): 1 positive mean, 2 x30, 3 x1e-3,
    4 one spike, 5 half zero, 6 mostly small with outlier channels only."""
    ch = np.exp(rng.normal(0, 0.5, k)).astype(np.float32)
    ch[[5, k // 3, k - 7]] *= 20
    x = rng.standard_normal((rows, k)).astype(np.float32) * ch
    x *= (10.0 ** rng.uniform(-0.5, 0.5, (rows, 1))).astype(np.float32)
    x[1] += 1.5
    x[2] *= 30
    x[3] *= np.float32(1e-3)
    x[4, k // 2 + 3] = 400
    x[5, : k // 2] = 0
    x[6] *= np.float32(0.01)
    x[6, [5, k // 3, k - 7]] = [60, -45, 80]
    return x.astype(np.float32)


def path_of(tid: int, n: int, repacked: bool) -> int:
    if repacked:
        return 2
    if tid in TINYBLAS and n >= 2:
        return 1
    if tid in TILED and n >= 8:
        return 3
    return 0


def run(tool, tid, k, wfile, xfile, tmp, env=None):
    wq = os.path.join(tmp, "wq")
    ys = [os.path.join(tmp, f"y{n}") for n in CASES[k]]
    args = [tool, str(tid), str(M), str(k), wfile, wq, xfile]
    for n, y in zip(CASES[k], ys):
        args += [str(n), y]
    out = subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout
    repacked = "repacked=1" in out
    return (np.fromfile(wq, dtype=np.uint8), [np.fromfile(y, dtype="<f4") for y in ys], repacked,
            out.split()[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-cpp", default=os.environ.get("LLAMA_CPP_DIR", DEFAULT_LLAMA))
    ap.add_argument("--out", default=os.path.join(ROOT, "Tests/ModelsTests/Fixtures/ggml_mulmat.bin.zst"))
    ap.add_argument("--check-paths", action="store_true")
    args = ap.parse_args()
    tool = build_tool(args.llama_cpp)
    tmp = tempfile.mkdtemp(prefix="ggml_mm_io")
    rng = np.random.default_rng(20240612)
    xs, ws = {}, {}
    for k in CASES:
        ws[k] = weights(rng, k)
        xs[k] = activations(rng, k, max(CASES[k]))
        ws[k].tofile(os.path.join(tmp, f"w{k}"))
        xs[k].tofile(os.path.join(tmp, f"x{k}"))
    blob = b"QKGM" + struct.pack("<III", 1, M, len(CASES))
    for k, ns in CASES.items():
        blob += struct.pack(f"<II{len(ns)}I", k, len(ns), *ns) + xs[k].astype("<f4").tobytes()
    blob += struct.pack("<I", len(TYPES))
    for name, tid in TYPES:
        blob += struct.pack("<I", tid)
        for k in CASES:
            wq, ys, repacked, buf = run(tool, tid, k, os.path.join(tmp, f"w{k}"), os.path.join(tmp, f"x{k}"), tmp)
            blob += struct.pack("<I", wq.size) + wq.tobytes()
            paths = [path_of(tid, n, repacked) for n in CASES[k]]
            for n, y, p in zip(CASES[k], ys, paths):
                assert y.size == n * M
                blob += struct.pack("<B", p) + y.astype("<f4").tobytes()
            note = ""
            if args.check_paths and not repacked:
                env = dict(os.environ, GGML_CPU_TILED_MM="0")
                _, ys0, _, _ = run(tool, tid, k, os.path.join(tmp, f"w{k}"), os.path.join(tmp, f"x{k}"), tmp, env)
                changed = [n for n, a, b in zip(CASES[k], ys, ys0) if not np.array_equal(a, b)]
                note = f"  GGML_CPU_TILED_MM=0 changes N={changed}" if changed else "  GGML_CPU_TILED_MM=0 changes nothing"
            print(f"{name:7s} K={k}: {buf} " + ", ".join(f"N={n} {PATHS[p]}" for n, p in zip(CASES[k], paths)) + note,
                  file=sys.stderr)
    raw = os.path.join(tmp, "fixture.bin")
    with open(raw, "wb") as f:
        f.write(blob)
    subprocess.run(["zstd", "-19", "-q", "-f", raw, "-o", args.out], check=True)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, {len(blob)} raw)", file=sys.stderr)


if __name__ == "__main__":
    main()
