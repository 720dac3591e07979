// NPU: a simulated integer NPU (see ARCHITECTURE.md).
// - Requant.swift: TFLite/gemmlowp fixed-point requantization (bit-exact; Tools/reference_tflite_requant.py).
// - Quantize.swift, Weights.swift: int8 activation parameters and calibration; int8/int4 symmetric weights.
// - IntGemm.swift: SIMD multithreaded int8 x int8/int4 GEMM with the fused TFLite output stage.
// - Nonlinear.swift: softmax, norms, SiLU/GELU, RoPE, residual adds on an fp16 unit or integer LUTs, op counters.
// - NPULinear.swift: one calibrated fully connected layer.
// - CostModel.swift, NPUConfig.swift: hardware presets, per-layer cycles, the JSON configuration.
