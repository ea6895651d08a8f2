"""The core: the model (SparseDictionary), the objective's terms and the sparse TopK kernels."""
