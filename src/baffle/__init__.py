"""baffle: backpropagation-free federated learning.

Clients run forward passes only and upload K loss differences; the server rebuilds a Stein-identity
gradient estimate from shared seeds. See README.md for the protocol, the CLI and the Python API.
"""

__version__ = "0.1.0"
