"""PyTorch operators the zoo needs beyond torch.nn (the deformable convolution)."""
