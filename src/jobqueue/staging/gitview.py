"""What git would not send of a staged tree (a shell: ``git ls-files``).

jq loads this module for ``--stage``; git is started only when DIR is in a work tree.
"""

from __future__ import annotations

import os


class GitView:
    """What git would not ignore under DIR."""

    def __init__(self, files: set[bytes], untracked_dirs: set[bytes], signature: tuple = ()) -> None:
        self.signature = signature  # tells one view from another (a walk's filter)
        self.files = files  # tracked or untracked-not-ignored files (and submodules), relative to DIR
        self.untracked_dirs = untracked_dirs  # directories git lists as wholly untracked (empty ones too)
        self.parents: set[bytes] = set()  # every directory holding one of the files
        for path in files:
            while 47 in path:  # "/"
                path = path.rsplit(b"/", 1)[0]
                if path in self.parents:
                    break
                self.parents.add(path)


def _spawn_git(root: bytes, extra: list[str]) -> tuple[int, int] | None:
    """(pid, read end of its stdout) of ``git -C root ls-files ...``; None without git."""
    argv = ["git", "-C", os.fsdecode(root), "ls-files", "-z", "--others", "--exclude-standard", *extra]
    read, write = os.pipe()
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        pid = os.posix_spawnp("git", argv, os.environ, file_actions=[
            (os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, write, 1), (os.POSIX_SPAWN_DUP2, devnull, 2)])
    except OSError:
        os.close(read)
        return None
    finally:
        os.close(write)
        os.close(devnull)
    return pid, read


def _collect(started: tuple[int, int]) -> bytes | None:
    pid, fd = started
    chunks = []
    with open(fd, "rb", closefd=True) as out:
        while data := out.read(1 << 20):
            chunks.append(data)
    _, status = os.waitpid(pid, 0)
    return b"".join(chunks) if os.waitstatus_to_exitcode(status) == 0 else None


def _in_work_tree(root: bytes) -> bool:
    """Whether git could find a work tree holding ``root`` (a ``.git`` here or above, or
    git's environment names one); when not, no git is started (2-5 ms)."""
    if any(name in os.environ for name in ("GIT_DIR", "GIT_WORK_TREE")):
        return True
    path = root
    while True:
        if os.path.lexists(path + b"/.git"):
            return True
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent


def git_view(root: bytes) -> GitView | None:
    """Two ``git ls-files`` at once: the files, and the wholly untracked
    directories (empty ones included); None when DIR is not in a work tree."""
    if not _in_work_tree(root):
        return None
    files_run = _spawn_git(root, ["--cached"])
    if files_run is None:
        return None
    dirs_run = _spawn_git(root, ["--directory"])
    files_out = _collect(files_run)
    dirs_out = _collect(dirs_run) if dirs_run is not None else None
    if files_out is None or dirs_out is None:
        return None
    import binascii

    return GitView({p for p in files_out.split(b"\0") if p},
                    {p.rstrip(b"/") for p in dirs_out.split(b"\0") if p.endswith(b"/")},
                    (binascii.crc32(files_out), len(files_out), binascii.crc32(dirs_out), len(dirs_out)))


def under(path: bytes, roots: set[bytes]) -> bool:
    while True:
        if path in roots:
            return True
        if b"/" not in path:
            return False
        path = path.rsplit(b"/", 1)[0]
