"""What a staged name, path or symlink may be: nothing may lead outside the tree.

A manifest comes from a client and results come from a worker; neither is
trusted to name paths.  A *name* is one path component: not empty, not ``.``
or ``..``, without ``/`` or NUL.  A relative *path* is names joined by ``/``.
A symlink's target may be relative only, and resolving it inside the tree
(following the tree's own symlinks, as the kernel would) must never go above
the tree's root.  The shells add the second half of the guarantee: they create
files with ``dir_fd`` and ``O_NOFOLLOW`` and never write through a symlink.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # jq loads this module: no typing at run time
    from collections.abc import Mapping

#: Symlinks followed while resolving one target, as Linux's MAXSYMLINKS.
MAX_SYMLINKS = 40


class UnsafePath(ValueError):
    """A name, path or symlink target that could reach outside the tree."""


def _show(path: bytes) -> str:
    """A path in a message: quoted, on one line (newlines and undecodable bytes escaped)."""
    return repr(path.decode("utf-8", "surrogateescape"))


def check_name(name: bytes) -> None:
    # "/" and NUL looked for as ints (47, 0): a bytes operand costs CPython a TypeError first
    if not name or name in (b".", b"..") or 47 in name or 0 in name:
        raise UnsafePath(f"unsafe name {_show(name)}")


def split_path(path: bytes) -> list[bytes]:
    """The names of a relative path; :class:`UnsafePath` unless every one is safe."""
    if not path:
        raise UnsafePath("empty path")
    names = path.split(b"/")
    for name in names:
        try:
            check_name(name)
        except UnsafePath:
            raise UnsafePath(f"unsafe path {_show(path)}") from None
    return names


def check_symlink_target(link: bytes, target: bytes, links: Mapping[bytes, bytes] | None = None) -> None:
    """Refuse a symlink at relative path ``link`` whose ``target`` is absolute or
    resolves above the tree's root.  ``links`` (the tree's symlinks: relative
    path -> target) lets the resolution follow them as the kernel would."""
    if not target or 0 in target:
        raise UnsafePath(f"symlink {_show(link)}: empty target or NUL byte")
    if target.startswith(b"/"):
        raise UnsafePath(f"symlink {_show(link)} -> {_show(target)}: absolute target")
    parent = link.split(b"/")[:-1]
    if _resolve(parent, target, {} if links is None else links, [0]) is None:
        raise UnsafePath(f"symlink {_show(link)} -> {_show(target)} leads outside the tree")


def _resolve(base: list[bytes], target: bytes, links: Mapping[bytes, bytes], hops: list[int]) -> list[bytes] | None:
    """The components ``target`` resolves to from directory ``base``; None when
    it goes above the root, is absolute, or loops."""
    if target.startswith(b"/"):
        return None
    path = list(base)
    for name in target.split(b"/"):
        if name in (b"", b"."):
            continue
        if name == b"..":
            if not path:
                return None
            path.pop()
            continue
        path.append(name)
        link_target = links.get(b"/".join(path))
        if link_target is not None:  # a symlink inside the tree: follow it
            hops[0] += 1
            if hops[0] > MAX_SYMLINKS:
                return None
            resolved = _resolve(path[:-1], link_target, links, hops)
            if resolved is None:
                return None
            path = resolved
    return path

