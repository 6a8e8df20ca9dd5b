"""The client writing results back into DIR (a shell), safely and atomically.

A worker is not trusted with paths: every path is checked name by name
(:func:`.paths.split_path`), parents are walked from DIR with ``O_NOFOLLOW``
(a symlink anywhere on the way is refused: it could lead out of DIR), files
are written to a temporary name in their directory, given their mode and
mtime, then renamed over the old one.  Symlinks that would lead out of DIR
are refused.  Nothing is ever written outside DIR.
"""

from __future__ import annotations

import errno
import os

from .entry import MODE_MASK
from .paths import UnsafePath, check_symlink_target, split_path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Refused(Exception):
    """A result that would be written outside DIR, or over something it must not."""


def _open_parent(root: bytes, names: list[bytes], create: bool) -> int:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in names:
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Refused("a symlink or file is in the way") from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


class Parents:
    """The directories under DIR that one batch of checks looks into (every result's
    local stat, whether its way is clear), each opened once, name by name with
    ``O_NOFOLLOW`` as :func:`_open_parent` does, and kept until :meth:`close`: walking
    from DIR again for every path was most of jq's system calls in a fetch-back.  An
    fd it returns is lent for the call that asked (the batch may close it later)."""

    LIMIT = 128  # fds kept at once (a tree's directories may be more than a process may open)

    def __init__(self, root: bytes) -> None:
        self.root = root
        self._fds: dict[tuple[bytes, ...], int] = {}

    def open(self, names: list[bytes]) -> int:
        """The directory at ``names`` under DIR (FileNotFoundError if it is not there,
        :class:`Refused` if a symlink or a file is in its way)."""
        key = tuple(names)
        fd = self._fds.get(key)
        if fd is not None:
            return fd
        if not names:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            parent = self.open(names[:-1])
            try:
                fd = os.open(names[-1], _DIR_FLAGS, dir_fd=parent)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Refused("a symlink or file is in the way") from None
                raise
        if len(self._fds) >= self.LIMIT:
            self.close()  # (no fd is held across calls: the ways are opened again as needed)
        self._fds[key] = fd
        return fd

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


def check_writable(root: bytes, rel: bytes, parents: Parents | None = None) -> None:
    """:class:`Refused` if ``rel`` is unsafe or an existing part of its way is a
    symlink or a file (checked again when it is written)."""
    try:
        names = split_path(rel)
    except UnsafePath as e:
        raise Refused(str(e)) from None
    try:
        if parents is not None:
            parents.open(names[:-1])
        else:
            os.close(_open_parent(root, names[:-1], create=False))
    except FileNotFoundError:
        pass


def lstat_at(root: bytes, rel: bytes, parents: Parents | None = None) -> os.stat_result | None:
    """The local path's lstat, or None (missing, or behind a symlink)."""
    try:
        names = split_path(rel)
        fd = _open_parent(root, names[:-1], create=False) if parents is None else parents.open(names[:-1])
    except (OSError, Refused, UnsafePath):
        return None
    try:
        return os.stat(names[-1], dir_fd=fd, follow_symlinks=False)
    except OSError:
        return None
    finally:
        if parents is None:
            os.close(fd)


class ResultFile:
    """One file being brought back: bytes go to a temporary file next to it;
    :meth:`commit` sets mode and mtime and renames it into place."""

    def __init__(self, root: bytes, rel: bytes, mode: int, mtime_ns: int) -> None:
        try:
            names = split_path(rel)
        except UnsafePath as e:
            raise Refused(str(e)) from None
        self.rel = rel
        self.name = names[-1]
        self.mode = mode & MODE_MASK
        self.mtime_ns = mtime_ns
        self.dir_fd = _open_parent(root, names[:-1], create=True)
        self.temp = b".jq-fetch-" + os.urandom(6).hex().encode()
        self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=self.dir_fd)

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def lstat_there(self) -> os.stat_result | None:
        """The lstat of the path this file will replace (None: nothing there), through
        the directory already open (no walk from DIR again)."""
        try:
            return os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except OSError:
            return None

    def commit(self) -> os.stat_result | None:
        """Mode, mtime, rename into place; the lstat of what is there then (None if it
        cannot be read)."""
        os.fchmod(self.fd, self.mode)
        os.utime(self.fd, ns=(self.mtime_ns, self.mtime_ns))
        os.close(self.fd)
        self.fd = -1
        try:
            os.rename(self.temp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except OSError:
            self.abort()
            raise
        try:
            return self.lstat_there()
        finally:
            os.close(self.dir_fd)

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.temp, dir_fd=self.dir_fd)
        except OSError:
            pass
        try:
            os.close(self.dir_fd)
        except OSError:
            pass


def write_symlink(root: bytes, rel: bytes, target: bytes, mtime_ns: int) -> None:
    try:
        names = split_path(rel)
        check_symlink_target(rel, target)
    except UnsafePath as e:
        raise Refused(str(e)) from None
    fd = _open_parent(root, names[:-1], create=True)
    try:
        temp = b".jq-fetch-" + os.urandom(6).hex().encode()
        os.symlink(target, temp, dir_fd=fd)
        os.utime(temp, ns=(mtime_ns, mtime_ns), dir_fd=fd, follow_symlinks=False)
        os.rename(temp, names[-1], src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)


def make_directory(root: bytes, rel: bytes) -> None:
    try:
        names = split_path(rel)
    except UnsafePath as e:
        raise Refused(str(e)) from None
    os.close(_open_parent(root, names, create=True))


def delete(root: bytes, rel: bytes, is_dir: bool) -> None:
    """Remove a file or symlink; a directory only when it is empty."""
    try:
        names = split_path(rel)
    except UnsafePath as e:
        raise Refused(str(e)) from None
    try:
        fd = _open_parent(root, names[:-1], create=False)
    except FileNotFoundError:
        return
    try:
        if is_dir:
            os.rmdir(names[-1], dir_fd=fd)
        else:
            os.unlink(names[-1], dir_fd=fd)
    except (FileNotFoundError, OSError) as e:
        if is_dir and e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            return
        if not is_dir and e.errno == errno.ENOENT:
            return
        raise
    finally:
        os.close(fd)
