"""Layer and config blobs with their real bytes, by digest, without holding big ones in memory.

A blob is one of three kinds, all read the same way (:meth:`Blob.chunks`, a byte range in
pieces of at most :data:`CHUNK_BYTES`):

- :class:`BytesBlob`: small content held in memory (the configs and layers of ``build_image``);
- :class:`GeneratedBlob`: deterministic content of any size made on the fly from a seed, so a
  1 GiB layer costs no memory and no disk (``build_image(..., layer_bytes=N)``);
- :class:`FileBlob`: bytes uploaded through either API, spilled to the double's temporary
  directory while they arrive.

:class:`BlobStore` keeps each digest's bytes once per double, whoever uploaded them; which
repositories *have* a blob is the repository's business (``repository.layers``, moto's digest ->
size map, see :mod:`~airflow_ecr_retag.testing.store`). A new kind of blob (say, one read from
an OCI layout on disk) only needs ``digest``, ``size`` and ``chunks``.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

#: Blobs are read, written and served in pieces of at most this many bytes.
CHUNK_BYTES = 1 << 20


class Blob(Protocol):
    """What every kind of blob offers."""

    digest: str
    size: int

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes ``start`` to ``end`` (exclusive; the whole rest when None), in pieces."""
        ...


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_all(blob: Blob) -> bytes:
    """A blob's whole content: for small blobs (configs, test layers) only."""
    return b"".join(blob.chunks())


def _bounds(size: int, start: int, end: int | None) -> tuple[int, int]:
    end = size if end is None else min(end, size)
    return max(0, start), max(start, end)


@dataclass(frozen=True)
class BytesBlob:
    """A blob held in memory."""

    data: bytes

    @functools.cached_property
    def digest(self) -> str:  # type: ignore[override]
        return sha256_digest(self.data)

    @property
    def size(self) -> int:  # type: ignore[override]
        return len(self.data)

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        start, end = _bounds(self.size, start, end)
        for offset in range(start, end, CHUNK_BYTES):
            yield self.data[offset : min(end, offset + CHUNK_BYTES)]


@dataclass(frozen=True)
class GeneratedBlob:
    """``prefix``, then ``body_size`` bytes generated from ``seed``, then ``suffix``: any size, no memory.

    The body is made one :data:`CHUNK_BYTES` block at a time: a block derived from the seed once,
    each copy stamped with its block number, so every block differs and any byte range can be
    made without the ones before it (HTTP ``Range`` requests).
    """

    seed: bytes
    body_size: int
    prefix: bytes = b""
    suffix: bytes = b""

    @property
    def size(self) -> int:  # type: ignore[override]
        return len(self.prefix) + self.body_size + len(self.suffix)

    @functools.cached_property
    def digest(self) -> str:  # type: ignore[override]
        return _generated_digest(self)

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        start, end = _bounds(self.size, start, end)
        body_start, body_end = len(self.prefix), len(self.prefix) + self.body_size
        if start < body_start:
            yield self.prefix[start : min(end, body_start)]
        position = max(start, body_start)
        while position < min(end, body_end):
            block, offset = divmod(position - body_start, CHUNK_BYTES)
            piece = self._block(block)[offset : min(CHUNK_BYTES, offset + min(end, body_end) - position)]
            yield piece
            position += len(piece)
        if end > body_end:
            yield self.suffix[max(0, start - body_end) : end - body_end]

    def _block(self, number: int) -> bytes:
        return number.to_bytes(8, "big") + _base_block(self.seed)[8:]


@functools.lru_cache(maxsize=8)
def _base_block(seed: bytes) -> bytes:
    return hashlib.shake_128(seed).digest(CHUNK_BYTES)


@functools.lru_cache(maxsize=64)
def _generated_digest(blob: GeneratedBlob) -> str:
    # One pass over the content, once per distinct blob in the process (seeding the same
    # big image twice costs one hash).
    hasher = hashlib.sha256()
    for piece in blob.chunks():
        hasher.update(piece)
    return "sha256:" + hasher.hexdigest()


@dataclass(frozen=True)
class FileBlob:
    """A blob in a file of the double's temporary directory."""

    path: Path
    digest: str
    size: int

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        start, end = _bounds(self.size, start, end)
        with self.path.open("rb") as handle:
            handle.seek(start)
            while start < end:
                piece = handle.read(min(CHUNK_BYTES, end - start))
                if not piece:
                    return
                start += len(piece)
                yield piece


class BlobStore:
    """Every blob of one double, by digest; uploads spill to a temporary directory it owns.

    Thread-safe on its own: blobs are added from request threads.
    """

    def __init__(self) -> None:
        self._blobs: dict[str, Blob] = {}
        self._lock = threading.Lock()
        self._directory: Path | None = None

    def add(self, blob: Blob) -> Blob:
        """Keep ``blob`` (the first copy of a digest wins: the bytes are the same)."""
        with self._lock:
            return self._blobs.setdefault(blob.digest, blob)

    def get(self, digest: str) -> Blob | None:
        with self._lock:
            return self._blobs.get(digest)

    def spill_path(self, name: str) -> Path:
        """A fresh file path in the double's temporary directory (created on first use)."""
        with self._lock:
            if self._directory is None:
                self._directory = Path(tempfile.mkdtemp(prefix="ecr-double-blobs-"))
            return self._directory / name

    def close(self) -> None:
        """Forget every blob and delete the temporary directory."""
        with self._lock:
            self._blobs.clear()
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
