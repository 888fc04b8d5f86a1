"""Checkpoints of a MindSpore-style optimizer (`lazyadam.LazyAdam`, `lazyadam.Momentum`, any
`lazyadam.optimizer(rule)`): one `.npz` file, written atomically and checked when read.

Layout of format 4 (a zip written by `numpy.savez`; no pickles anywhere):

    header.npy               the JSON header below, as uint8 bytes
    parameters/<k>.npy       parameter number k (0, 1, ...: the order of the header's list)
    <section>/<k>.npy        its state array of each section the header lists (LazyAdam's
                             moment1, moment2 and, with amsgrad, vmax)

The header holds the format name and version; the rule's name (`"rule"`) and its state sections
(`"state"`: each one's name, the rule's `State.names["mindspore"]`, and `"per"`: "element", the
parameter's shape, or "row", one value per row); the scalars of the state dict (`"scalars"`: the
step, the running powers and their bases, the flags that keep state, the seed; JSON floats
round-trip exactly, so resumed training continues bitwise); the name, shape and dtype of every
parameter with the dtype of each of its state arrays; and the sha256 of every array under its
section and parameter name (`payload_sha256`).

Formats 1 to 3 were LazyAdam's alone (sections moment1, moment2, vmax; the scalars at the top of
the header) and are read as the rule `adam`'s. numpy's files cannot name bfloat16 (ml_dtypes'
dtype is written as raw 2-byte records), so bfloat16 arrays are stored as their bits, uint16, and
read back as bfloat16 as the header says. Names live only in the JSON header, so any name round-trips (`a` and
`a.npy`, a NUL, any unicode); version 1 files, whose members were named by parameter name, and
version 2 files (no seed, state of the parameter's dtype) are still read.

A file is first written under a temporary name in the target folder (`.<file>.<host>.<pid>.*.tmp`),
flushed to disk, then renamed over the target: a crash while saving leaves the old checkpoint (or
none), never half a file. The next save to the same path removes the temporaries of saves whose
process died on this host (killed mid-save).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import lzma
import os
import re
import struct
import tempfile
import zipfile
import zlib
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .. import processes
from ..codegen import rule as rules
from ..codegen.rule import Rule
from ..dtypes import bfloat16
from ..interop.arrays import to_host
from .snapshot import DEFAULT_RULE, section

if TYPE_CHECKING:
    from .optimizer import Optimizer

FORMAT = "lazyadam-checkpoint"
VERSION = 4
READABLE = (1, 2, 3, 4)
#: What reading a damaged zip or .npy member can raise, besides ValueError and its kin.
_DAMAGE = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, KeyError, TypeError, OSError,
           EOFError, UnicodeDecodeError, NotImplementedError, RuntimeError, zlib.error,
           lzma.LZMAError, struct.error)
#: The sections of formats 1 to 3 (LazyAdam's), and of a state dict of `adam`.
SECTIONS = ("parameters", "moment1", "moment2", "vmax")
_SCALARS = ("global_step", "beta1_power", "beta2_power", "beta1", "beta2", "amsgrad")
#: Scalars of version 3: the seed of stochastic rounding.
_SEEDED = ("seed",)


def save(optimizer: Optimizer, path: str | os.PathLike) -> None:
    """Writes the optimizer's `state_dict()` (parameters included) to `path`, atomically, under
    its rule's name and state sections."""
    write(optimizer.state_dict(), path, optimizer.RULE)


def load(optimizer: Optimizer, path: str | os.PathLike) -> None:
    """Restores the state saved at `path` into `optimizer` (parameters included), in place.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: the file is damaged (truncated, bad checksum, not a checkpoint) or does not fit
            the optimizer (another rule, names, shapes, dtypes, betas, amsgrad); the message says
            what differs. Nothing was changed.
    """
    state = read(path)
    try:
        optimizer.load_state_dict(state)
    except ValueError as error:
        raise ValueError(f"{os.fspath(path)}: checkpoint does not fit this optimizer: "
                         f"{error}") from None


def write(state: dict[str, Any], path: str | os.PathLike, rule: Rule | None = None) -> None:
    """Writes a state dict (as `Optimizer.state_dict()` returns) to `path`, atomically.

    Args:
        rule: the rule whose state it is; by default the registered rule that `state["rule"]`
            names (`adam` where it names none).

    Arrays are written from host memory: device arrays in `state` are copied to the host first.
    The file appears at `path` complete or not at all: it is written to a temporary file in the same
    folder, fsynced, and renamed over `path` with `os.replace`.
    """
    path = os.fspath(path)
    rule = rule or rules.get(state.get("rule", DEFAULT_RULE))
    folder = os.path.dirname(os.path.abspath(path))
    names = list(state["parameters"])
    kept = [s for s in rule.state if section(s) in state]
    keys = ["parameters"] + [section(s) for s in kept]
    arrays = {f"{key}/{name}": np.ascontiguousarray(to_host(array))
              for key in keys for name, array in state[key].items()}
    dtypes = {key: str(array.dtype) for key, array in arrays.items()}
    arrays = {key: _bits(array) for key, array in arrays.items()}
    header = {"format": FORMAT, "version": VERSION, "rule": rule.name,
              "state": [{"name": section(s), "per": s.per} for s in kept],
              "scalars": {k: v for k, v in state.items()
                          if k != "rule" and not isinstance(v, Mapping)},
              "parameters": [{"name": name, "shape": list(arrays[f"parameters/{name}"].shape),
                              "dtype": dtypes[f"parameters/{name}"],
                              "state_dtypes": {key: dtypes[f"{key}/{name}"] for key in keys[1:]}}
                             for name in names],
              "payload_sha256": _digest(arrays)}
    members = {f"{key}/{k}": arrays[f"{key}/{name}"] for key in keys for k, name in enumerate(names)}
    _remove_abandoned_temporaries(path)
    host, pid = processes.me()
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.{host}.{pid}.",
                                     suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, header=np.frombuffer(json.dumps(header).encode(), np.uint8), **members)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_folder(folder)


