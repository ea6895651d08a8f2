"""Arrays a user already has (`.npy`, `.safetensors`, `.pt`) as training data."""
