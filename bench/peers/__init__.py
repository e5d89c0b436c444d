"""PyTorch peers of the benchmark workloads (torch.func, learn2learn); see bench/README.md."""
