"""The snapshot of a staged directory as a Merkle tree, as git and Bazel's REAPI do.

Each directory is one :class:`Directory`: its entries sorted by name, each a
regular file (with its content's digest), a symbolic link (with its target) or
a subdirectory (with *that* directory's digest).  A directory's digest is the
hash of its canonical encoding, so an unchanged subtree is one digest: the
worker that has it needs nothing below it, and nothing below it is listed again.

File contents and encoded directories are both *blobs*, named by their SHA-256
digest (hardware-accelerated on current CPUs: faster than BLAKE2 here).

Decoding validates everything a worker or client must not trust: names
(:func:`.paths.check_name`), kinds, modes, digests, sorted unique names and
symlink targets that stay inside the tree (:mod:`.paths`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import msgspec

from .entry import DIGEST_SIZE, DIRECTORY, FILE, KIND_NAMES, KINDS, MODE_MASK, SYMLINK, digest_of, sha256
from .paths import UnsafePath, check_name, check_symlink_target

__all__ = ["DIGEST_SIZE", "DIRECTORY", "FILE", "KIND_NAMES", "KINDS", "MODE_MASK", "SYMLINK", "digest_of"]


class Entry(msgspec.Struct, array_like=True, frozen=True):
    """One name in a directory.  ``digest``: a file's content or a directory's
    encoding; empty for a symlink, whose ``target`` holds the link's bytes."""

    name: bytes
    kind: int
    mode: int
    mtime_ns: int
    size: int = 0
    digest: bytes = b""
    target: bytes = b""


class Directory(msgspec.Struct, array_like=True, frozen=True):
    entries: tuple[Entry, ...] = ()


