#!/usr/bin/env python3
"""Real-TFLite fixtures for the NPU's requantization rules (Tests/NPUTests/TFLiteKernelTests.swift).

What it does: builds small int8 TFLite models with one FULLY_CONNECTED operator each, writing the flatbuffer
directly (tensorflow.lite's generated schema classes) so that every scale, zero point, weight and bias is exactly
the value chosen here; runs each model in TensorFlow Lite's own interpreter under three kernel paths:
  reference  op resolver BUILTIN_REF (the reference kernels)
  optimized  BUILTIN_WITHOUT_DEFAULT_DELEGATES (the optimized kernels: ruy)
  xnnpack    BUILTIN (the default XNNPACK delegate; the script checks that it took the operator)
on seeded int8 inputs, and writes what QuantKit needs to reproduce every output:
  Tests/NPUTests/Fixtures/tflite/layers.json  versions, seed, per layer: shape, scales (float32 as hex floats),
                                              zero points, activation, byte ranges in layers.bin
  Tests/NPUTests/Fixtures/tflite/layers.bin   raw little-endian arrays: x int8 [rows, k], w int8 [n, k],
                                              bias int32 [n], then one int8 [rows, n] output per kernel path

Layers (n outputs x k inputs): 64x64, 172x64, 64x172, 96x33, each per-channel and per-tensor, with and without a
fused ReLU, with scales drawn the way calibration produces them; plus three "tie" layers whose scales make many
accumulators land exactly halfway between two int8 outputs, or make a float32 product of scales differ from a
double one, so the rounding of ties and the way the multiplier is formed both show in the outputs.

How to run (TensorFlow is needed only here, never by QuantKit itself):
    python3 Tools/tflite_fixtures.py            # writes Tests/NPUTests/Fixtures/tflite/
    python3 Tools/tflite_fixtures.py --out DIR
The script re-runs itself inside a virtual environment holding tensorflow-cpu==2.21.0 and numpy, created on first
use at $QUANTKIT_TFLITE_VENV (default /work/tflite-venv, outside the repository) with pip from PyPI. The output
is deterministic: same seed, same bytes.
"""
import json
import os
import subprocess
import sys

TF_VERSION = "2.21.0"
SEED = 20260521
ROWS = 64  # input rows per natural layer (one interpreter call each)
VENV = os.environ.get("QUANTKIT_TFLITE_VENV", "/work/tflite-venv")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure_venv():
    """Re-executes this script with the venv's Python when TensorFlow 2.21.0 is not importable here."""
    try:
        import tensorflow as tf  # noqa: F401
        if tf.__version__ == TF_VERSION:
            return
    except ImportError:
        pass
    py = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.executable) == os.path.realpath(py) and os.environ.get("QK_TFLITE_REEXEC"):
        sys.exit(f"{py} still lacks tensorflow-cpu=={TF_VERSION}")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    subprocess.check_call([py, "-m", "pip", "install", "-q", f"tensorflow-cpu=={TF_VERSION}", "numpy"])
    os.environ["QK_TFLITE_REEXEC"] = "1"
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


def f32hex(v):
    """A float32 value written exactly (a hex float of its double widening)."""
    import numpy as np
    return float(np.float32(v)).hex()


def build_model(x_shape, w, bias, s_in, zp_in, s_w, per_channel, s_out, zp_out, relu):
    """One FULLY_CONNECTED int8 model: inputs [x], constant weights and int32 bias, output y."""
    import flatbuffers
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as fb

    n, k = w.shape
    s_w = np.asarray(s_w, dtype=np.float32)
    buffers = [fb.BufferT(), fb.BufferT(), fb.BufferT(), fb.BufferT(), fb.BufferT()]
    buffers[2].data = w.astype(np.int8).tobytes()
    buffers[3].data = bias.astype("<i4").tobytes()

    def quant(scales, zps, dim=0):
        q = fb.QuantizationParametersT()
        q.scale = [float(s) for s in scales]
        q.zeroPoint = [int(z) for z in zps]
        q.quantizedDimension = dim
        return q

    def tensor(name, shape, ttype, buf, q):
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer, t.quantization = name, list(shape), ttype, buf, q
        return t

    w_scales = s_w if per_channel else s_w[:1]
    # TFLite expects the bias scale to be input scale x weight scale (float32 products here).
    b_scales = np.float32(s_in) * w_scales
    tensors = [
        tensor("x", x_shape, fb.TensorType.INT8, 1, quant([s_in], [zp_in])),
        tensor("w", (n, k), fb.TensorType.INT8, 2, quant(w_scales, [0] * len(w_scales))),
        tensor("b", (n,), fb.TensorType.INT32, 3, quant(b_scales, [0] * len(b_scales))),
        tensor("y", (x_shape[0], n), fb.TensorType.INT8, 4, quant([s_out], [zp_out])),
    ]
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, 2], [3]
    op.builtinOptionsType = fb.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = fb.FullyConnectedOptionsT()
    op.builtinOptions.fusedActivationFunction = (fb.ActivationFunctionType.RELU if relu
                                                 else fb.ActivationFunctionType.NONE)
    sg = fb.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators = tensors, [0], [3], [op]
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.FULLY_CONNECTED
    code.version = 4
    model = fb.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [sg], buffers
    model.description = "quantkit tflite fixture"
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


