"""cuda_ops."""
