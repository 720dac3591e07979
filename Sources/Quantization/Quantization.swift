// Quantization: see ARCHITECTURE.md
