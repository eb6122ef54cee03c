"""Training-aware recovery in torch: quantized modules with STE, distillation from the FP32 teacher."""
