"""Atomic file writes: a file is either its old content or its complete new content.

Every writer goes through :func:`atomic_write`: the content is written to a temporary file in
the *same folder* (so the final ``os.replace`` is a rename within one file system, which POSIX
and Windows both make atomic) and renamed over the target. A crash, a full disk or an
exception mid-write leaves the previous file intact and removes the temporary one, so an
interrupted run never leaves a truncated JSON, table or model that looks complete.

This is the lowest layer of chestkd: it imports nothing from the package.
"""
from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path

import numpy as np


def atomic_write(path, write_fn, *, suffix: str | None = None) -> Path:
    """Call ``write_fn(tmp_path)`` on a temporary file next to ``path``, then rename it.

    ``write_fn`` receives the temporary path (a ``str``) and must write the whole content
    there. The temporary name keeps ``path``'s suffix by default (``suffix`` overrides it),
    because some writers choose the format from it (``np.save`` appends ``.npy`` to other
    names, Keras requires ``.keras``). The parent folder is created. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name (process, random part) rather than mkstemp: the writer creates the file
    # itself, so it gets the usual permissions (mkstemp's are owner-only).
    temporary = str(path.parent / (f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
                                   + (path.suffix if suffix is None else suffix)))
    try:
        write_fn(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return path


def atomic_copy(source, path) -> Path:
    """Copy the file ``source`` to ``path`` atomically (``shutil.copy2``: content and times):
    a copy killed half-way leaves no partial ``path`` that a resumed run would take as done."""
    import shutil
    return atomic_write(path, lambda tmp: shutil.copy2(source, tmp))


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding=encoding))


def json_default(value):
    """``json.dumps(default=...)`` for the values runs record.

    NumPy integers -> int, NumPy floats -> float (NaN -> null: JSON has no NaN, and a missing
    metric is what NaN means here), arrays -> lists, paths -> str.
    """
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return _nan_to_none(value.tolist())
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def _nan_to_none(value):
    """NaN -> None inside dicts, lists and tuples.

    Needed besides :func:`json_default` because ``json`` writes Python floats, and
    ``np.float64`` (a ``float`` subclass), itself, as the non-standard token ``NaN``.
    """
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(item) for item in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def atomic_write_json(path, payload, *, indent: int | None = 1) -> Path:
    """Write ``payload`` as JSON (with :func:`json_default`) to ``path`` atomically.

    Every NaN, NumPy or Python, is written as ``null``: the file stays valid JSON for any
    reader. The text is built before the temporary file is opened, so a payload that cannot
    be serialised raises without touching the disk.
    """
    text = json.dumps(_nan_to_none(payload), indent=indent, default=json_default)
    return atomic_write_text(path, text)


def atomic_save_npy(path, array) -> Path:
    """``np.save`` to ``path`` atomically (``path`` should end in ``.npy``)."""
    array = np.asarray(array)

    def write(tmp):
        with open(tmp, "wb") as handle:   # a handle: np.save appends no second suffix
            np.save(handle, array)

    return atomic_write(path, write)
