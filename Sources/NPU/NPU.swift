// NPU: a simulated integer NPU (see ARCHITECTURE.md).
// - Requant.swift: gemmlowp double-rounding fixed-point requantization (bit-exact to Tools/reference_tflite_requant.py,
//   a re-implementation; real TFLite kernels round once or in float32 depending on the path: within 1 LSB of them).
// - Quantize.swift, Weights.swift: int8 activation parameters and calibration; int8/int4 symmetric weights.
// - IntGemm.swift: SIMD multithreaded int8 x int8/int4 GEMM with the fused TFLite output stage.
// - Nonlinear.swift: softmax, norms, SiLU/GELU, RoPE, residual adds on an fp16 unit or integer LUTs, op counters.
// - NPULinear.swift: one calibrated fully connected layer.
// - CostModel.swift, NPUConfig.swift: hardware presets, per-layer cycles, the JSON configuration.