class BadManifest(ValueError):
    """A manifest (or a part of one) that does not follow the rules above."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Directory)


def new_hasher() -> Any:
    return sha256()


def hexdigest(digest: bytes) -> str:
    return digest.hex()


def encode_directory(directory: Directory) -> bytes:
    """The canonical bytes of a directory: entries sorted by name, every field
    present, integers in their shortest form (msgspec's encoding is deterministic)."""
    return _encoder.encode(directory)


def make_directory(entries: list[Entry]) -> tuple[bytes, bytes]:
    """(digest, encoding) of a directory holding ``entries`` (any order)."""
    data = encode_directory(Directory(tuple(sorted(entries, key=lambda e: e.name))))
    return digest_of(data), data


def decode_directory(data: bytes | memoryview, digest: bytes | None = None) -> Directory:
    """Decode and validate a directory blob; with ``digest``, check that the
    bytes are the ones named (a blob is trusted only for what it hashes to)."""
    if digest is not None and digest_of(bytes(data)) != digest:
        raise BadManifest("a directory's content does not match its digest")
    try:
        directory = _decoder.decode(data)
    except msgspec.DecodeError as e:
        raise BadManifest(f"malformed directory: {e}") from None
    previous: bytes | None = None
    for entry in directory.entries:
        check_entry(entry)
        if previous is not None and entry.name <= previous:
            raise BadManifest("directory entries are not sorted by name, or a name is repeated")
        previous = entry.name
    return directory


def check_entry(entry: Entry) -> None:
    try:
        check_name(entry.name)
    except UnsafePath as e:
        raise BadManifest(str(e)) from None
    if entry.kind not in KINDS:
        raise BadManifest(f"unknown entry kind {entry.kind}")
    if not 0 <= entry.mode <= MODE_MASK:
        raise BadManifest(f"mode {entry.mode:o} out of range")
    if entry.size < 0 or entry.mtime_ns < -(2**62) or entry.mtime_ns > 2**62:
        raise BadManifest("size or mtime out of range")
    if entry.kind == SYMLINK:
        if entry.digest or not entry.target or 0 in entry.target:  # (NUL; as an int: no TypeError first)
            raise BadManifest("a symlink needs a target (and no digest)")
    elif len(entry.digest) != DIGEST_SIZE or entry.target:
        raise BadManifest(f"a {KIND_NAMES[entry.kind]} needs a {DIGEST_SIZE}-byte digest (and no target)")


def walk(
    root: bytes, directories: Mapping[bytes, bytes | Directory], prefix: bytes = b""
) -> Iterator[tuple[bytes, Entry]]:
    """Every (relative path, entry) of the tree under directory ``root``, parents
    before children.  ``directories`` maps digests to directories (decoded, or
    encoded and then validated here); a missing one is :class:`KeyError`."""
    stack = [(prefix, root)]
    while stack:
        path, digest = stack.pop()
        directory = directories[digest]
        if not isinstance(directory, Directory):
            directory = decode_directory(directory, digest)
        for entry in directory.entries:
            child = path + b"/" + entry.name if path else entry.name
            yield child, entry
            if entry.kind == DIRECTORY:
                stack.append((child, entry.digest))


def check_tree(root: bytes, directories: Mapping[bytes, bytes | Directory]) -> dict[bytes, Entry]:
    """Validate a whole tree (every directory decodes and matches its digest, no
    symlink leads out of it) and return it flat: relative path -> entry."""
    flat = dict(walk(root, directories))
    links = {path: entry.target for path, entry in flat.items() if entry.kind == SYMLINK}
    for path, target in links.items():
        try:
            check_symlink_target(path, target, links)
        except UnsafePath as e:
            raise BadManifest(str(e)) from None
    return flat


def missing(
    root: bytes, have: Callable[[bytes], bool], load: Callable[[bytes], bytes | Directory],
    complete: Callable[[bytes], bool] | None = None, skipped: list[bytes] | None = None,
) -> tuple[list[bytes], set[bytes]]:
    """What a worker lacks of the tree ``root``: the missing blobs it can name
    now (files, and directories whose contents it will see once they arrive),
    and every digest it found it needs (to pin).  Called again after the
    missing ones arrived, until nothing is missing.  ``load`` reads a present
    directory blob (validated here, unless it gives it decoded: validated
    already).  ``complete(digest)``: a directory whose whole subtree the worker
    holds and keeps (pinned for a job directory that holds it): not looked
    into, nor listed among the needs; ``skipped`` gets each such directory met
    (for :func:`missing_below`)."""
    return missing_below([root], set(), have, load, complete, skipped)


def missing_below(
    roots: Iterable[bytes], seen: set[bytes], have: Callable[[bytes], bool], load: Callable[[bytes], bytes | Directory],
    complete: Callable[[bytes], bool] | None = None, skipped: list[bytes] | None = None,
) -> tuple[list[bytes], set[bytes]]:
    """:func:`missing` of the subtrees ``roots``, leaving out what is in ``seen`` (looked
    at already).  A walk with a narrower ``complete`` after one that found nothing
    missing goes on from there: ``missing_below(skipped, seen, ..., narrower)`` finds
    what ``missing(root, ..., narrower)`` would, less the ``seen`` of the first walk
    (the digests it found are the first walk's ``seen`` and these)."""
    need: list[bytes] = []
    found: set[bytes] = set()
    stack: list[bytes] = []
    for root in roots:
        if root in seen or root in found:
            continue
        if complete is not None and complete(root):
            if skipped is not None:
                skipped.append(root)
            continue
        found.add(root)
        stack.append(root)
    while stack:
        digest = stack.pop()
        if not have(digest):
            need.append(digest)
            continue
        directory = load(digest)
        if not isinstance(directory, Directory):
            directory = decode_directory(directory, digest)
        for entry in directory.entries:
            if entry.kind == SYMLINK or entry.digest in found or entry.digest in seen:
                continue
            if entry.kind == DIRECTORY:
                if complete is not None and complete(entry.digest):
                    if skipped is not None:
                        skipped.append(entry.digest)
                    continue
                found.add(entry.digest)
                stack.append(entry.digest)
            else:
                found.add(entry.digest)
                if not have(entry.digest):
                    need.append(entry.digest)
    return need, found