PATHS = ["reference", "optimized", "xnnpack"]


def run_path(model, x, path):
    import tensorflow as tf
    R = tf.lite.experimental.OpResolverType
    resolver = {"reference": R.BUILTIN_REF, "optimized": R.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                "xnnpack": R.BUILTIN}[path]
    it = tf.lite.Interpreter(model_content=model, experimental_op_resolver_type=resolver, num_threads=1)
    it.allocate_tensors()
    ops = [o["op_name"] for o in it._get_ops_details()]
    # The delegate replaces the operator by a DELEGATE node; without it the fixture would not be XNNPACK's.
    want = "DELEGATE" if path == "xnnpack" else "FULLY_CONNECTED"
    if want not in ops:
        sys.exit(f"{path}: expected a {want} node, the interpreter has {ops}")
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).copy(), ops


def read_back(model):
    """Quantization parameters (float32 scales, zero points) and constant tensors as the interpreter holds them, to
    check they are exactly the ones written."""
    import tensorflow as tf
    it = tf.lite.Interpreter(model_content=model,
                             experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    out = {}
    for d in it.get_tensor_details():
        out[d["name"]] = dict(d["quantization_parameters"])
        if d["name"] in ("w", "b"):
            out[d["name"]]["value"] = it.get_tensor(d["index"]).copy()
    return out


def natural_layer(rng, n, k, per_channel, relu):
    """Scales and data the way a calibrated layer has them: float32 scales of no special form."""
    import numpy as np
    s_in = np.float32(rng.uniform(0.004, 0.05))
    zp_in = int(rng.integers(-40, 41))
    x = np.clip(np.rint(rng.normal(zp_in, 45, size=(ROWS, k))), -128, 127).astype(np.int8)
    w = np.clip(np.rint(rng.normal(0, 1, size=(n, k)) * rng.uniform(20, 60, size=(n, 1))), -127, 127)
    w[:, 0] = np.where(rng.random(n) < 0.5, 127, -127)  # each row reaches the symmetric limit
    w = w.astype(np.int8)
    s_w = np.exp(rng.uniform(np.log(0.002), np.log(0.03), size=n)).astype(np.float32)
    if not per_channel:
        s_w[:] = s_w[0]
    acc = (x.astype(np.int64) - zp_in) @ w.astype(np.int64).T
    bias = np.rint(rng.normal(0, 0.3, size=n) * acc.std()).astype(np.int32)
    real = (acc + bias) * (np.float64(s_in) * s_w.astype(np.float64))
    lo, hi = (0.0 if relu else min(0.0, real.min())), max(0.0, real.max())
    lo, hi = lo * 0.9, hi * 0.9  # a little saturation, as calibration on other data gives
    s_out = np.float32((hi - lo) / 255)
    zp_out = int(np.clip(np.rint(-128 - lo / s_out), -128, 127))
    return dict(x=x, w=w, bias=bias, s_in=s_in, zp_in=zp_in, s_w=s_w, s_out=s_out, zp_out=zp_out)


def tie_layer(rng, n, k, kind):
    """Scales that put many outputs exactly on a half, or that separate float32 from double scale products.
    pt-float-exact: per-tensor, s_out = float32(s_in * s_w) * 2^e: the multiplier is exactly 2^-e when formed
                    from the float32 product and slightly off it when formed in double.
    pc-float-exact: per-channel, s_w[j] = c * 2^b[j], the same construction per channel.
    pc-dyadic:      per-channel, every scale a power of two: exact ties under every formation."""
    import numpy as np
    zp_in = int(rng.integers(-20, 21))
    x = np.clip(np.rint(rng.normal(zp_in, 12, size=(ROWS, k))), -128, 127).astype(np.int8)
    e = 5  # the multiplier's power of two: 1/32 of accumulators are ties
    if kind == "pc-dyadic":
        s_in = np.float32(2.0 ** -7)
        b = rng.integers(-1, 2, size=n)
        s_w = (2.0 ** (-6 + b)).astype(np.float32)
        s_out = np.float32(2.0 ** (-13 + e))
    else:
        while True:
            s_in = np.float32(rng.uniform(0.004, 0.05))
            c = np.float32(rng.uniform(0.002, 0.03))
            p32 = np.float32(s_in * c)
            exact = np.float64(s_in) * np.float64(c)
            # The float32 product above the exact one by a visible step in M0: a double formation then
            # breaks ties downwards, so it disagrees with both ties-away and ties-up on positive ties.
            if exact / np.float64(p32) - 1 < -2.0 ** -28:
                break
        b = rng.integers(-1, 2, size=n) if kind == "pc-float-exact" else np.zeros(n, dtype=np.int64)
        s_w = (np.float64(c) * 2.0 ** b).astype(np.float32)
        s_out = np.float32(np.float64(p32) * 2.0 ** e)
    # Weight magnitudes shrink where the channel scale grows, so every channel's outputs span the range.
    w = np.clip(np.rint(rng.normal(0, 1, size=(n, k)) * (22 * 2.0 ** -b)[:, None]), -127, 127).astype(np.int8)
    bias = rng.integers(-600, 601, size=n).astype(np.int32)
    zp_out = int(rng.integers(-10, 11))
    return dict(x=x, w=w, bias=bias, s_in=s_in, zp_in=zp_in, s_w=s_w, s_out=s_out, zp_out=zp_out)


def main():
    ensure_venv()
    import numpy as np
    import tensorflow as tf

    out_dir = os.path.join(REPO, "Tests", "NPUTests", "Fixtures", "tflite")
    if "--out" in sys.argv:
        out_dir = sys.argv[sys.argv.index("--out") + 1]
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(SEED)

    specs = []
    for (n, k) in [(64, 64), (172, 64), (64, 172), (96, 33)]:
        for per_channel in (True, False):
            for relu in (False, True):
                name = f"fc{n}x{k}-{'pc' if per_channel else 'pt'}{'-relu' if relu else ''}"
                specs.append((name, n, k, per_channel, relu, natural_layer(rng, n, k, per_channel, relu)))
    for (name, n, k, kind) in [("ties-pt-float-exact", 64, 64, "pt-float-exact"),
                               ("ties-pc-float-exact", 64, 64, "pc-float-exact"),
                               ("ties-pc-dyadic", 96, 33, "pc-dyadic")]:
        specs.append((name, n, k, kind != "pt-float-exact", False, tie_layer(rng, n, k, kind)))

    blob = bytearray()

    def put(arr, dtype):
        off = len(blob)
        blob.extend(np.ascontiguousarray(arr, dtype=dtype).tobytes())
        return [off, len(blob) - off]

    layers = []
    for (name, n, k, per_channel, relu, L) in specs:
        model = build_model(L["x"].shape, L["w"], L["bias"], L["s_in"], L["zp_in"], L["s_w"], per_channel,
                            L["s_out"], L["zp_out"], relu)
        q = read_back(model)
        assert q["x"]["scales"][0] == L["s_in"] and q["y"]["scales"][0] == L["s_out"], name
        assert int(q["x"]["zero_points"][0]) == L["zp_in"] and int(q["y"]["zero_points"][0]) == L["zp_out"], name
        w_scales = q["w"]["scales"]
        assert np.array_equal(w_scales, L["s_w"] if per_channel else L["s_w"][:1]), name
        assert np.array_equal(q["w"]["value"], L["w"]) and np.array_equal(q["b"]["value"], L["bias"]), name
        outs, nodes = {}, {}
        for path in PATHS:
            outs[path], nodes[path] = run_path(model, L["x"], path)
        entry = {
            "name": name, "n": n, "k": k, "rows": int(L["x"].shape[0]),
            "per_channel": per_channel, "activation": "relu" if relu else "none",
            "input_scale": f32hex(L["s_in"]), "input_zero_point": L["zp_in"],
            "weight_scales": [f32hex(s) for s in w_scales],
            "output_scale": f32hex(L["s_out"]), "output_zero_point": L["zp_out"],
            "x": put(L["x"], np.int8), "w": put(L["w"], np.int8), "bias": put(L["bias"], "<i4"),
            "outputs": {p: put(outs[p], np.int8) for p in PATHS},
            "interpreter_nodes": nodes,
        }
        diff = {f"{a}/{b}": int((outs[a] != outs[b]).sum()) for a, b in
                [("reference", "optimized"), ("reference", "xnnpack"), ("optimized", "xnnpack")]}
        entry["differing_outputs"] = diff
        print(f"{name:24s} {n:4d}x{k:<4d} outputs {outs['reference'].size:6d} differing {diff}")
        layers.append(entry)

    meta = {
        "generator": "Tools/tflite_fixtures.py",
        "tensorflow_version": tf.__version__, "numpy_version": np.__version__, "seed": SEED,
        "kernel_paths": {
            "reference": "tf.lite.Interpreter, experimental_op_resolver_type=BUILTIN_REF (reference kernels)",
            "optimized": "BUILTIN_WITHOUT_DEFAULT_DELEGATES (optimized kernels, no delegate)",
            "xnnpack": "BUILTIN (default XNNPACK delegate; the FULLY_CONNECTED node became DELEGATE)",
        },
        "layout": "layers.bin byte ranges [offset, length]; x int8 [rows, k], w int8 [n, k] (row j = output "
                  "channel j), bias int32 LE [n], outputs int8 [rows, n] per kernel path; scales are float32 "
                  "values written as hex floats; weight_scales has one entry when per-tensor",
        "layers": layers,
    }
    with open(os.path.join(out_dir, "layers.bin"), "wb") as f:
        f.write(bytes(blob))
    with open(os.path.join(out_dir, "layers.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"wrote {out_dir}: {len(blob)} bytes of arrays, {len(layers)} layers")


if __name__ == "__main__":
    main()
