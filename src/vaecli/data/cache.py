"""Decode cache of image folders: raw uint8 pixels behind a JSON header, never pickle.

One file per folder and resize rule, ``<cache_dir>/<folder hash>-<rule hash>.u8``:

    b"VAECACHE1\\n" | header length (8 bytes, little-endian) | JSON header | pixels (N, C, H, W) uint8

The header holds the key of the file list (relative paths, sizes, modification times), the
shape, the relative paths kept, the files skipped and a CRC-32 of the pixels. A load checks all
of it; anything that does not match (a file changed, added or removed; a truncated or damaged
cache) is a miss, and the folder is decoded again and the entry replaced. Writes are atomic.
A small ``<folder hash>-scan.json`` beside it holds the folder's detected size for the same key.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Any

import torch

from ..fileio import atomic_write, atomic_write_json

MAGIC = b"VAECACHE1\n"
VERSION = 1  # bump when decoding changes: old entries then miss
CHUNK_ROWS = 4096


def files_key(paths: list[str], rels: list[str]) -> str:
    """A sha256 over (relative path, size, mtime) of each file (a file that cannot be stat'ed counts as missing)."""
    h = hashlib.sha256(f"v{VERSION}\n".encode())
    for p, r in zip(paths, rels):
        try:
            st = os.stat(p)
            h.update(f"{r}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{r}\0missing\n".encode())
    return h.hexdigest()


def _folder_hash(folder: Path) -> str:
    return hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]


def entry_path(root: Path, folder: Path, rule: dict[str, Any]) -> Path:
    """The cache file of ``folder`` decoded by ``rule`` (size, fit)."""
    rh = hashlib.sha256(json.dumps(rule, sort_keys=True).encode()).hexdigest()[:12]
    return root / f"{_folder_hash(folder)}-{rh}.u8"


def scan_path(root: Path, folder: Path) -> Path:
    """The small JSON holding the folder's detected size."""
    return root / f"{_folder_hash(folder)}-scan.json"


def read_scan(root: Path, folder: Path, key: str) -> dict[str, Any] | None:
    """The stored scan of ``folder`` if its file key is ``key``, else None."""
    try:
        obj = json.loads(scan_path(root, folder).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) and obj.get("key") == key and obj.get("version") == VERSION else None


def write_scan(root: Path, folder: Path, key: str, scan: dict[str, Any]) -> None:
    """Store a scan (best effort: a cache that cannot be written is no error)."""
    try:
        atomic_write_json(scan_path(root, folder), {"version": VERSION, "key": key, **scan})
    except OSError:
        pass


def read(path: Path, key: str, rule: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]] | None:
    """(pixels, header) of a valid entry for ``key`` and ``rule``, else None (missing, stale or damaged)."""
    try:
        fh = open(path, "rb")  # closed by the with below
    except OSError:
        return None
    with fh:
        try:
            if fh.read(len(MAGIC)) != MAGIC:
                return None
            n = int.from_bytes(fh.read(8), "little")
            if not 0 < n < 1 << 30:
                return None
            head = json.loads(fh.read(n).decode("utf-8"))
            if not isinstance(head, dict) or head.get("version") != VERSION or head.get("key") != key or head.get("rule") != rule:
                return None
            shape = head["shape"]
            if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(s, int) and s > 0 for s in shape)):
                return None
            if len(head["paths"]) != shape[0]:
                return None
            expected = shape[0] * shape[1] * shape[2] * shape[3]
            if os.fstat(fh.fileno()).st_size != len(MAGIC) + 8 + n + expected:
                return None
            out = torch.empty(shape, dtype=torch.uint8)
            view = memoryview(out.numpy().data).cast("B")
            crc, pos, step = 0, 0, CHUNK_ROWS * shape[1] * shape[2] * shape[3]
            while pos < expected:
                got = fh.readinto(view[pos : pos + step])
                if not got:
                    return None
                crc = zlib.crc32(view[pos : pos + got], crc)
                pos += got
            if crc != head["crc32"]:
                return None
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None
    return out, head


def write(path: Path, key: str, rule: dict[str, Any], images: torch.Tensor, paths: list[str], skipped: list[dict[str, str]]) -> None:
    """Store ``images`` (uint8, N, C, H, W) atomically (best effort: a full disk is no error)."""
    view = memoryview(images.contiguous().numpy().data).cast("B")
    head = {
        "version": VERSION,
        "key": key,
        "rule": rule,
        "shape": list(images.shape),
        "crc32": zlib.crc32(view),
        "paths": paths,
        "skipped": skipped,
    }
    blob = json.dumps(head).encode("utf-8")

    def put(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            out.write(MAGIC + len(blob).to_bytes(8, "little") + blob)
            out.write(view)

    try:
        atomic_write(path, put)
    except OSError:
        pass
