#!/usr/bin/env python3
"""Reference re-implementation of TFLite's int8 requantization arithmetic, written from the definitions of
QuantizeMultiplier (tensorflow/lite/kernels/internal/quantization_util.cc), MultiplyByQuantizedMultiplier
(tensorflow/lite/kernels/internal/common.h, the default double-rounding path) and gemmlowp's
SaturatingRoundingDoublingHighMul / RoundingDivideByPOT (gemmlowp/fixedpoint/fixedpoint.h).

Python integers are unbounded, so every int32 step is wrapped explicitly and C++'s truncating division is
spelled out. Running the script regenerates the committed fixtures used by Tests/NPUTests:

    python3 Tools/reference_tflite_requant.py Tests/NPUTests/Fixtures
"""
import json
import math
import os
import sys

import numpy as np

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


def wrap32(v):
    """Two's-complement wrap to int32 (what the hardware does on overflow)."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


def c_div(a, b):
    """C++ integer division: truncates toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def std_round(x):
    """std::round: halves go away from zero (Python's round() goes to even)."""
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def quantize_multiplier(m):
    if m == 0.0:
        return 0, 0
    q, shift = math.frexp(m)
    q_fixed = int(std_round(q * float(1 << 31)))
    assert q_fixed <= (1 << 31)
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    assert q_fixed <= INT32_MAX
    if shift < -31:
        shift = 0
        q_fixed = 0
    return q_fixed, shift


def saturating_rounding_doubling_high_mul(a, b):
    overflow = a == b and a == INT32_MIN
    ab = a * b  # exact, fits int64
    nudge = (1 << 30) if ab >= 0 else (1 - (1 << 30))
    high = wrap32(c_div(ab + nudge, 1 << 31))
    return INT32_MAX if overflow else high


def rounding_divide_by_pot(x, exponent):
    assert 0 <= exponent <= 31
    mask = wrap32((1 << exponent) - 1)
    remainder = x & mask  # Python & on negative ints behaves as two's complement
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return wrap32((x >> exponent) + (1 if remainder > threshold else 0))


def multiply_by_quantized_multiplier(x, m0, shift):
    left = shift if shift > 0 else 0
    right = 0 if shift > 0 else -shift
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(wrap32(x * (1 << left)), m0), right)


def requantize_int8(acc, m0, shift, zp):
    v = wrap32(multiply_by_quantized_multiplier(acc, m0, shift) + zp)
    return max(-128, min(127, v))


# ---------------------------------------------------------------- fixtures

def multiplier_cases(rng):
    cases = [0.0, 1.0, 0.5, 0.25, 2.0, 0.75, 1e-12, 2.0 ** -31, 2.0 ** -32, 2.0 ** -31 * 0.75, 2.0 ** -33,
             1.0 - 2.0 ** -33, 1.0 - 2.0 ** -31, 1.0 - 2.0 ** -32, 0.5 - 2.0 ** -34, 1e6, 2.0 ** 30,
             1234.5678, 3.0517578125e-05, 0.0009765625, 0.999999999, 1.5, 1e-9, 7.450580596923828e-09]
    # Exact ties for the Q0.31 rounding: q * 2^31 = k + 0.5.
    for k in [(1 << 30) + 1, (1 << 30) + 12345, (1 << 31) - 1, 1610612736]:
        for e in [-20, -5, 0, 3]:
            cases.append(math.ldexp((k + 0.5) / float(1 << 31), e))
    for _ in range(300):
        cases.append(float(2.0 ** rng.uniform(-40, 20)))
    return [{"m": float.hex(c), "m0": m0, "shift": s} for c in cases for (m0, s) in [quantize_multiplier(c)]]


def mbqm_cases(rng):
    xs_edge = [INT32_MIN, INT32_MIN + 1, INT32_MAX, INT32_MAX - 1, 0, 1, -1, 2, -2, 3, -3, 65535, -65536]
    out = []
    m0s = [1 << 30, (1 << 31) - 1, 1073741825, 1518500250, INT32_MIN, 0, 1]
    shifts = [-31, -20, -8, -1, 0, 1, 3, 8, 30]
    for x in xs_edge:
        for m0 in m0s:
            for s in shifts:
                out.append((x, m0, s))
    # Ties in the doubling high multiply: m0 = 2^30 halves x exactly.
    for x in [1, -1, 3, -3, 5, -5, 12345679, -12345679]:
        for s in [0, -1, -2]:
            out.append((x, 1 << 30, s))
    # Ties in the rounding shift: the low bits equal exactly half.
    for e in [1, 2, 5, 16, 30]:
        for k in [0, 1, 7, -1, -8, 1000]:
            x = k * (1 << e) + (1 << (e - 1))
            if INT32_MIN <= x <= INT32_MAX:
                out.append((x, INT32_MAX, -e))
                out.append((-x, INT32_MAX, -e))
    for _ in range(1500):
        x = int(rng.integers(INT32_MIN, INT32_MAX, endpoint=True))
        if rng.random() < 0.5:
            x = int(rng.integers(-(1 << 20), 1 << 20))
        m0 = int(rng.integers(1 << 30, 1 << 31))
        s = int(rng.integers(-31, 8))
        out.append((x, m0, s))
    return [{"x": x, "m0": m0, "shift": s,
             "srdhm": saturating_rounding_doubling_high_mul(wrap32(x * (1 << max(s, 0))), m0),
             "out": multiply_by_quantized_multiplier(x, m0, s)} for (x, m0, s) in out]


