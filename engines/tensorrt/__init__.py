"""The TensorRT backend: serve `model.plan` (platform `tensorrt_plan`) on CUDA streams.

runtime.py    finding TensorRT (full or lean runtime), its logger, its data types
engine.py     a deserialized plan: tensors, optimization profiles, one engine per GPU
loader.py     the plan's way from a version folder to instances (GPUs first)
options.py    what the model config sets for its instances
instance.py   one execution context bound to one profile for life, with its own stream,
              pinned staging and device buffers, batches in flight, optional CUDA graphs
"""
