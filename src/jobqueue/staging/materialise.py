"""The worker's side of the files: a job's directory built, changed and looked at (shells of :mod:`.dirplan`).

Everything is done relative to directory file descriptors opened with
``O_NOFOLLOW`` (``O_PATH``: a directory need not be readable to work in it),
names come from validated manifests or from the directory's own listing, and a
file is never written through a symlink, so nothing can land outside the job's
directory.  Files are copies of the cache's blobs (a reflink where the file
system can, else a kernel copy): a job writing into one in place changes its
copy only.  A file whose content changes (:func:`.dirplan.transform`,
:func:`.dirplan.restore`) is written again in place when it is a plain file
with no other link (no process holds the directory then: :mod:`.holders`),
else replaced by a new file renamed into place.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
from collections.abc import Iterable, Mapping

from .blobstore import BlobStore
from .dirplan import (
    MakeDir,
    MakeLink,
    Op,
    Plan,
    Remove,
    Seen,
    SetAttrs,
    SetMode,
    TreeState,
    Unlock,
    WriteFile,
    kind_of,
    parent_of,
    transform,
)
from .manifest import DIRECTORY, FILE, MODE_MASK, SYMLINK, Directory, Entry, decode_directory

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
#: Whether to try a reflink: off after the first refusal (the cache's file system cannot).
_reflink = [True]
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FS_ENCODING = sys.getfilesystemencoding()
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def loader(store: BlobStore) -> StoreDirectories:
    return StoreDirectories(store)


class StoreDirectories:
    """Directory blobs read from the store's files and validated once (a bounded cache:
    a blob is named by its digest, so what was valid stays so).  Safe off the loop: it
    leaves the cache's bookkeeping alone (the trees being worked on are pinned)."""

    #: Directories kept decoded (a few megabytes at most).
    LIMIT = 1024

    def __init__(self, store: BlobStore) -> None:
        self.store = store
        self.cache: dict[bytes, Directory] = {}

    def __call__(self, digest: bytes) -> Directory:
        directory = self.cache.get(digest)
        if directory is None:
            data = self.store.unwritten.get(digest)  # (checked against its digest as it came)
            if data is not None:
                directory = decode_directory(data)
            else:
                with open(self.store.path(digest), "rb") as f:
                    directory = decode_directory(f.read(), digest)
            if len(self.cache) >= self.LIMIT:
                self.cache.pop(next(iter(self.cache)), None)  # the oldest (approximately: threads may race)
            self.cache[digest] = directory
        return directory

    def get(self, digest: bytes) -> Directory | None:
        """The directory if the cache holds it (for :func:`.dirplan.choose`)."""
        try:
            return self(digest)
        except (OSError, ValueError, RuntimeError):
            return None


def materialise(store: BlobStore, root: bytes, workdir: str) -> None:
    """Fill the empty directory ``workdir`` with the tree ``root`` (all its
    blobs are in ``store`` and pinned)."""
    apply(store, workdir, transform(TreeState(), root, loader(store)))


# --- applying a plan ---------------------------------------------------------------------------------------


class _Dirs:
    """Descriptors of the directories on the way to the one worked in (operations
    come in path order, mostly: the way is opened once for many)."""

    def __init__(self, root_fd: int) -> None:
        self.stack: list[tuple[bytes, int]] = [(b"", root_fd)]

    def fd(self, directory: bytes) -> int:
        stack = self.stack
        while True:
            top = stack[-1][0]
            if top == directory:
                return stack[-1][1]
            if not top or directory.startswith(top + b"/"):
                break
            os.close(stack.pop()[1])
        rest = directory[len(top) + 1:] if top else directory
        for name in rest.split(b"/"):
            fd = os.open(name, _PATH_FLAGS, dir_fd=stack[-1][1])
            stack.append((stack[-1][0] + b"/" + name if len(stack) > 1 else name, fd))
        return stack[-1][1]

    def drop(self, path: bytes) -> None:
        """``path`` is removed or replaced: forget descriptors at or below it."""
        while len(self.stack) > 1 and (self.stack[-1][0] == path or self.stack[-1][0].startswith(path + b"/")):
            os.close(self.stack.pop()[1])

    def close(self) -> None:
        while len(self.stack) > 1:
            os.close(self.stack.pop()[1])


def apply(store: BlobStore, workdir: str, plan: Plan) -> dict[bytes, Seen]:
    """Carry out ``plan`` in ``workdir``; returns the stat identity of every file and
    symlink it wrote.  Any error leaves the directory in an unknown state: the
    caller discards it."""
    root_fd = os.open(workdir, _DIR_FLAGS)
    dirs = _Dirs(root_fd)
    written: dict[bytes, Seen] = {}
    try:
        for op in plan.ops:
            _apply(store, dirs, op, written)
    finally:
        dirs.close()
        os.close(root_fd)
    return written


