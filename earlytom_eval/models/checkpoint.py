"""A local checkpoint folder checked before transformers reads it.

transformers answers a bad local checkpoint with a traceback (and a missing local path with "Repo id must be
in the form ..."). :func:`check_checkpoint` reads only ``config.json`` and the weight files' headers and
raises one :class:`CheckpointError` line naming the path and what is wrong: not found, not a checkpoint,
unreadable config, weights missing or truncated. Hub ids are left to transformers (:func:`looks_local`).

Nothing here imports torch or transformers.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

__all__ = ["CheckpointError", "check_checkpoint", "looks_local"]

WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class CheckpointError(ValueError):
    """A local checkpoint that cannot be loaded; the message is one line naming the path and the problem."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(reason.split())
        super().__init__(f"checkpoint {self.path!r}: {self.reason}")


def looks_local(pretrained: str | os.PathLike) -> bool:
    """Whether ``pretrained`` names a local folder rather than a hub id (``org/name``).

    Local: it exists, starts with ``/``, ``.`` or ``~``, ends with a separator, or has more than one ``/``
    (a hub id has exactly one).
    """
    text = os.fspath(pretrained)
    if not text:
        return False
    if os.path.exists(os.path.expanduser(text)):
        return True
    return text.startswith(("/", ".", "~")) or text.endswith(("/", os.sep)) or text.count("/") > 1


def check_checkpoint(pretrained: str | os.PathLike, *, weights: bool = True) -> None:
    """Raise :class:`CheckpointError` if the local checkpoint ``pretrained`` cannot be loaded.

    Checks, in order: the folder exists and is a folder; ``config.json`` exists, is JSON and a mapping; with
    ``weights``, the weight files exist (``*.safetensors`` / ``pytorch_model.bin``, or every shard an index
    names) and none is truncated (a safetensors file is as long as its header says; a ``.bin`` is a whole
    zip archive). A hub id (see :func:`looks_local`) passes unchecked.
    """
    if not looks_local(pretrained):
        return
    shown = os.fspath(pretrained)
    if "\0" in shown:
        raise CheckpointError(shown, "not found (a path cannot hold a NUL character)")
    try:
        _check_folder(shown, Path(os.path.expanduser(shown)), weights)
    except OSError as err:  # unreadable files, a name too long for the file system
        raise CheckpointError(shown, f"cannot be read ({_short(err.strerror or err)})") from None


def _check_folder(shown: str, folder: Path, weights: bool) -> None:
    if not folder.exists():
        raise CheckpointError(shown, "not found (no such folder; allowed: a checkpoint folder or a hub id org/name)")
    if not folder.is_dir():
        raise CheckpointError(shown, "not a checkpoint (a file, not a folder holding config.json and weights)")
    config = folder / "config.json"
    if not config.is_file():
        raise CheckpointError(shown, "not a checkpoint (no config.json in the folder)")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(shown, f"unreadable config.json ({_short(err)})") from None
    if not isinstance(data, dict):
        raise CheckpointError(shown, f"unreadable config.json (a JSON {type(data).__name__}, not an object)")
    if weights:
        _check_weights(shown, folder)


def _check_weights(shown: str, folder: Path) -> None:
    files: list[Path] = []
    for index_name in WEIGHT_INDEXES:
        index = folder / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
                raise CheckpointError(shown, f"weights missing: unreadable {index_name} ({_short(err)})") from None
            missing = [name for name in shards if not (folder / name).is_file()]
            if missing:
                raise CheckpointError(shown, f"weights missing: {missing[0]} (named in {index_name}) is not there"
                                      + (f", nor {len(missing) - 1} more" if len(missing) > 1 else ""))
            files = [folder / name for name in shards]
            break
    if not files:
        files = sorted(folder.glob("*.safetensors")) or [folder / n for n in WEIGHT_FILES if (folder / n).is_file()]
    if not files:
        raise CheckpointError(shown, "weights missing (no *.safetensors or pytorch_model.bin in the folder)")
    for path in files:
        problem = _safetensors_problem(path) if path.suffix == ".safetensors" else _bin_problem(path)
        if problem:
            raise CheckpointError(shown, f"weights truncated or corrupt: {path.name} {problem}")


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is not whole (None: it is): 8-byte header length, JSON header, then the data."""
    size = path.stat().st_size
    if size < 8:
        return f"has {size} bytes (a safetensors file has at least 8)"
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if 8 + length > size:
            return f"has {size} bytes, its header alone says {8 + length}"
        try:
            header = json.loads(handle.read(length))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
            return f"has an unreadable header ({_short(err)})"
    if 8 + length + end > size:
        return f"has {size} bytes, its header says {8 + length + end}"
    return None


def _bin_problem(path: Path) -> str | None:
    if not zipfile.is_zipfile(path):
        return f"is not a whole torch archive ({path.stat().st_size} bytes)"
    return None


def _short(err: BaseException, limit: int = 120) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
