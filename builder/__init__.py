"""`ferry build`: from an ONNX model to a served, audited version in a model repository.

options.py (what to build), samples.py (calibration and held-out inputs: .npz files or what
`ferry serve --capture` wrote), transforms.py (offline graph optimization, INT8 static
quantization), gate.py (accuracy against the source, per-layer loss), speed.py (rows/s against
the source on this host), manifest.py (how the version was made), publish.py (the version
folder and config.pbtxt), build.py (the steps in order), cli.py (the subcommand).
"""