def _apply(store: BlobStore, dirs: _Dirs, op: Op, written: dict[bytes, Seen]) -> None:
    path = op.path
    parent, _, name = path.rpartition(b"/")
    if not path:  # the job's directory itself
        assert isinstance(op, (SetMode, Unlock))
        os.chmod(dirs.stack[0][1], 0o700)
        return
    fd = dirs.fd(parent)
    if isinstance(op, WriteFile):
        entry = op.entry
        if op.replace:
            dirs.drop(path)
            temp = b".jq-restore-" + os.urandom(6).hex().encode()
            if isinstance(op, MakeLink):
                written[path] = _make_link(fd, temp, entry, name)
            else:
                seen = _rewrite_file(store, fd, name, entry)
                written[path] = seen if seen is not None else _write_file(store, fd, temp, entry, name)
        elif isinstance(op, MakeLink):
            written[path] = _make_link(fd, name, entry, None)
        else:
            written[path] = _write_file(store, fd, name, entry, None)
    elif isinstance(op, SetAttrs):
        written[path] = _set_attrs(store, fd, name, op.entry)
    elif isinstance(op, MakeDir):
        os.mkdir(name, 0o700, dir_fd=fd)
    elif isinstance(op, (SetMode, Unlock)):
        dirs.drop(path)
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, f"{os.fsdecode(path)} is not a directory")
        os.chmod(name, 0o700 if isinstance(op, Unlock) else op.mode & MODE_MASK, dir_fd=fd)
    elif isinstance(op, Remove):
        dirs.drop(path)
        remove_at(fd, name)
    else:  # pragma: no cover - every op is handled above
        raise TypeError(op)


def _copy_blob(store: BlobStore, entry: Entry, out: int) -> None:
    """The file's content, from the cache, into ``out``."""
    data = store.unwritten.get(entry.digest)
    if data is not None:  # pushed with the job: its file in the cache comes after the job started
        view = memoryview(data)
        while view:
            view = view[os.write(out, view):]
    elif entry.size:
        src = os.open(store.path(entry.digest), os.O_RDONLY | os.O_CLOEXEC)
        try:
            copy_fd(src, out, entry.size)
        finally:
            os.close(src)


def _write_file(store: BlobStore, dir_fd: int, name: bytes, entry: Entry, rename_to: bytes | None) -> Seen:
    out = os.open(name, _NEW_FILE, 0o600, dir_fd=dir_fd)
    try:
        _copy_blob(store, entry, out)
        os.fchmod(out, entry.mode & MODE_MASK)
        os.utime(out, ns=(entry.mtime_ns, entry.mtime_ns))
        if rename_to is not None:
            _rename_over(dir_fd, name, rename_to)
        return _seen(os.fstat(out), b"")  # after the rename: it moves the ctime
    finally:
        os.close(out)


def _rewrite_file(store: BlobStore, dir_fd: int, name: bytes, entry: Entry) -> Seen | None:
    """Write the blob into the existing file ``name`` (far cheaper than a new file on
    most file systems); None when that is not safe: it is not a plain file with one
    link (a hard link elsewhere would change too), or cannot be opened for writing.
    No process holds the directory meanwhile (:mod:`.holders`)."""
    try:
        out = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(out)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            return None
        _copy_blob(store, entry, out)
        if st.st_size != entry.size:
            os.ftruncate(out, entry.size)
        os.fchmod(out, entry.mode & MODE_MASK)
        os.utime(out, ns=(entry.mtime_ns, entry.mtime_ns))
        return _seen(os.fstat(out), b"")
    finally:
        os.close(out)


