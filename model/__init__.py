"""TensorFlow/Keras model code: record schema, U-Net, losses, metrics, training, artifacts.

Never imports Beam or :mod:`pipelines`.
"""
