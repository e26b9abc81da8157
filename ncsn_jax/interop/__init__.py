"""PyTorch interop without torch: one restricted unpickler, readers of
`.pth` checkpoints and TorchScript archives, official checkpoint import."""
