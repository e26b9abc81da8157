"""PyTorch interop without torch: a restricted unpickler, readers, import."""
