"""Weight handling for the model zoo: ImageNet initialisation and local weight files.

``build(..., weights=...)`` accepts three kinds of value:

* ``None``: random initialisation (always available, the only option offline).
* ``"imagenet"``: Keras' ImageNet checkpoints for the ``keras.applications`` backbones, loaded
  with ``include_top=False`` (our classifier head is always new). They need internet access the
  first time (Keras caches them in ``~/.keras/models``) and 3 input channels.
* a path to a local file:

  - ``*.weights.h5`` (written by ``model.save_weights``): loaded with ``model.load_weights``.
    Keras 3 addresses these weights by layer type and position, so the file must come from the
    same architecture and number of classes.
  - ``*.keras`` (written by ``model.save``, e.g. a run directory's ``model.keras``): loaded with
    ``keras.models.load_model`` and copied into the new model layer by layer, matched by name.

Every failure raises :class:`chestkd.errors.ConfigError` naming the model and the file, and
saying how to fall back to ``weights=None``.

Transfer learning (:func:`transfer_weights`): a chestkd model trained on another chest X-ray
task initialises a new one layer by layer, by name; the classifier head is re-initialised when
the number of classes differs, and the copied and not-copied layers are reported.

:func:`save_model_atomically` writes a ``.keras`` file so that a crash mid-save leaves the
previous file intact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import keras

from chestkd.errors import ConfigError
from chestkd.io import atomic_write

IMAGENET = "imagenet"
WEIGHTS_FILE_SUFFIXES = (".weights.h5", ".keras")

WeightsOption = Union[None, str, os.PathLike]

_HOW_TO_FIX = (
    "pass weights=None for random initialisation, or weights='path/to/file.weights.h5' "
    "(or a .keras model file) to load local weights."
)


def resolve_weights(
    model_name: str, weights: WeightsOption, *, has_imagenet: bool, channels: int
) -> Union[None, str, Path]:
    """Validate the ``weights`` option of ``build``.

    Returns ``None``, the string ``"imagenet"``, or the :class:`~pathlib.Path` of an existing
    weights file. Raises ``ConfigError`` for anything else, before any model is built.
    """
    if weights is None:
        return None
    if isinstance(weights, str) and weights.lower() == IMAGENET:
        if not has_imagenet:
            raise ConfigError(
                f"Model '{model_name}' has no ImageNet weights (only the keras.applications "
                f"backbones have them): {_HOW_TO_FIX}"
            )
        if channels != 3:
            raise ConfigError(
                f"ImageNet weights for model '{model_name}' need 3 input channels; "
                f"got input_shape with {channels} channel(s). Use 3 channels, or {_HOW_TO_FIX}"
            )
        return IMAGENET
    if not isinstance(weights, (str, os.PathLike)):
        raise ConfigError(
            f"Option weights={weights!r} for model '{model_name}' is not understood: expected "
            f"None, 'imagenet' or a path to a {' or '.join(WEIGHTS_FILE_SUFFIXES)} file."
        )
    path = Path(weights)
    if not path.name.endswith(WEIGHTS_FILE_SUFFIXES):
        raise ConfigError(
            f"Weights file {path} for model '{model_name}' must end with "
            f"{' or '.join(WEIGHTS_FILE_SUFFIXES)} (or pass weights='imagenet' or None)."
        )
    if not path.is_file():
        raise ConfigError(f"Weights file {path} for model '{model_name}' does not exist; {_HOW_TO_FIX}")
    return path


def imagenet_unavailable(model_name: str, cause: BaseException) -> ConfigError:
    """The error raised when Keras cannot provide ImageNet weights (usually: no internet)."""
    return ConfigError(
        f"Could not load ImageNet weights for model '{model_name}' "
        f"({type(cause).__name__}: {cause}). Downloading them needs internet access the first "
        f"time (Keras caches them in ~/.keras/models); without it, {_HOW_TO_FIX}"
    )


def load_weights_file(model: keras.Model, path: Path) -> None:
    """Load the weights stored in ``path`` (``.weights.h5`` or ``.keras``) into ``model``."""
    path = Path(path)
    if path.name.endswith(".weights.h5"):
        try:
            model.load_weights(str(path))
        except (ValueError, KeyError, OSError) as exc:
            raise ConfigError(
                f"Weights file {path} does not fit model '{model.name}': {exc}. The file must be "
                f"saved from the same architecture with the same number of classes."
            ) from exc
        return
    try:
        source = keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # Keras raises many types for unreadable archives.
        raise ConfigError(f"Could not read model file {path}: {type(exc).__name__}: {exc}") from exc
    copy_weights_by_name(source, model, source_label=str(path))


def _some(names) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def copy_weights_by_name(source: keras.Model, target: keras.Model, *, source_label: str) -> None:
    """Copy the weights of every layer of ``target`` from the ``source`` layer of the same name.

    All layers are checked before any weight is assigned, so on error ``target`` is unchanged.
    The two must hold the same weighted layers: a ResNet-32 file loaded into a ResNet-20 would
    otherwise lose its extra blocks without a word.
    """
    source_layers = {layer.name: layer for layer in source.layers}
    needed = [layer for layer in target.layers if layer.weights]
    # Missing layers first: they say "different architecture" more clearly than a shape does.
    missing = [layer.name for layer in needed if layer.name not in source_layers]
    if missing:
        raise ConfigError(
            f"{source_label} has no layer named {_some(missing)}, which model '{target.name}' "
            f"needs; was it saved from a different architecture?"
        )
    target_names = {layer.name for layer in target.layers}
    extra = [name for name, layer in source_layers.items()
             if layer.weights and name not in target_names]
    if extra:
        raise ConfigError(
            f"{source_label} holds layer(s) {_some(extra)} that model '{target.name}' lacks; "
            f"was it saved from a different architecture ('{source.name}')?"
        )
    assignments = []
    for layer in needed:
        values = source_layers[layer.name].get_weights()
        expected = [tuple(w.shape) for w in layer.weights]
        found = [tuple(v.shape) for v in values]
        if expected != found:
            raise ConfigError(
                f"{source_label}: layer '{layer.name}' holds weights of shapes {found} but model "
                f"'{target.name}' expects {expected} (different architecture or number of classes?)."
            )
        assignments.append((layer, values))
    for layer, values in assignments:
        layer.set_weights(values)


# ----------------------------------------------------------------------------- transfer learning

HEAD_LAYERS = ("logits",)


def source_model_file(source) -> Path:
    """The ``.keras`` file of ``weights: RUN_DIR|FILE``: a run directory's ``model.keras``."""
    path = Path(source)
    if path.is_dir():
        path = path / "model.keras"
    if path.suffix != ".keras" or not path.is_file():
        raise ConfigError(f"weights {source}: expected a run directory holding model.keras or "
                          f"a .keras file; {path} does not exist")
    return path


