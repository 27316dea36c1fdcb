"""The checksummed safetensors container every distillmem file format is built on.

A container is a safetensors file whose ``__metadata__`` holds a format name, a
format version, a JSON ``meta`` record and a sha256 over the meta and the
tensors. Reading it runs no code. ``read_container`` checks, in this order and
before reading the tensor bytes, that the 8-byte header length fits the file
and safetensors' limit, that the header is JSON with our metadata and that the
format and version are the expected ones; then it checks the tensor names and
the checksum. The checksum detects accidents only: each format validates the
meta and tensors it gets back as if they were crafted.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from .files import atomic_write_bytes

#: The safetensors format's own limit on the JSON header.
MAX_HEADER_BYTES = 100_000_000


def write_container(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any], *, kind: str, version: str,
    order: Sequence[str] | None = None,
) -> Path:
    """Write ``tensors`` and the JSON-able ``meta`` to ``path`` atomically.

    ``order`` fixes the tensor names and the order the checksum reads them in;
    None takes the names as given, in sorted order.
    """
    order = sorted(tensors) if order is None else order
    if set(tensors) != set(order):
        raise ValueError(f"{kind} tensors {sorted(tensors)} differ from the format's {list(order)}")
    tensors = {name: tensors[name].detach().cpu().contiguous() for name in order}
    meta_json = json.dumps(meta)
    header = {"format": kind, "format_version": version, "meta": meta_json, "sha256": digest(tensors, meta_json, order)}
    return atomic_write_bytes(path, save_tensors(tensors, metadata=header))


def read_container(
    path: str | os.PathLike, *, kind: str, version: str, order: Sequence[str] | None = None
) -> tuple[dict[str, torch.Tensor], Any]:
    """The tensors and the parsed meta of a container written by ``write_container``.

    With ``order`` the file must hold exactly those tensors; with None any
    names are read (in sorted order) and the caller checks them. A missing file
    raises FileNotFoundError; a truncated, corrupt or foreign one raises
    ValueError naming the file.
    """
    path, name = Path(path), kind.rsplit(".", 1)[-1]
    if not path.is_file():
        raise FileNotFoundError(f"no {name} file at {path}")
    header, data = _read_header_then_rest(path, kind, version)
    try:
        tensors = load_tensors(data)
    except (SafetensorError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{path} is corrupt or truncated: {exc}") from None
    order = sorted(tensors) if order is None else order
    if set(tensors) != set(order):
        raise ValueError(f"{path} holds tensors {sorted(tensors)}, expected {list(order)}")
    if digest(tensors, header["meta"], order) != header["sha256"]:
        raise ValueError(f"{path} is corrupt: its checksum does not match its contents")
    try:
        meta = json.loads(header["meta"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} has malformed {name} metadata: {exc}") from None
    return tensors, meta


def digest(tensors: dict[str, torch.Tensor], meta_json: str, order: Sequence[str]) -> str:
    """sha256 over the metadata and the tensors' bytes in ``order``, so a flipped byte anywhere is caught."""
    sha = hashlib.sha256(meta_json.encode())
    for name in order:
        sha.update(tensors[name].numpy().tobytes())
    return sha.hexdigest()


def _read_header_then_rest(path: Path, kind: str, version: str) -> tuple[dict[str, str], bytes]:
    """Our ``__metadata__`` and the file's bytes; the header is checked before the rest is read.

    A safetensors file starts with an 8-byte little-endian header length, then
    the JSON header, so a large foreign or truncated file fails after its
    first bytes.
    """
    name = kind.rsplit(".", 1)[-1]
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path} is not a {name} file: it is only {len(prefix)} bytes long")
        (length,) = struct.unpack("<Q", prefix)
        if length > size - 8:
            raise ValueError(f"{path} is truncated or not a {name} file: its header claims {length} bytes of {size}")
        if length > MAX_HEADER_BYTES:
            raise ValueError(f"{path} is not a {name} file: its header claims {length} bytes, safetensors allows {MAX_HEADER_BYTES}")
        header_bytes = handle.read(length)
        try:
            header = json.loads(header_bytes)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{path} is not a {name} file: its header is not valid JSON") from None
        metadata = header.get("__metadata__") if isinstance(header, dict) else None
        if not isinstance(metadata, dict):
            raise ValueError(f"{path} is not a {name} file: it has no distillmem metadata")
        if metadata.get("format") != kind:
            raise ValueError(f"{path} is a safetensors file but not a distillmem {name}")
        if metadata.get("format_version") != version:
            raise ValueError(f"{path} has {name} format version {metadata.get('format_version')!r}; this distillmem reads {version}")
        if not isinstance(metadata.get("meta"), str) or not isinstance(metadata.get("sha256"), str):
            raise ValueError(f"{path} has malformed {name} metadata: 'meta' and 'sha256' must be strings")
        return metadata, prefix + header_bytes + handle.read()
