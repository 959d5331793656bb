"""Image files: listing a folder, decoding one image, loading a whole folder (in parallel, cached)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from . import cache
from . import decode as dec
from .dataset import ImageData, convert_channels

IMAGE_EXTENSIONS = dec.IMAGE_EXTENSIONS
IMAGE_FORMATS = dec.IMAGE_FORMATS
MAX_IMAGE_PIXELS = dec.MAX_IMAGE_PIXELS
FITS = dec.FITS
CHUNK = 256  # files per worker task
Progress = Callable[[int, int], None]


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files under ``folder``, recursively, sorted; symlinked folders followed once (loops skipped)."""
    folder = Path(folder)
    return [folder / r for r in image_names(folder)]


def image_names(folder: str | os.PathLike[str]) -> list[str]:
    """The image files of :func:`list_images` as paths relative to ``folder`` (plain strings: fast for many files)."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"folder not found: {folder}")
    if not folder.is_dir():
        raise DataError(f"not a folder: {folder}")
    top = str(folder)
    seen: set[str] = set()
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True, onerror=None):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        rel = os.path.relpath(dirpath, top)
        prefix = "" if rel == "." else rel + os.sep
        found.extend(prefix + fn for fn in filenames if fn.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(found, key=lambda r: r.split(os.sep))  # the order of sorted Paths (by parts)


def load_image(
    source: str | os.PathLike[str] | bytes, channels: int | None = None, size: int | None = None, fit: str = "crop"
) -> torch.Tensor:
    """Decode one image (a path or the file's bytes) to uint8 (C, H, W): 16-bit, RGBA, palette, CMYK
    are converted and camera JPEGs turned upright by their EXIF orientation.

    ``channels`` 1 gives grayscale, 3 RGB, None keeps gray images gray and the rest RGB.
    ``size`` makes the image square by ``fit`` (crop | pad | stretch, see
    :func:`vaecli.data.decode.fit_square`) and resizes. Raises :class:`DataError` on anything
    that is not a decodable image: a missing or non-regular file (a FIFO would block), a format
    outside :data:`IMAGE_FORMATS`, more than :data:`MAX_IMAGE_PIXELS` pixels (checked from the
    header, before decoding), or whatever the decoder raises on bad bytes.
    """
    try:
        img = dec.decode(source, channels, size, fit)
    except dec.DecodeError as exc:
        raise DataError(str(exc)) from None
    c = 1 if img.mode == "L" else 3
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return t.reshape(img.size[1], img.size[0], c).permute(2, 0, 1).contiguous()


# ----------------------------------------------------------------------------- folders


@dataclass
class FolderLoad:
    """Options of a folder load that are not part of the data's identity (nothing here is stored)."""

    progress: Progress | None = None  # called with (files done, files in all) while decoding
    notice: Callable[[str], None] | None = None  # one line per notice: size detected, cap, files skipped
    round_size: Callable[[int], int] | None = None  # a detected size -> a size the architecture accepts
    use_cache: bool = True
    workers: int | None = None  # decode workers (None: the usable cores; 1: serial)
    pool: str = "process"  # process | thread
    notices: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        self.notices.append(line)
        if self.notice is not None:
            self.notice(line)


@dataclass
class FolderResult:
    """A folder in memory (file order) and how it was read."""

    data: ImageData
    size: int
    skipped: list[dict[str, str]]
    from_cache: bool


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _run_chunks(
    fn: Callable[..., list[Any]], chunks: list[list[str]], args: tuple[Any, ...], opts: FolderLoad, total: int, done0: int = 0
) -> Any:
    """``fn(chunk, *args)`` for each chunk, in order (a generator), on a pool when more than one worker."""
    workers = min(opts.workers or usable_cores(), len(chunks))
    with contextlib.ExitStack() as stack:
        if workers <= 1:
            results: Any = (fn(ch, *args) for ch in chunks)
        else:
            results = stack.enter_context(_pool(workers, opts.pool)).map(fn, chunks, *[[a] * len(chunks) for a in args])
        done = done0
        for ch, res in zip(chunks, results):
            done += len(ch)
            if opts.progress:
                opts.progress(done, total)
            yield res


def _pool(workers: int, kind: str) -> Any:
    """A thread pool or a process pool (fork on Linux, spawn elsewhere) of ``workers``."""
    if kind == "thread":
        from concurrent.futures import ThreadPoolExecutor

        return ThreadPoolExecutor(workers)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=mp.get_context("fork" if sys.platform.startswith("linux") else "spawn"))


def _chunks(items: Sequence[str]) -> list[list[str]]:
    return [list(items[i : i + CHUNK]) for i in range(0, len(items), CHUNK)]


def _reason(message: str, rel: str) -> str:
    prefix = f"{rel}: "
    return message.removeprefix(prefix)


def detect_size(native: int, max_size: int, opts: FolderLoad, folder: Path) -> int:
    """The size a folder run uses: the images' own, capped at ``max_size``, rounded to what the arch accepts."""
    size = min(native, max_size)
    if opts.round_size is not None:
        size = opts.round_size(size)
    line = f"images in {folder}: {native} px (the most common shorter side); using {size} px"
    if native > max_size:
        line += f" (capped at {max_size}: --max-image-size raises the cap)"
    elif size != native:
        line += " (rounded down to a size the architecture accepts)"
    opts.say(line)
    return size


