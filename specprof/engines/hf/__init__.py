"""The transformers engine: models loaded and run in this process with PyTorch (CPU or CUDA)."""
