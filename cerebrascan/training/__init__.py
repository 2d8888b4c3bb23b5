"""Training-time code: data loading, the network, the training loop, evaluation, export.

Imports torch; the serving path never imports this package.
"""
