"""BYOL and SimSiam in JAX / Flax. Entry points: `python -m byol_jax.main`
(pretraining), `python -m byol_jax.evaluate` (linear evaluation,
fine-tuning, kNN), `python -m byol_jax.export` (encoders for JAX and
PyTorch users)."""


def load_encoder(path: str):
  """(apply_fn, variables) of an encoder exported with byol_jax.export;
  apply_fn(variables, images) -> features. See `byol_jax.export`."""
  from byol_jax import export  # pylint: disable=g-import-not-at-top
  return export.load_encoder(path)
