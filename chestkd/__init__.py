"""chestkd: knowledge distillation for chest X-ray classification (Keras 3 / TensorFlow).

The package reads as the method: ``data`` -> ``models`` -> ``distill`` -> ``saliency`` ->
``evaluation`` -> ``recipes``.
"""

__version__ = "0.1.0"