def transfer_weights(source: keras.Model, target: keras.Model, *, source_label: str,
                     head=HEAD_LAYERS) -> dict:
    """Copy a model trained on another task into ``target``, replacing its head if needed.

    Every layer of ``target`` with weights is copied from the ``source`` layer of the same
    name. The ``head`` layers (the classifier, ``"logits"``) are copied only when their shapes
    agree (same number of classes); otherwise they keep ``target``'s fresh initialisation.
    Any other missing layer or shape difference is a ConfigError (another architecture or
    input size), raised before anything is assigned.

    Returns:
        ``{"source", "copied": [layer names], "not_copied": [{"layer", "reason"}]}``.
    """
    source_layers = {layer.name: layer for layer in source.layers}
    copied, not_copied, assignments, problems = [], [], [], []
    for layer in (layer for layer in target.layers if layer.weights):
        expected = [tuple(w.shape) for w in layer.weights]
        if layer.name not in source_layers:
            (not_copied.append({"layer": layer.name, "reason": "not in the source model"})
             if layer.name in head else problems.append(f"no layer named '{layer.name}'"))
            continue
        values = source_layers[layer.name].get_weights()
        found = [tuple(v.shape) for v in values]
        if found != expected:
            if layer.name in head:
                not_copied.append({"layer": layer.name, "reason": f"re-initialised: shapes "
                                   f"{found} in the source, {expected} here (other classes)"})
            else:
                problems.append(f"layer '{layer.name}' holds {found}, '{target.name}' needs "
                                f"{expected}")
            continue
        assignments.append((layer, values))
        copied.append(layer.name)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more"
                                           if len(problems) > 3 else "")
        raise ConfigError(f"{source_label} cannot initialise model '{target.name}': {shown} "
                          "(another architecture or input size?)")
    for layer, values in assignments:
        layer.set_weights(values)
    return {"source": source_label, "copied": copied, "not_copied": not_copied}


# ----------------------------------------------------------------------------- model files

def save_model_atomically(model, path):
    """``model.save(path)`` through a temporary file in the same folder and ``os.replace``.

    A crash mid-save leaves the previous file intact, never a truncated one.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ConfigError(f"model path {str(path)!r} must end in '.keras'")
    atomic_write(path, lambda tmp: model.save(tmp, overwrite=True))