def read(path: str | os.PathLike) -> dict[str, Any]:
    """The state dict stored at `path`, after checking the file.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: not a checkpoint of this format and version, truncated, or its arrays do not
            match the checksum or the header.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        try:
            with np.load(f, allow_pickle=False) as archive:
                header = json.loads(archive["header"].tobytes().decode())
                _check_header(header)
                names = [p["name"] for p in header["parameters"]]
                layout = _layout(header)
                member = (lambda k, n: n) if header["version"] == 1 else (lambda k, n: k)
                arrays = {f"{s}/{n}": archive[f"{s}/{member(k, n)}"] for s, _ in layout
                          for k, n in enumerate(names)}
        except _DAMAGE as error:
            raise ValueError(f"{path}: damaged or not a lazyadam checkpoint "
                             f"({type(error).__name__}: {error})") from None
    if _digest(arrays) != header["payload_sha256"]:
        raise ValueError(f"{path}: damaged checkpoint: the arrays do not match the checksum "
                         "in its header")
    for section_, expected in layout:
        for p, (shape, dtype) in zip(header["parameters"], expected):
            key = f"{section_}/{p['name']}"
            stored = "uint16" if dtype == "bfloat16" else dtype
            array = arrays[key]
            if list(array.shape) != shape or str(array.dtype) != stored:
                raise ValueError(f"{path}: damaged checkpoint: {key} has shape "
                                 f"{array.shape} and dtype {array.dtype}, its header says "
                                 f"{tuple(shape)} and {stored}")
            if dtype == "bfloat16":
                arrays[key] = array.view(bfloat16())
    if header["version"] == 4:
        state = {"rule": header["rule"], **header["scalars"]}
    else:
        state = {"rule": DEFAULT_RULE,
                 **{k: header[k] for k in _SCALARS + (_SEEDED if header["version"] >= 3 else ())}}
    for section_, _ in layout:
        state[section_] = {n: arrays[f"{section_}/{n}"] for n in names}
    return state


def _layout(header: dict) -> list[tuple[str, list[tuple[list[int], str]]]]:
    """The sections of a checked header, each with the shape and dtype of every parameter's
    array in it, in the header's order of parameters.

    Raises:
        KeyError, TypeError, ValueError: a header that does not say them (damaged).
    """
    params = header["parameters"]
    own = [(list(p["shape"]), p["dtype"]) for p in params]
    if header["version"] < 4:
        keys = SECTIONS if header["amsgrad"] else SECTIONS[:3]
        return [("parameters", own)] + [
            (key, [(list(p["shape"]), p.get("state_dtype", p["dtype"])) for p in params])
            for key in keys[1:]]
    layout = [("parameters", own)]
    for entry in header["state"]:
        key, per = entry["name"], entry["per"]
        if per not in ("element", "row") or key == "parameters" or "/" in key:
            raise ValueError(f"state section {key!r} per {per!r}")
        layout.append((key, [(list(p["shape"]) if per == "element" else list(p["shape"][:1]),
                              p["state_dtypes"][key]) for p in params]))
    return layout


def _bits(array: np.ndarray) -> np.ndarray:
    """What a file stores of `array`: bfloat16 as its bits (uint16), anything else as it is."""
    return array.view(np.uint16) if array.dtype.name == "bfloat16" else array


def _check_header(header: Any) -> None:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"the header does not name the format {FORMAT!r}")
    if header.get("version") not in READABLE:
        raise ValueError(f"format version {header.get('version')!r}; this lazyadam reads "
                         f"versions {', '.join(map(str, READABLE))}")
    if header["version"] == 4:
        required = ("rule", "state", "scalars")
    else:
        required = _SCALARS + (_SEEDED if header["version"] >= 3 else ())
    missing = [k for k in (*required, "parameters", "payload_sha256") if k not in header]
    if missing:
        raise ValueError(f"the header lacks {', '.join(missing)}")


def _digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over every array's key, dtype, shape and bytes, in key order."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}\0{array.dtype.str}\0{array.shape}\0".encode("utf-8",
                                                                           "surrogatepass"))
        digest.update(array.reshape(-1).view(np.uint8))
    return digest.hexdigest()


def _remove_abandoned_temporaries(path: str) -> None:
    """Removes the temporaries that saves to `path` left when their process died on this host."""
    folder, base = os.path.split(os.path.abspath(path))
    host, _ = processes.me()
    ours = re.compile(rf"\.{re.escape(base)}\.{re.escape(host)}\.([0-9]+)\.[^.]+\.tmp")
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            found = ours.fullmatch(name)
            if found and processes.gone(host, int(found.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))


def _fsync_folder(folder: str) -> None:
    """Makes the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
