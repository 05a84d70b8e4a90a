"""chestkd: knowledge distillation for chest X-ray classification (Keras 3 / TensorFlow).

The package reads as the method. Each layer imports only the layers above it in this list
(checked by ``tests/test_layers.py``):

1. ``errors``, ``io`` (atomic writes), ``cli`` (exit codes): plumbing; ``scores``: probabilities
   from logits and the exact AUC (NumPy), the one home of both;
2. ``data``: one Dataset interface, the loaders, the phantom, the tf.data pipeline;
3. ``models``: the model zoo (flat logit models);
4. ``training``: configuration, run directories, optimisers, callbacks, the fit loop;
5. ``distill``: the Distiller, its loss terms, the teacher cache;
6. ``evaluation``: AUC with confidence intervals, paired tests, calibration, plots;
7. ``saliency``: one module per saliency method, figures, sanity checks, localisation scores;
   ``robustness``: adversarial attacks (FGSM, PGD) and scores under attack;
8. ``experiments``: the model store, distillation experiments, stages, seeds;
9. ``recipes``, ``report``, ``predict``, ``export`` and ``landscape``: the commands that compose
   them.
"""

__version__ = "0.1.0"