def load_folder(
    folder: str | os.PathLike[str],
    size: int | None,
    fit: str = "crop",
    max_size: int = 128,
    opts: FolderLoad | None = None,
) -> FolderResult:
    """Every decodable image under ``folder`` as one uint8 tensor (N, C, H, W), in file order.

    ``size`` None: the images' own size (the most common shorter side, from the headers), capped at
    ``max_size`` and passed through ``opts.round_size``. Channels: 1 when every image is gray, else
    3. Files that cannot be used are skipped and listed (``skipped``: relative path and reason).
    Decoded pixels are cached by the file list (paths, sizes, mtimes) and the rule (size, fit).
    """
    from ..paths import cache_dir

    opts = opts or FolderLoad()
    folder = Path(folder)
    rels = image_names(folder)
    if not rels:
        raise DataError(f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) found in {folder}")
    paths = [os.path.join(str(folder), r) for r in rels]
    key = cache.files_key(paths, rels)
    root = cache_dir()
    scan = cache.read_scan(root, folder, key) if opts.use_cache else None
    heads = None
    if scan is None or (size is None and not isinstance(scan.get("native"), int)):
        heads = [h for res in _run_chunks(dec.headers, _chunks(paths), (), _quiet(opts), len(paths)) for h in res]
        shorts = Counter(min(h[0], h[1]) for h in heads if isinstance(h, tuple))
        native = max(shorts.items(), key=lambda kv: (kv[1], kv[0]))[0] if shorts else None
        scan = {"native": native, "gray": all(h[2] for h in heads if isinstance(h, tuple))}
        if opts.use_cache:
            cache.write_scan(root, folder, key, scan)
    if size is None:
        if not isinstance(scan.get("native"), int):
            raise DataError(f"no decodable images in {folder} ({len(paths)} files, none readable)")
        size = detect_size(scan["native"], max_size, opts, folder)
    rule = {"size": size, "fit": fit}
    entry = cache.entry_path(root, folder, rule)
    if opts.use_cache:
        hit = cache.read(entry, key, rule)
        if hit is not None:
            images, head = hit
            return FolderResult(ImageData(images=images, paths=head["paths"]), size, head["skipped"], True)
    images, kept, skipped = _decode_all(paths, rels, size, fit, 1 if scan.get("gray") else 3, opts)
    if not kept:
        first = f": {skipped[0]['path']} ({skipped[0]['reason']})" if skipped else ""
        raise DataError(f"no decodable images in {folder} ({len(paths)} files{first})")
    if opts.use_cache:
        cache.write(entry, key, rule, images, kept, skipped)
    return FolderResult(ImageData(images=images, paths=kept), size, skipped, False)


def _quiet(opts: FolderLoad) -> FolderLoad:
    return FolderLoad(workers=opts.workers, pool=opts.pool)


def _decode_all(
    paths: list[str], rels: list[str], size: int, fit: str, channels: int, opts: FolderLoad
) -> tuple[torch.Tensor, list[str], list[dict[str, str]]]:
    """Decode into one preallocated tensor; a 3-channel tensor of all-gray images becomes 1-channel."""
    out = torch.empty((len(paths), channels, size, size), dtype=torch.uint8)
    hwc = out.permute(0, 2, 3, 1)  # a view: rows are filled in the decoder's (H, W, C) order
    plane = size * size
    kept: list[str] = []
    skipped: list[dict[str, str]] = []
    n = 0
    chunks = _chunks(paths)
    names = _chunks(rels)
    for paths_chunk, names_chunk, res in zip(chunks, names, _run_chunks(dec.decode_many, chunks, (size, fit, None), opts, len(paths))):
        if all(isinstance(px, bytes) and len(px) == plane * channels for px in res):  # the common case: one copy per chunk
            k = len(res)
            hwc[n : n + k].copy_(torch.frombuffer(bytearray(b"".join(res)), dtype=torch.uint8).view(k, size, size, channels))
            kept.extend(names_chunk)
            n += k
            continue
        for path, rel, px in zip(paths_chunk, names_chunk, res):
            if isinstance(px, str):
                skipped.append({"path": rel, "reason": _reason(px, path)})
                continue
            t = torch.frombuffer(bytearray(px), dtype=torch.uint8)
            c = len(px) // plane
            t = t.view(size, size, c)
            if c != channels:
                t = convert_channels(t.permute(2, 0, 1), channels).permute(1, 2, 0)
            hwc[n].copy_(t)
            kept.append(rel)
            n += 1
    out = out[:n]
    if channels == 3 and _all_gray(out):
        out = out[:, :1].contiguous()
    return out, kept, skipped


def _all_gray(images: torch.Tensor) -> bool:
    for i in range(0, images.shape[0], 4096):
        ch = images[i : i + 4096]
        if not (bool((ch[:, 0] == ch[:, 1]).all()) and bool((ch[:, 1] == ch[:, 2]).all())):
            return False
    return True
