"""Box operations on NumPy arrays and tensors."""
