"""The paper's experiments as named, reproducible recipes."""
