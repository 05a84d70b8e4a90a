"""Command-line plumbing shared by every ``python -m chestkd...`` command and console script.

A command's work is a ``run(argv) -> result`` function (what tests and notebooks call); its
``main(argv) -> int`` is what ``python -m`` and the console scripts call: 0 on success, 2 with
one line on stderr on a user mistake (a :class:`chestkd.errors.ChestKDError`), never a
traceback from deep inside TensorFlow for a wrong option or a bad file.
"""
from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path

from chestkd.errors import ChestKDError, ConfigError


def output_folder(path, option: str = "--out") -> Path:
    """Make a command's output folder ``path`` (and its parents); a ConfigError naming
    ``option`` where it cannot be made (a file of that name on the way, no permission)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{option} {path}: cannot make this folder "
                          f"({error.strerror or error})") from None
    return path


def user_error_message(error: BaseException) -> str | None:
    """The one line of a user mistake: a ChestKDError, also one raised inside a TensorFlow
    input pipeline (tf.data wraps it in an ``OpError``: an image that does not decode, read
    with ``check_images: false``); None for anything else, a bug whose traceback is kept."""
    if isinstance(error, ChestKDError):
        return str(error)
    tf = sys.modules.get("tensorflow")  # never imported here: only if the command did
    if tf is not None and isinstance(error, tf.errors.OpError):
        wrapped = re.search(r"\b(?:DataError|ConfigError|ChestKDError): (.+)", str(error))
        if wrapped:
            return wrapped.group(1).strip()
    return None


@contextlib.contextmanager
def cli_errors():
    """Turn a user mistake (:func:`user_error_message`) into one line on stderr and exit
    status 2."""
    try:
        yield
    except Exception as error:
        message = user_error_message(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def main_of(run):
    """``main(argv=None) -> int`` for a ``run(argv)`` function (console-script entry point)."""
    def main(argv=None) -> int:
        with cli_errors():
            run(argv)
        return 0
    main.__doc__ = "Command-line entry: exit 0 on success, 2 on a user error."
    return main


_KINDS = {int: "an integer", float: "a number", str: "a name"}


def number_option(value, option: str, *, cast=float, low=None, high=None,
                  low_open: bool = False):
    """``value``, an option's number, checked: an int or float as given (``cast=int``: an
    integer, never a bool nor 2.7), or a string such as ``'1e-3'`` read as ``cast``; within
    [``low``, ``high``] (``low_open``: above ``low``). Anything else is a ConfigError naming
    ``option`` and the value, before any work starts."""
    kind = _KINDS[cast]
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(value)
        number = float(value.strip()) if isinstance(value, str) else value
        if cast is int:
            if number != int(number):   # 2.7 is no integer (int() would make it 2)
                raise ValueError(value)
            number = int(number)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{option} {value!r}: expected {kind}") from None
    if number != number or (low is not None and (number <= low if low_open else number < low)) \
            or (high is not None and number > high):
        bounds = ([f"{'>' if low_open else '>='} {low:g}"] if low is not None else []) + \
            ([f"<= {high:g}"] if high is not None else [])
        raise ConfigError(f"{option} {value!r}: expected " + " ".join([kind, *bounds[:1]])
                          + "".join(f" and {b}" for b in bounds[1:]))
    return number


def config_number(config, key: str, **checks):
    """:func:`number_option` of ``config[key]``, named as its flag (``--feature-weight``)."""
    return number_option(config[key], "--" + key.replace("_", "-"), **checks)


def list_option(value, option: str, *, cast=str, allowed=None, empty: bool = False) -> list:
    """The items of a list-valued option, however it was written.

    ``value`` is a YAML list (``branches=[a, b]``, a config file), one string of
    comma-separated items (``--seeds 0,1,2``, ``--attacks "fgsm, pgd"``, ``"[a, b]"`` where YAML
    did not read the brackets), or one value (``--seeds 3``, which YAML reads as a number).
    Each item is stripped of spaces and of one pair of quotes, then ``cast`` (``int``,
    ``float``); with ``allowed``, each must be one of those. ``empty=True``: ``none``, an empty
    string or an empty list mean no items (and a ``none`` item is dropped); otherwise at least
    one item is required. Anything else is a ConfigError naming ``option`` and the value.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        items = []
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        items = text.split(",") if text.strip() else []
    else:
        items = [value]
    parsed = []
    for item in items:
        text = str(item).strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1].strip()
        if not text:
            raise ConfigError(f"{option} {value!r}: an empty item (two commas in a row, or a "
                              f"comma at an end?)")
        if empty and text == "none":
            continue
        try:
            parsed.append(cast(text))
        except (TypeError, ValueError):
            kind = _KINDS.get(cast, getattr(cast, "__name__", str(cast)))
            raise ConfigError(f"{option} {value!r}: {text!r} is not {kind}") from None
    if allowed is not None:
        unknown = [item for item in parsed if item not in allowed]
        if unknown:
            raise ConfigError(f"{option} {value!r}: unknown {unknown}; choose from "
                              f"{list(allowed)}")
    if not parsed and not empty:
        raise ConfigError(f"{option} {value!r}: expected at least one item")
    return parsed
