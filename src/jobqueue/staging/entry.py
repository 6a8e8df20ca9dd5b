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
    return sha256(data)

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


def digest_of(data: bytes) -> bytes:
    return sha256(data).digest()


def encode_entries(entries: list[EntryTuple]) -> bytes:
    """The canonical encoding of a directory holding ``entries`` (sorted by name here)."""
    out = bytearray()
    _array(out, 1)  # Directory(entries): one field
    _array(out, len(entries))
    for entry in sorted(entries):
        _array(out, 7)
        for value in entry:
            if type(value) is int:
                _int(out, value)
            else:
                _bin(out, value)  # type: ignore[arg-type]
    return bytes(out)


def make_directory(entries: list[EntryTuple]) -> tuple[bytes, bytes]:
    """(digest, encoding) of a directory holding ``entries``."""
    data = encode_entries(entries)
    return digest_of(data), data


def _array(out: bytearray, n: int) -> None:
    if n < 16:
        out.append(0x90 | n)
    elif n < 1 << 16:
        out += b"\xdc" + n.to_bytes(2, "big")
    else:
        out += b"\xdd" + n.to_bytes(4, "big")


def _bin(out: bytearray, data: bytes) -> None:
    n = len(data)
    if n < 1 << 8:
        out += b"\xc4" + n.to_bytes(1, "big")
    elif n < 1 << 16:
        out += b"\xc5" + n.to_bytes(2, "big")
    else:
        out += b"\xc6" + n.to_bytes(4, "big")
    out += data


def _int(out: bytearray, n: int) -> None:
    """MessagePack's shortest form of an int, as msgspec writes it."""
    if 0 <= n < 128:
        out.append(n)
    elif -32 <= n < 0:
        out.append(n & 0xFF)
    elif n >= 0:
        for code, size in ((0xCC, 1), (0xCD, 2), (0xCE, 4), (0xCF, 8)):
            if n < 1 << (8 * size):
                out.append(code)
                out += n.to_bytes(size, "big")
                return
        raise OverflowError(n)
    else:
        for code, size in ((0xD0, 1), (0xD1, 2), (0xD2, 4), (0xD3, 8)):
            if n >= -(1 << (8 * size - 1)):
                out.append(code)
                out += n.to_bytes(size, "big", signed=True)
                return
        raise OverflowError(n)
