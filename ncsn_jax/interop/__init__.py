"""PyTorch interop without torch: .pth reading, official checkpoints."""
