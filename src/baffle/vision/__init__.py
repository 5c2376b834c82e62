"""Pretrained vision models: EfficientNet-Lite0 (ImageNet) in plain PyTorch, for forward-only transfer learning."""
