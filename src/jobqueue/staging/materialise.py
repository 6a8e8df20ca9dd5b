"""The worker's side of the files: a job's private directory from the cache,
and the job's final tree afterwards (shells).

Everything is created relative to directory file descriptors opened with
``O_NOFOLLOW`` in a fresh, empty directory, and names come from a validated
manifest (:func:`.manifest.check_tree`), so nothing can land outside the job's
directory.  Files are copies of the cache's blobs (a reflink where the file
system can, else a kernel copy): a job writing into one in place changes its
copy only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Mapping

from .blobstore import BlobStore
from .manifest import DIRECTORY, FILE, MODE_MASK, SYMLINK, Directory, Entry, decode_directory

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
#: Whether to try a reflink: off after the first refusal (the cache's file system cannot).
_reflink = [True]
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def materialise(store: BlobStore, root: bytes, workdir: str) -> None:
    """Fill the empty directory ``workdir`` with the tree ``root`` (all its
    blobs are in ``store`` and pinned)."""
    fd = os.open(workdir, _DIR_FLAGS)
    try:
        _fill(store, decode_directory(_read(store, root), root), fd)
    finally:
        os.close(fd)


def _read(store: BlobStore, digest: bytes) -> bytes:
    """A directory blob, straight from its file: this runs off the worker's loop,
    so it leaves the cache's bookkeeping alone (the tree's blobs are pinned)."""
    with open(store.path(digest), "rb") as f:
        return f.read()


def _fill(store: BlobStore, directory: Directory, dir_fd: int) -> None:
    for entry in directory.entries:
        if entry.kind == FILE:
            _copy_blob(store, entry, dir_fd)
        elif entry.kind == DIRECTORY:
            os.mkdir(entry.name, 0o700, dir_fd=dir_fd)
            child = os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                _fill(store, decode_directory(_read(store, entry.digest), entry.digest), child)
                os.fchmod(child, entry.mode & MODE_MASK)  # last: a read-only directory is filled first
            finally:
                os.close(child)
        elif entry.kind == SYMLINK:
            os.symlink(entry.target, entry.name, dir_fd=dir_fd)
            os.utime(entry.name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)


def _copy_blob(store: BlobStore, entry: Entry, dir_fd: int) -> None:
    out = os.open(entry.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                  dir_fd=dir_fd)
    try:
        if entry.size:
            src = os.open(store.path(entry.digest), os.O_RDONLY | os.O_CLOEXEC)
            try:
                copy_fd(src, out, entry.size)
            finally:
                os.close(src)
        os.fchmod(out, entry.mode & MODE_MASK)
        os.utime(out, ns=(entry.mtime_ns, entry.mtime_ns))
    finally:
        os.close(out)


def copy_fd(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes: a reflink (shares blocks copy-on-write) where the
    file system can, else copy_file_range (in the kernel), else read/write."""
    if _reflink[0]:
        try:
            fcntl.ioctl(dst, FICLONE, src)
            return
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.EXDEV, errno.ENOSYS):
                _reflink[0] = False
    copied = 0
    try:
        while copied < size:
            n = os.copy_file_range(src, dst, size - copied)
            if n == 0:
                break
            copied += n
    except OSError:
        os.lseek(src, copied, os.SEEK_SET)
        os.lseek(dst, copied, os.SEEK_SET)
        while data := os.read(src, 1 << 20):
            os.write(dst, data)
            copied += len(data)
    if copied != size:
        raise OSError(f"a cached blob is {copied} bytes, expected {size}")


def final_tree(workdir: str) -> dict[bytes, Entry]:
    """The job's directory as it is now: relative path -> entry (without
    digests; sockets, FIFOs and devices left out).  Never follows a symlink."""
    tree: dict[bytes, Entry] = {}
    stack = [(os.fsencode(workdir), b"")]
    while stack:
        path, rel = stack.pop()
        try:
            listing = list(os.scandir(path))
        except OSError:
            continue  # a directory the job made unreadable: nothing of it comes back
        for item in listing:
            child = rel + b"/" + item.name if rel else item.name
            try:
                st = item.stat(follow_symlinks=False)
            except OSError:
                continue
            mode = st.st_mode
            if stat.S_ISREG(mode):
                tree[child] = Entry(item.name, FILE, stat.S_IMODE(mode), st.st_mtime_ns, st.st_size)
            elif stat.S_ISDIR(mode):
                tree[child] = Entry(item.name, DIRECTORY, stat.S_IMODE(mode), 0)
                stack.append((item.path, child))
            elif stat.S_ISLNK(mode):
                target = os.readlink(item.path)
                tree[child] = Entry(item.name, SYMLINK, 0o777, st.st_mtime_ns, len(target), b"", target)
    return tree


def open_result(workdir: str, rel: bytes) -> int:
    """A file of the job's directory for reading, reached without following any
    symlink (the job may have planted one to make the worker read elsewhere)."""
    fd = os.open(workdir, _DIR_FLAGS)
    try:
        names = rel.split(b"/")
        for name in names[:-1]:
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        return os.open(names[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)


def snapshot_tree(root: bytes, directories: Mapping[bytes, bytes | Directory]) -> dict[bytes, Entry]:
    from .manifest import walk

    return dict(walk(root, directories))
