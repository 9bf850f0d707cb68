"""K-means on torch tensors: the estimator, its hierarchical form and its distributed runs."""
