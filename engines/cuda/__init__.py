"""GPU plumbing shared by the GPU backends: device discovery (NVML, cuda-python) and CUDA error
checking. Everything here imports its GPU libraries lazily, so a machine without them (or without
a GPU) loads Ferry, logs why it has no GPU, and serves on the CPU."""
