"""The five steps, one package each, named after their MLflow run.

A stage imports another stage only through its ``outputs`` module (file names and light
readers); the order of the steps is :mod:`astrocurate.steps`.
"""
