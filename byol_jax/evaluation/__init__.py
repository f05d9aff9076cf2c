"""Evaluation of pretrained encoders, one concern a module:

  knn        weighted-kNN and top-k accuracy (the math)
  features   sharded eval-mode forwards and feature extraction
  monitor    the in-training kNN / online-probe monitor
  protocols  linear evaluation, fine-tuning and kNN runs on a checkpoint

The command line is `byol_jax.evaluate`.
"""
