"""Path safety: names, relative paths and symlink targets; the resolver agrees with the kernel."""

from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobqueue.staging.paths import UnsafePath, check_name, check_symlink_target, split_path


@given(st.binary(max_size=30))
def test_a_name_is_one_safe_component(name: bytes) -> None:
    safe = bool(name) and name not in (b".", b"..") and b"/" not in name and b"\0" not in name
    if safe:
        check_name(name)
    else:
        with pytest.raises(UnsafePath):
            check_name(name)


@given(st.lists(st.sampled_from([b"a", b"b c", b"..", b".", b"", b"\xff", b"x\0"]), min_size=1, max_size=6))
def test_a_path_is_safe_only_if_every_name_is(parts: list[bytes]) -> None:
    path = b"/".join(parts)
    ok = all(p not in (b"", b".", b"..") and b"\0" not in p for p in parts)
    if ok:
        assert split_path(path) == parts
    else:
        with pytest.raises(UnsafePath):
            split_path(path)


@pytest.mark.parametrize("link,target", [
    (b"l", b"/etc/passwd"), (b"l", b".."), (b"d/l", b"../.."), (b"l", b"a/../../x"), (b"l", b""), (b"l", b"a\0"),
])
def test_escaping_targets_are_refused(link: bytes, target: bytes) -> None:
    with pytest.raises(UnsafePath):
        check_symlink_target(link, target)


@pytest.mark.parametrize("link,target", [(b"l", b"a"), (b"d/l", b"../a"), (b"d/e/l", b"../../d/./x"), (b"l", b".")])
def test_targets_inside_are_accepted(link: bytes, target: bytes) -> None:
    check_symlink_target(link, target)


def test_a_chain_of_symlinks_that_escapes_is_refused() -> None:
    # a/b/s -> ../.. (the root); l -> a/b/s/.. : lexically inside, but the kernel goes above the root
    links = {b"a/b/s": b"../.."}
    check_symlink_target(b"a/b/s", b"../..", links)
    with pytest.raises(UnsafePath):
        check_symlink_target(b"l", b"a/b/s/..", links)


components = st.sampled_from([b"a", b"b", b"..", b".", b"s", b"t"])
targets = st.lists(components, min_size=1, max_size=5).map(lambda parts: b"/".join(parts))


@given(st.sampled_from([b"s", b"a/s", b"a/b/s"]), targets, targets)
@settings(max_examples=300, deadline=None)
def test_accepted_symlinks_never_resolve_outside_on_a_real_file_system(where: bytes, first: bytes,
                                                                         second: bytes) -> None:
    """Differential: whenever the checker accepts two symlinks s (at ``where``)
    and t (at the root), the kernel resolves both inside the tree."""
    links = {where: first, b"t": second}
    try:
        for path, target in links.items():
            check_symlink_target(path, target, links)
    except UnsafePath:
        return
    with tempfile.TemporaryDirectory() as outer:
        root = os.path.join(outer.encode(), b"root")
        os.makedirs(os.path.join(root, b"a", b"b"))
        for path, target in links.items():
            os.symlink(target, os.path.join(root, path))
        real_root = os.path.realpath(root)
        for path in links:
            resolved = os.path.realpath(os.path.join(root, path))
            assert resolved == real_root or resolved.startswith(real_root + b"/"), (links, path, resolved)
