"""BYOL and SimSiam in JAX / Flax. Entry points: `python -m byol_jax.main`
(pretraining), `python -m byol_jax.evaluate` (linear evaluation,
fine-tuning, kNN), `python -m byol_jax.export` (encoders for JAX and
PyTorch users)."""


def load_encoder(path: str, raw_images: bool = False):
  """(apply_fn, variables) of an encoder exported with byol_jax.export;
  apply_fn(variables, images) -> features; raw_images=True: uint8 / [0, 1]
  images at the export's size, normalised by apply_fn. See
  `byol_jax.export.load_encoder`."""
  from byol_jax import export  # pylint: disable=g-import-not-at-top
  return export.load_encoder(path, raw_images)
