// NPU: a simulated integer NPU (see ARCHITECTURE.md).
// - Requant.swift: int32 -> int8 requantization under a RequantRule: tflite-reference (default; bit-exact to TFLite
//   2.21's reference kernels on the fixture layers of Tools/tflite_fixtures.py), tflite-optimized (its ruy kernels),
//   xnnpack (its XNNPACK delegate), gemmlowp (the earlier rule, = Tools/reference_tflite_requant.py).
// - Quantize.swift, Weights.swift: int8 activation parameters and calibration; int8/int4 symmetric weights.
// - IntGemm.swift: SIMD multithreaded int8 x int8/int4 GEMM with the fused TFLite output stage.
// - Nonlinear.swift: softmax, norms, SiLU/GELU, RoPE, residual adds on an fp16 unit or integer LUTs, op counters.
// - NPULinear.swift: one calibrated fully connected layer.
// - CostModel.swift, NPUConfig.swift: hardware presets, per-layer cycles, the JSON configuration.
