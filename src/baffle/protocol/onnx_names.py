"""The names an exported ONNX model and an inference-only client agree on.

``baffle.export`` (torch) writes them, ``baffle.onnx_client`` (no torch) reads them; they live here so
neither copies the other.
"""

INPUT_NAME = "x"  # the image batch; every other graph input is a weight named as in the state dict
OUTPUT_NAME = "logits"
META_PARAMETERS = "baffle.parameters"  # JSON list of parameter names in named_parameters order
META_BUFFERS = "baffle.buffers"  # JSON list of the remaining state-dict names
META_NOISE = "baffle.noise_spec"  # the noise spec the model was exported for
