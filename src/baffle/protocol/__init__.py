"""Torch-free protocol layer: what the server, the torch client and the ONNX client must agree on bit for bit."""