def _rename_over(dir_fd: int, name: bytes, target: bytes) -> None:
    """Move the new ``name`` over ``target`` (atomically); on failure it is removed."""
    try:
        os.rename(name, target, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        os.unlink(name, dir_fd=dir_fd)
        raise


def _make_link(dir_fd: int, name: bytes, entry: Entry, rename_to: bytes | None) -> Seen:
    os.symlink(entry.target, name, dir_fd=dir_fd)
    os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
    if rename_to is not None:
        _rename_over(dir_fd, name, rename_to)
        name = rename_to
    return _seen(os.stat(name, dir_fd=dir_fd, follow_symlinks=False), entry.target)


def _set_attrs(store: BlobStore, dir_fd: int, name: bytes, entry: Entry) -> Seen:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except PermissionError:  # a file its owner cannot read: write it anew
        temp = b".jq-restore-" + os.urandom(6).hex().encode()
        return _write_file(store, dir_fd, temp, entry, name)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        os.fchmod(fd, entry.mode & MODE_MASK)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        return _seen(os.fstat(fd), b"")
    finally:
        os.close(fd)


def _seen(st: os.stat_result, target: bytes) -> Seen:
    return (st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, target)


def remove_at(dir_fd: int, name: bytes) -> None:
    """Remove ``name`` in the directory ``dir_fd``, a whole tree if it is a directory
    (made usable as it goes: the job may have left it read-only); never follows a symlink."""
    try:
        os.unlink(name, dir_fd=dir_fd)
        return
    except IsADirectoryError:
        pass
    except PermissionError:  # Linux says EPERM for unlink(2) of a directory too
        if not stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise
    os.chmod(name, 0o700, dir_fd=dir_fd)
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        for child in os.listdir(fd):
            remove_at(fd, os.fsencode(child))
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


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


# --- looking at a job's directory --------------------------------------------------------------------------------


def scan(workdir: str) -> tuple[dict[bytes, Seen], bool]:
    """The job's directory as it is now: relative path -> :data:`.dirplan.Seen` of
    everything in it (sockets, FIFOs and devices too), and whether all of it could
    be read (a directory the job left unreadable is left out, and says False).
    Never follows a symlink."""
    listing: dict[bytes, Seen] = {}
    root_fd = os.open(workdir, _DIR_FLAGS)
    return listing, _walk(root_fd, b"", listing)


def _walk(fd: int, rel: bytes, listing: dict[bytes, Seen]) -> bool:
    """Add everything below the open directory ``fd`` (at ``rel``) to ``listing``;
    closes ``fd``; False if a part could not be read."""
    complete = True
    stack: list[tuple[int, bytes]] = [(fd, rel)]
    try:
        while stack:
            fd, rel = stack.pop()
            prefix = rel + b"/" if rel else b""
            try:
                items = list(os.scandir(fd))
            except OSError:
                complete = False  # unreadable
                items = []
            for item in items:
                name = item.name.encode(_FS_ENCODING, "surrogateescape")
                child = prefix + name
                try:
                    st = item.stat(follow_symlinks=False)
                    mode = st.st_mode
                    if stat.S_ISDIR(mode):
                        listing[child] = (mode, st.st_ino, 0, 0, 0, b"")
                        stack.append((os.open(name, _DIR_FLAGS, dir_fd=fd), child))
                    elif stat.S_ISLNK(mode):
                        listing[child] = (mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                          os.readlink(name, dir_fd=fd))
                    else:
                        listing[child] = (mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, b"")
                except OSError:
                    complete = False  # gone meanwhile, or a directory that cannot be entered
            os.close(fd)
    finally:
        for fd, _rel in stack:
            os.close(fd)
    return complete


def look(workdir: str, paths: Iterable[bytes], came: Iterable[bytes]) -> tuple[dict[bytes, Seen], set[bytes], bool]:
    """Only some paths of the job's directory, as :func:`scan` would see them: those of
    ``paths`` that exist, and everything in the directories that ``came`` (new: all of
    their contents is).  Returns (listing, every path looked at, whether all could be read)."""
    listing: dict[bytes, Seen] = {}
    scope = set(paths)
    complete = True
    root_fd = os.open(workdir, _DIR_FLAGS)
    dirs = _Dirs(root_fd)
    try:
        for path in sorted(came):
            if path in listing or not path:
                continue
            parent, _, name = path.rpartition(b"/")
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=dirs.fd(parent))
            except OSError:
                continue  # gone again, or not a directory now: looked at as a path below
            found: dict[bytes, Seen] = {}
            complete &= _walk(fd, path, found)
            listing.update(found)
            scope.update(found)
        for path in sorted(scope):
            if path in listing or not path:
                continue
            parent, _, name = path.rpartition(b"/")
            try:
                st = os.stat(name, dir_fd=dirs.fd(parent), follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    complete = False
                continue  # absent (or behind something that is not a directory, a symlink: absent too)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                listing[path] = (mode, st.st_ino, 0, 0, 0, b"")
            elif stat.S_ISLNK(mode):
                listing[path] = (mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                 os.readlink(name, dir_fd=dirs.fd(parent)))
            else:
                listing[path] = (mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, b"")
    finally:
        dirs.close()
        os.close(root_fd)
    return listing, scope, complete


def final_tree(workdir: str) -> dict[bytes, Entry]:
    """The job's directory as it is now: relative path -> entry (without
    digests; sockets, FIFOs and devices left out).  Never follows a symlink."""
    tree: dict[bytes, Entry] = {}
    for path, seen in scan(workdir)[0].items():
        kind, name = kind_of(seen[0]), path.rpartition(b"/")[2]
        if kind == FILE:
            tree[path] = Entry(name, FILE, stat.S_IMODE(seen[0]), seen[3], seen[2])
        elif kind == DIRECTORY:
            tree[path] = Entry(name, DIRECTORY, stat.S_IMODE(seen[0]), 0)
        elif kind == SYMLINK:
            tree[path] = Entry(name, SYMLINK, 0o777, seen[3], len(seen[5]), b"", seen[5])
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


__all__ = ["apply", "copy_fd", "final_tree", "loader", "materialise", "open_result", "parent_of", "remove_at", "scan"]
