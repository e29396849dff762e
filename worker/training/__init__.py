"""Teaching the image towers from confirmed matches: fine-tuning (`fine_tune`), model
versions (`versions`) and the gate a version must pass before it is promoted (`gate`)."""

CUBLAS_DETERMINISTIC = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
"""The cuBLAS workspace that torch's deterministic kernels need on a GPU. cuBLAS reads it
when a process first uses it, so `jewelmatch` sets it as it starts (worker/cli), and a
training run where nothing has (fine_tune.deterministic_kernels)."""
