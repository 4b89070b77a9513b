"""The speed layer: how the model's matrix products run fast on a CPU. Imports torch only.

- `kernels` + `rowdot` (`rowdot.cpp`): a decode step's products and attention in our own C++,
  batch-invariant (each row exactly as if alone), built on first use in the background;
- `gemm`: every product the decode kernels do not serve (prefill, eager decoding), through
  oneDNN's GEMM with bias and GELU in its epilogue;
- `int8`: weight-only int8 layers of the int8 tier.
"""
