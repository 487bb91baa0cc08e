"""Test doubles for what cannot exist on a machine without a GPU: CUDA and TensorRT.

Each double says what real API it stands for; nothing else in the tests is faked.
"""
