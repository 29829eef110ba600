"""Blob uploads in progress, shared by the ECR layer calls and the OCI ``/v2/`` uploads.

An upload's bytes go to a spill file of the double's :class:`~airflow_ecr_retag.testing.blob_store.BlobStore`
as they arrive, hashed on the way, so nothing is held in memory and finishing an upload needs no
second pass. A blob becomes visible only when its upload finishes with a matching digest; a part
or chunk cut short (the client went away) is rolled back, and a cancelled or abandoned upload
leaves nothing behind but its spill file, removed with the double.

An upload belongs to one registry and repository: :class:`UploadKey`.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_ecr_retag.testing.blob_store import CHUNK_BYTES, Blob, BlobStore, FileBlob


@dataclass(frozen=True)
class UploadKey:
    """Whose upload it is: an account's registry in a Region, and a repository of it."""

    account: str
    region: str
    repository: str


class IncompleteChunk(Exception):
    """A part or chunk ended before its announced length: it was not kept."""


@dataclass
class UploadSession:
    """One upload: the bytes received so far (in a spill file) and their running hash."""

    upload_id: str
    key: UploadKey
    path: Path
    size: int = 0
    part_sizes: list[int] = field(default_factory=list)
    _hasher: Any = field(default_factory=hashlib.sha256)

    def append(self, pieces: Iterable[bytes], expected: int | None = None) -> int:
        """Add one part: ``pieces`` in order, ``expected`` bytes in all when known. A part that
        falls short of ``expected`` is undone (:class:`IncompleteChunk`). Returns its length."""
        hasher, received = self._hasher.copy(), 0
        with self.path.open("ab") as handle:
            try:
                for piece in pieces:
                    handle.write(piece)
                    hasher.update(piece)
                    received += len(piece)
                if expected is not None and received != expected:
                    raise IncompleteChunk(f"received {received} of {expected} bytes")
            except BaseException:
                # Whatever cut the part short (a client gone, a bad length), none of it stays.
                handle.truncate(self.size)
                raise
        self._hasher, self.size = hasher, self.size + received
        self.part_sizes.append(received)
        return received

    @property
    def last_byte(self) -> int:
        """The offset of the last byte received (-1 before any), as ECR reports it."""
        return self.size - 1

    @property
    def digest(self) -> str:
        return "sha256:" + self._hasher.hexdigest()

    def as_blob(self) -> FileBlob:
        return FileBlob(self.path, self.digest, self.size)


class UploadSessions:
    """The uploads in progress of one double, by upload id."""

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs
        self._sessions: dict[str, UploadSession] = {}
        self._lock = threading.Lock()

    def start(self, key: UploadKey) -> UploadSession:
        upload_id = str(uuid.uuid4())
        session = UploadSession(upload_id, key, self._blobs.spill_path(f"upload-{upload_id}"))
        session.path.touch()
        with self._lock:
            self._sessions[upload_id] = session
        return session

    def find(self, upload_id: str, key: UploadKey) -> UploadSession | None:
        """The upload with this id, if it belongs to ``key``'s repository."""
        with self._lock:
            session = self._sessions.get(upload_id)
        return session if session is not None and session.key == key else None

    def finish(self, session: UploadSession) -> Blob:
        """End the upload: its bytes become a blob of the store (not yet of any repository)."""
        self.drop(session, keep_file=True)
        blob = session.as_blob()
        kept = self._blobs.add(blob)
        if kept is not blob:
            session.path.unlink(missing_ok=True)  # the same bytes were already stored
        return kept

    def drop(self, session: UploadSession, *, keep_file: bool = False) -> None:
        with self._lock:
            self._sessions.pop(session.upload_id, None)
        if not keep_file:
            session.path.unlink(missing_ok=True)


def read_stream(stream: Any, length: int | None) -> Iterable[bytes]:
    """A request body in pieces: ``length`` bytes, or to the end when the length is unknown."""
    remaining = length
    while remaining is None or remaining > 0:
        piece = stream.read(CHUNK_BYTES if remaining is None else min(CHUNK_BYTES, remaining))
        if not piece:
            return
        if remaining is not None:
            remaining -= len(piece)
        yield piece
