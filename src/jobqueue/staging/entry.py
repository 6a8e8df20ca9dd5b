"""What both ends share about a manifest entry, kept import-light for jq: the
kinds, the canonical encoding of a directory (a MessagePack array of entry
arrays, byte-identical to :func:`.manifest.encode_directory`'s msgspec
encoding: ``tests/unit/test_staging_manifest.py`` checks it) and SHA-256.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def sha256(data: bytes = b"") -> Any:  # noqa: F811 (replaced by the real one on first use)
    """A SHA-256 hasher: OpenSSL's (SHA-NI where the CPU has it), without hashlib's
    import cost, and loaded only when something is hashed (a warm stage hashes nothing)."""
    global sha256
    try:
        from _hashlib import openssl_sha256 as sha256
    except ImportError:  # pragma: no cover - a Python without OpenSSL
        from hashlib import sha256
    _loaded.append(True)
    return sha256(data)


_loaded: list[bool] = []  # OpenSSL's hasher is: hash with it from then on

FILE = 0
SYMLINK = 1
DIRECTORY = 2
KINDS = (FILE, SYMLINK, DIRECTORY)
KIND_NAMES = {FILE: "file", SYMLINK: "symlink", DIRECTORY: "directory"}
#: Raw digest length (SHA-256).
DIGEST_SIZE = 32
#: Permission bits kept (setuid/setgid/sticky included); the file type is the kind.
MODE_MASK = 0o7777

#: An entry as the client builds it: (name, kind, mode, mtime_ns, size, digest, target).
EntryTuple = tuple[bytes, int, int, int, int, bytes, bytes]


#: Bytes a process hashes with Python's own SHA-256 before it loads OpenSSL's: loading
#: ``_hashlib`` costs 3-10 ms here, which pays off only past about a megabyte (OpenSSL
#: hashes 800 MB/s here, the built-in module 140).  A change of a few files costs jq no
#: OpenSSL; a cold stage of a large tree loads it at once.
SMALL_HASHING = 1 << 20
_small_hashed = [0]


def hasher_for(size: int) -> Any:
    """A SHA-256 hasher for ``size`` more bytes (the same digests either way)."""
    _small_hashed[0] += size
    if _loaded or _small_hashed[0] > SMALL_HASHING:
        return sha256()  # (OpenSSL's, loaded now if it is not yet)
    from _sha256 import sha256 as small

    return small()


def digest_of(data: bytes) -> bytes:
    hasher = hasher_for(len(data))
    hasher.update(data)
    return hasher.digest()


def encode_entries(entries: list[EntryTuple]) -> bytes:
    """The canonical encoding of a directory holding ``entries`` (sorted by name here).
    Built from pieces joined once (2.5 times faster than appending field by field: jq
    encodes every directory that changed, 100 entries in about 0.2 ms)."""
    parts = [b"\x91", _array(len(entries))]  # Directory(entries): one field
    for name, kind, mode, mtime, size, digest, target in sorted(entries):
        parts += (b"\x97", _bin(name), _int(kind), _int(mode), _int(mtime), _int(size), _bin(digest), _bin(target))
    return b"".join(parts)


def make_directory(entries: list[EntryTuple]) -> tuple[bytes, bytes]:
    """(digest, encoding) of a directory holding ``entries``."""
    data = encode_entries(entries)
    return digest_of(data), data


def _array(n: int) -> bytes:
    if n < 16:
        return _BYTES[0x90 | n]
    return b"\xdc" + n.to_bytes(2, "big") if n < 1 << 16 else b"\xdd" + n.to_bytes(4, "big")


def _bin(data: bytes) -> bytes:
    n = len(data)
    if n < 1 << 8:
        return b"\xc4" + _BYTES[n] + data
    return (b"\xc5" + n.to_bytes(2, "big") if n < 1 << 16 else b"\xc6" + n.to_bytes(4, "big")) + data


def _int(n: int) -> bytes:
    """MessagePack's shortest form of an int, as msgspec writes it."""
    if 0 <= n < 128:
        return _BYTES[n]
    if n >= 0:
        if n < 1 << 8:
            return b"\xcc" + _BYTES[n]
        if n < 1 << 16:
            return b"\xcd" + n.to_bytes(2, "big")
        if n < 1 << 32:
            return b"\xce" + n.to_bytes(4, "big")
        return b"\xcf" + n.to_bytes(8, "big")  # (OverflowError past 64 bits, as msgspec)
    if n >= -32:
        return _BYTES[n & 0xFF]
    for code, size in ((b"\xd0", 1), (b"\xd1", 2), (b"\xd2", 4), (b"\xd3", 8)):
        if n >= -(1 << (8 * size - 1)):
            return code + n.to_bytes(size, "big", signed=True)
    raise OverflowError(n)


_BYTES = [bytes((i,)) for i in range(256)]
