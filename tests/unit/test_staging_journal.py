"""The stage watcher's pure core: which directories changed since a token."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from jobqueue.staging.journal import IN_UNMOUNT, Journal
from jobqueue.staging.watch import (
    IN_ATTRIB,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_ISDIR,
    IN_MODIFY,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
)


def journal(*dirs: bytes) -> Journal:
    j = Journal(epoch=7)
    for wd, rel in enumerate(dirs, 1):
        j.watched(rel, wd)
    return j


def test_a_client_without_a_token_lists_everything_and_gets_one() -> None:
    j = journal(b"", b"a")
    answer = j.ask(None)
    assert answer.changed is None and answer.token == (7, j.step)


def test_nothing_happened_nothing_changed() -> None:
    j = journal(b"", b"a", b"a/b")
    token = j.ask(None).token
    assert j.ask(token).changed == frozenset()


def test_a_written_file_marks_its_directory_only() -> None:
    j = journal(b"", b"a", b"a/b")
    token = j.ask(None).token
    j.event(3, IN_MODIFY, b"f")
    j.event(3, IN_CLOSE_WRITE, b"f")
    assert j.ask(token).changed == {b"a/b"}


def test_changes_before_the_token_are_not_told_again() -> None:
    j = journal(b"", b"a")
    j.event(2, IN_ATTRIB, b"f")
    token = j.ask(None).token
    j.event(1, IN_CREATE, b"g")
    assert j.ask(token).changed == {b""}


def test_a_new_directory_asks_for_its_subtree_to_be_watched_and_counts_as_changed() -> None:
    j = journal(b"", b"a")
    token = j.ask(None).token
    assert j.event(2, IN_CREATE | IN_ISDIR, b"new") == [b"a/new"]
    j.watched(b"a/new", 3)
    j.watched(b"a/new/deeper", 4)  # made before its parent's watch: found by the shell's listing
    assert j.ask(token).changed == {b"a", b"a/new", b"a/new/deeper"}


def test_a_directory_moved_away_forgets_its_watches_and_hands_them_back() -> None:
    j = journal(b"", b"a", b"a/b", b"ab")
    token = j.ask(None).token
    assert j.event(1, IN_MOVED_FROM | IN_ISDIR, b"a") == []
    assert sorted(j.dropped) == [2, 3]  # a and a/b, not ab
    assert b"a" not in j.wd_of and b"a/b" not in j.wd_of and j.wd_of[b"ab"] == 4
    j.event(3, IN_MODIFY, b"f")  # an event of a watch already dropped counts for nothing
    assert j.ask(token).changed == {b""}


def test_a_directory_moved_within_the_tree_is_watched_at_its_new_place() -> None:
    j = journal(b"", b"a", b"b")
    token = j.ask(None).token
    j.event(1, IN_MOVED_FROM | IN_ISDIR, b"a")
    assert j.event(3, IN_MOVED_TO | IN_ISDIR, b"a") == [b"b/a"]
    j.watched(b"b/a", 5)
    j.event(5, IN_CREATE, b"f")
    assert j.ask(token).changed == {b"", b"b", b"b/a"}


def test_an_ignored_watch_is_forgotten() -> None:
    j = journal(b"", b"a")
    j.event(1, IN_DELETE | IN_ISDIR, b"a")
    j.event(2, IN_DELETE_SELF, b"")
    j.event(2, IN_IGNORED, b"")
    assert 2 not in j.by_wd and b"a" not in j.wd_of


def test_lost_events_refuse_every_earlier_token_and_watch_everything_again() -> None:
    j = journal(b"", b"a")
    token = j.ask(None).token
    assert j.event(-1, IN_Q_OVERFLOW, b"") == [b""]
    assert j.ask(token).changed is None
    fresh = j.ask(None).token
    assert j.ask(fresh).changed == frozenset()


def test_tokens_of_another_watcher_or_from_the_future_are_refused() -> None:
    j = journal(b"")
    assert j.ask((8, 0)).changed is None
    assert j.ask((7, j.step + 1)).changed is None


def test_the_root_going_away_ends_the_watcher() -> None:
    for mask in (IN_DELETE_SELF, IN_UNMOUNT):
        j = journal(b"", b"a")
        j.event(2, mask, b"")
        assert not j.root_gone
        j.event(1, mask, b"")
        assert j.root_gone


# A reference model: the answer for a token is exactly the set of directories with an
# event (or a new watch) after it, as long as no event was lost since.
events = st.lists(st.tuples(st.sampled_from(["event", "ask", "overflow"]), st.integers(1, 4),
                            st.sampled_from([IN_MODIFY, IN_ATTRIB, IN_CREATE, IN_DELETE, IN_CLOSE_WRITE]),
                            st.integers(0, 10)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(events)
def test_the_answer_is_every_directory_touched_since_the_token(script: list[tuple[str, int, int, int]]) -> None:
    dirs = [b"", b"a", b"a/b", b"c"]
    j = journal(*dirs)
    history: list[tuple[int, bytes]] = []  # (step, directory) of each change
    tokens: list[tuple[int, int]] = []
    overflow_steps: list[int] = []
    for kind, wd, mask, pick in script:
        if kind == "event":
            j.event(wd, mask, b"f")
            history.append((j.step, dirs[wd - 1]))
        elif kind == "overflow":
            j.event(-1, IN_Q_OVERFLOW, b"")
            overflow_steps.append(j.step)
        else:
            tokens.append(j.ask(tokens[pick % len(tokens)] if tokens and pick else None).token)
    for token in tokens:
        answer = j.ask(token)
        if any(step > token[1] for step in overflow_steps):
            assert answer.changed is None
        else:
            assert answer.changed == {rel for step, rel in history if step > token[1]}