def rdbpot_cases(rng):
    out = []
    for x in [INT32_MIN, INT32_MAX, 0, 1, -1, 2, -2, 3, -3, 6, -6, 1024, -1024]:
        for e in [0, 1, 2, 3, 10, 30, 31]:
            out.append((x, e))
    for _ in range(500):
        out.append((int(rng.integers(INT32_MIN, INT32_MAX, endpoint=True)), int(rng.integers(0, 32))))
    return [{"x": x, "e": e, "out": rounding_divide_by_pot(x, e)} for (x, e) in out]


def requant_cases(rng):
    out = []
    for _ in range(800):
        acc = int(rng.integers(-(1 << 24), 1 << 24))
        if rng.random() < 0.05:
            acc = int(rng.choice([INT32_MIN, INT32_MAX, 0]))
        m = float(2.0 ** rng.uniform(-24, 2))
        zp = int(rng.integers(-128, 128))
        m0, s = quantize_multiplier(m)
        out.append({"acc": acc, "m": float.hex(m), "m0": m0, "shift": s, "zp": zp,
                    "out": requantize_int8(acc, m0, s, zp)})
    return out


def fc_case(rng, m, k, n, per_channel, bits, seed_name):
    """A whole int8 fully connected layer: x int8 with zero point, symmetric weights, int32 bias, per-channel or
    per-tensor requantization to int8 with an output zero point."""
    wmax = 127 if bits == 8 else 7
    x = rng.integers(-128, 128, size=(m, k)).astype(np.int64)
    w = rng.integers(-wmax, wmax + 1, size=(n, k)).astype(np.int64)
    bias = rng.integers(-20000, 20000, size=n).astype(np.int64)
    zp_x = int(rng.integers(-128, 128))
    zp_out = int(rng.integers(-128, 128))
    s_in = float(rng.uniform(0.005, 0.1))
    s_out = float(rng.uniform(0.05, 2.0))
    s_w = [float(v) for v in rng.uniform(0.001, 0.05, size=n)] if per_channel else [float(rng.uniform(0.001, 0.05))]
    acc = (x - zp_x) @ w.T + bias[None, :]
    mults = [quantize_multiplier(s_in * s_w[c if per_channel else 0] / s_out) for c in range(n)]
    y = [[requantize_int8(wrap32(int(acc[i, c])), mults[c][0], mults[c][1], zp_out) for c in range(n)]
         for i in range(m)]
    return {"name": seed_name, "m": m, "k": k, "n": n, "bits": bits, "per_channel": per_channel,
            "x": x.flatten().tolist(), "w": w.flatten().tolist(), "bias": bias.tolist(), "zp_x": zp_x,
            "zp_out": zp_out, "s_in": float.hex(s_in), "s_out": float.hex(s_out),
            "s_w": [float.hex(v) for v in s_w], "acc": [int(v) for v in acc.flatten()],
            "m0": [mm[0] for mm in mults], "shift": [mm[1] for mm in mults],
            "y": [v for row in y for v in row]}


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else "Tests/NPUTests/Fixtures"
    os.makedirs(outdir, exist_ok=True)
    rng = np.random.default_rng(20261123)
    data = {
        "schema_version": 1,
        "generator": "Tools/reference_tflite_requant.py",
        "quantize_multiplier": multiplier_cases(rng),
        "multiply_by_quantized_multiplier": mbqm_cases(rng),
        "rounding_divide_by_pot": rdbpot_cases(rng),
        "requantize_int8": requant_cases(rng),
        "fully_connected": [fc_case(rng, 7, 33, 13, True, 8, "w8_per_channel"),
                            fc_case(rng, 5, 64, 9, False, 8, "w8_per_tensor"),
                            fc_case(rng, 3, 77, 11, True, 4, "w4_per_channel")],
    }
    path = os.path.join(outdir, "tflite_requant.json")
    with open(path, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    print(f"wrote {path}: " + ", ".join(f"{k}={len(v)}" for k, v in data.items() if isinstance(v, list)))


if __name__ == "__main__":
    main()
