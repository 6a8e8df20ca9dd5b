"""Authorized-keys files (``--clients``, ``--workers``, ``--admins``): keys, their names and options.

One key per line, as in ssh's ``authorized_keys``: optional options before the
key, the key's name after it::

    tags="linux,debian12",max-running=8,max-queued=1000,max-priority=5 <key> alice
    tags="gpu" <key> node-gpu-1

A directory of ``*.pub`` files names each key by its file (``alice.pub``:
``alice``); in a single file the word after the key names it (a key without
one is named ``key-`` and its first 8 characters).  Lines starting with ``#``
are comments.  Anything else is refused with the file, line and reason, so a
bad edit never half-applies (on SIGHUP the server keeps the previous keys).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

from .config import UsageError
from .security import is_key, key_file_lines
from .tenancy import Limits, Policy

T = TypeVar("T")

CLIENT_OPTIONS = ("tags", "max-running", "max-queued", "max-priority")
WORKER_OPTIONS = ("tags",)


@dataclass(frozen=True)
class Entry:
    key: bytes  # z85
    name: str
    options: dict[str, str]
    where: str  # path:line, for errors


@dataclass(frozen=True)
class Access:
    """Every authorized key: its role and name, and the policy its options make."""

    #: z85 key -> "client" or "worker" (an admin key is a client key).
    roles: dict[bytes, str]
    #: z85 key -> the name of its owner (clients) or of the worker key.
    names: dict[bytes, str]
    policy: Policy

    def counts(self) -> dict[str, int]:
        roles = list(self.roles.values())
        admins = self.policy.admins or frozenset()
        return {"clients": roles.count("client"), "workers": roles.count("worker"), "admins": len(admins)}


def load_access(clients: str, workers: str, admins: str | None, fair_share: bool) -> Access:
    """Read the three sources into one :class:`Access` (raises :class:`UsageError`)."""
    roles: dict[bytes, str] = {}
    names: dict[bytes, str] = {}
    client_limits: dict[str, tuple[Limits, str]] = {}
    worker_tags: dict[str, tuple[frozenset[str] | None, str]] = {}
    admin_names: set[str] = set()
    sources = [("client", clients), ("worker", workers)] + ([("admin", admins)] if admins else [])
    for kind, source in sources:
        role = "worker" if kind == "worker" else "client"
        for entry in read_entries(source):
            if roles.setdefault(entry.key, role) != role:
                raise UsageError(f"{entry.where}: key {entry.key.decode()} is listed as a client and as a worker: "
                                 "give each client and worker its own key")
            if kind == "admin" and entry.key in names:
                admin_names.add(names[entry.key])  # listed in --clients too: that line names it, sets its options
                continue
            names[entry.key] = entry.name
            if kind == "admin":
                admin_names.add(entry.name)
            if role == "worker":
                _merge(worker_tags, entry.name, _tags(entry, WORKER_OPTIONS), entry)
            else:
                _merge(client_limits, entry.name, _limits(entry), entry)
    if not roles:
        raise UsageError(f"no public keys found in {clients} nor {workers}")
    policy = Policy(clients={n: limits for n, (limits, _) in client_limits.items() if limits != Limits()},
                    workers={n: tags for n, (tags, _) in worker_tags.items() if tags is not None},
                    admins=frozenset(admin_names), fair_share=fair_share)
    return Access(roles, names, policy)


def _merge(table: dict[str, tuple[T, str]], name: str, value: T, entry: Entry) -> None:
    """Keys sharing a name are one owner: their options must agree."""
    old = table.setdefault(name, (value, entry.where))
    if old[0] != value:
        raise UsageError(f"{entry.where}: {name} has other options at {old[1]}: "
                         "keys of one name share one set of options")


def _limits(entry: Entry) -> Limits:
    _check_names(entry, CLIENT_OPTIONS)
    numbers = {name: _number(entry, name) for name in ("max-running", "max-queued", "max-priority")}
    return Limits(_tags(entry, CLIENT_OPTIONS), numbers["max-running"], numbers["max-queued"],
                  numbers["max-priority"])


def _tags(entry: Entry, allowed: tuple[str, ...]) -> frozenset[str] | None:
    _check_names(entry, allowed)
    if "tags" not in entry.options:
        return None
    return frozenset(t.strip() for t in entry.options["tags"].split(",") if t.strip())


def _check_names(entry: Entry, allowed: tuple[str, ...]) -> None:
    for name in entry.options:
        if name not in allowed:
            what = "a worker key takes only" if allowed == WORKER_OPTIONS else "a client key takes"
            raise UsageError(f"{entry.where}: unknown option {name!r} ({what} "
                             f"{', '.join(o + '=' for o in allowed)})")


def _number(entry: Entry, name: str) -> int | None:
    text = entry.options.get(name)
    if text is None:
        return None
    if not text.isdigit() and not (name == "max-priority" and text.startswith("-") and text[1:].isdigit()):
        raise UsageError(f"{entry.where}: {name} takes a whole number, got {text!r}")
    return int(text)


# --- reading the files ------------------------------------------------------------------------


def read_entries(source: str) -> list[Entry]:
    """The keys in ``source``: a directory of ``*.pub`` files, or one file."""
    if os.path.isdir(source):
        pubs = sorted(name for name in os.listdir(source) if name.endswith(".pub"))
        return [entry for name in pubs
                for entry in _read_file(os.path.join(source, name), name.removesuffix(".pub"))]
    return _read_file(source, None)


def _read_file(path: str, file_name: str | None) -> list[Entry]:
    entries = []
    for number, line in enumerate(key_file_lines(path), 1):
        entry = parse_line(line, f"{path}:{number}", file_name)
        if entry is not None:
            entries.append(entry)
    return entries


def parse_line(line: str, where: str, file_name: str | None = None) -> Entry | None:
    """One line: ``[OPTIONS] KEY [NAME...]``; None for a blank or comment line."""
    text = line.strip()
    if not text or (text.startswith("#") and not is_key(text.split()[0])):
        return None
    options: dict[str, str] = {}
    words = text.split(None, 1)
    if not is_key(words[0]):
        if "=" not in words[0]:
            raise UsageError(f"{where}: not a CURVE key (expected 40 z85 characters, as jobqueue keygen writes; "
                             "comment lines start with #)")
        spec, text = _split_options(text, where)
        options = _parse_options(spec, where)
        words = text.split(None, 1)
        if not words or not is_key(words[0]):
            raise UsageError(f"{where}: no CURVE key after the options (expected 40 z85 characters, "
                             "as jobqueue keygen writes)")
    key = words[0]
    comment = words[1].split()[0] if len(words) > 1 else ""
    name = file_name or comment or f"key-{key[:8]}"
    return Entry(key.encode(), name, options, where)


def _split_options(text: str, where: str) -> tuple[str, str]:
    """The options field (up to the first blank outside quotes) and the rest."""
    quoted = False
    for i, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif char.isspace() and not quoted:
            return text[:i], text[i:].strip()
    if quoted:
        raise UsageError(f"{where}: unterminated quote in the options")
    raise UsageError(f"{where}: options but no CURVE key after them")


def _parse_options(spec: str, where: str) -> dict[str, str]:
    """``a="x,y",b=2,c``: split on commas outside quotes, strip the quotes."""
    options: dict[str, str] = {}
    parts: list[str] = []
    current, quoted = "", False
    for char in spec:
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    if quoted:
        raise UsageError(f"{where}: unterminated quote in the options")
    parts.append(current)
    for part in parts:
        name, sep, value = part.partition("=")
        if not name or not sep:
            raise UsageError(f"{where}: option {part!r} must be NAME=VALUE")
        if name in options:
            raise UsageError(f"{where}: option {name} given twice")
        options[name] = value
    return options
