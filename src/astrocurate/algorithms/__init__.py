"""Pure array algorithms: k-means, backbones, windows, normalization, sampling, quality.

Nothing here imports MLflow, the project's file formats or a stage; every function takes
and returns arrays, tensors or plain values (contract in ``make lint``).
"""
