"""The speed layer: how the model's matrix products run fast on a CPU. Imports torch only.

- `gemm`: every product the decode kernels do not serve (prefill, batched decoding, eager),
  through oneDNN's GEMM with bias and GELU in its epilogue;
- `kernels` + `inductor`: compiled one-row products for decoding, built in the background;
- `int8`: weight-only int8 layers of the int8 tier;
- `pinned`: keeps requests clear of torch.fx's process-wide patches while kernels compile.
"""
