"""The table of contents of a pg_dump archive, as ``pg_restore --list --verbose``
prints it, and choosing entries from it.

Each entry line reads ``ID; CATALOG OID DESC NAMESPACE TAG OWNER``, and with
``--verbose`` is followed by ``;\tdepends on: ID ...``. pg_restore reads a list file
back by the leading ID of each line, so a selection is written as the chosen lines.

pg_restore's own ``--table`` restores a table's definition and data only, without its
indexes, constraints, triggers, defaults or owned sequences. ``select_tables`` adds
those by following the dependencies recorded in the archive: an entry is part of a
table when it depends on it and is of a kind that belongs to one table (see
``OWNED_BY_TABLE`` and ``FOLLOWS``). ``context`` gives, for a set of entries, every
entry they depend on, transitively: what a fresh database needs before they can be
restored.

Descriptions (DESC) come from pg_dump; a new major version may add some. An unknown
one is never taken as part of a table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DESCS = sorted((
    "ACCESS METHOD", "ACL", "AGGREGATE", "BLOB", "BLOBS", "BLOB METADATA", "LARGE OBJECT", "CAST",
    "CHECK CONSTRAINT", "COLLATION", "COMMENT", "CONSTRAINT", "CONVERSION", "DATABASE",
    "DATABASE PROPERTIES", "DEFAULT", "DEFAULT ACL", "DOMAIN", "ENCODING", "EVENT TRIGGER", "EXTENSION",
    "FK CONSTRAINT", "FOREIGN DATA WRAPPER", "FOREIGN SERVER", "FOREIGN TABLE", "FUNCTION", "INDEX",
    "INDEX ATTACH", "LANGUAGE", "PROCEDURAL LANGUAGE", "MATERIALIZED VIEW", "MATERIALIZED VIEW DATA",
    "OPERATOR", "OPERATOR CLASS", "OPERATOR FAMILY", "POLICY", "PROCEDURE", "PUBLICATION",
    "PUBLICATION TABLE", "PUBLICATION TABLES IN SCHEMA", "ROW SECURITY", "RULE", "SCHEMA", "SEARCHPATH",
    "SECURITY LABEL", "SEQUENCE", "SEQUENCE OWNED BY", "SEQUENCE SET", "SERVER", "SHELL TYPE",
    "STATISTICS", "STATISTICS DATA", "STDSTRINGS", "SUBSCRIPTION", "SUBSCRIPTION TABLE", "TABLE",
    "TABLE ATTACH", "TABLE DATA", "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY",
    "TEXT SEARCH PARSER", "TEXT SEARCH TEMPLATE", "TRANSFORM", "TRIGGER", "TYPE", "USER MAPPING", "VIEW",
), key=len, reverse=True)

# what --table can name (as in pg_restore --table)
RELATIONS = ("TABLE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE", "SEQUENCE")
# entries tagged "TABLE NAME": they belong to the table they name and depend on
OWNED_BY_TABLE = ("CONSTRAINT", "CHECK CONSTRAINT", "FK CONSTRAINT", "TRIGGER", "DEFAULT", "POLICY", "RULE",
                  "ROW SECURITY", "TABLE ATTACH")
# entries that belong to whatever single object they depend on
FOLLOWS = ("INDEX", "STATISTICS", "STATISTICS DATA", "TABLE DATA", "MATERIALIZED VIEW DATA", "SEQUENCE SET",
           "SEQUENCE OWNED BY", "COMMENT", "ACL", "SECURITY LABEL", "INDEX ATTACH")
DATA = ("TABLE DATA", "MATERIALIZED VIEW DATA", "SEQUENCE SET", "BLOBS", "BLOB DATA", "LARGE OBJECT DATA")
# never restored into a staging database: they act on their own or outside it
NOT_STAGED = ("EVENT TRIGGER", "PUBLICATION", "PUBLICATION TABLE", "PUBLICATION TABLES IN SCHEMA",
              "SUBSCRIPTION", "SUBSCRIPTION TABLE", "DATABASE", "DATABASE PROPERTIES", "BLOB", "BLOBS",
              "BLOB METADATA", "LARGE OBJECT")

_LINE = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")
_DEPS = re.compile(r"^;\s*depends on:(.*)$")


@dataclass
class TocEntry:
    id: int
    desc: str
    rest: str  # "NAMESPACE TAG OWNER", names unquoted as pg_restore prints them
    line: str
    deps: list[int] = field(default_factory=list)

    @property
    def namespace(self) -> str | None:
        first = self.rest.split(" ", 1)[0]
        return None if first == "-" else first

    @property
    def tag(self) -> str:
        parts = self.rest.split(" ")
        return " ".join(parts[1:-1]) if len(parts) > 2 else (parts[1] if len(parts) == 2 else "")

    @property
    def owner(self) -> str:
        parts = self.rest.split(" ")
        return parts[-1] if len(parts) > 2 else ""

    def names(self, schema: str, name: str) -> bool:
        """Is this the entry of relation schema.name?"""
        return self.rest.startswith(f"{schema} {name} ") or self.rest == f"{schema} {name}"

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "type": self.desc, "schema": self.namespace, "name": self.tag, "owner": self.owner,
                "depends_on": self.deps}


@dataclass
class Toc:
    header: list[str]
    entries: list[TocEntry]

    def by_id(self) -> dict[int, TocEntry]:
        return {e.id: e for e in self.entries}


def parse_toc(text: str) -> Toc:
    header: list[str] = []
    entries: list[TocEntry] = []
    for raw in text.splitlines():
        m = _LINE.match(raw)
        if m:
            desc, rest = _split_desc(m.group(4))
            entries.append(TocEntry(int(m.group(1)), desc, rest, raw))
            continue
        d = _DEPS.match(raw)
        if d and entries:
            entries[-1].deps.extend(int(x) for x in d.group(1).split())
        elif not entries:
            header.append(raw)
    return Toc(header, entries)


def _split_desc(text: str) -> tuple[str, str]:
    for desc in DESCS:
        if text.startswith(desc + " ") or text == desc:
            return desc, text[len(desc) + 1:]
    first, _, rest = text.partition(" ")
    return first, rest


def select_tables(toc: Toc, wanted: list[tuple[str | None, str]]) -> tuple[list[TocEntry], list[str]]:
    """The entries that restore the named relations with what belongs to them, in
    archive order; and the names that matched nothing. A name without a schema matches
    that name in every schema, like pg_restore --table."""
    chosen: set[int] = set()
    relations: dict[int, TocEntry] = {}
    missing = []
    for schema, name in wanted:
        hits = [e for e in toc.entries if e.desc in RELATIONS and (
            e.names(schema, name) if schema is not None else e.tag == name)]
        if not hits:
            missing.append(f"{schema}.{name}" if schema else name)
        for e in hits:
            chosen.add(e.id)
            relations[e.id] = e
    changed = True
    while changed:
        changed = False
        for e in toc.entries:
            if e.id in chosen or not e.deps:
                continue
            if _belongs(e, chosen, relations):
                chosen.add(e.id)
                if e.desc == "SEQUENCE":
                    relations[e.id] = e
                changed = True
    return [e for e in toc.entries if e.id in chosen], missing


def _belongs(e: TocEntry, chosen: set[int], relations: dict[int, TocEntry]) -> bool:
    deps = set(e.deps)
    if e.desc in OWNED_BY_TABLE:
        # tagged "TABLE NAME": the table it names must be chosen and depended upon
        return any(r.desc in RELATIONS and r.namespace is not None and e.rest.startswith(f"{r.namespace} {r.tag} ")
                   for r in (relations[d] for d in deps if d in relations))
    if e.desc == "SEQUENCE":  # a serial or identity sequence depends on its table
        return any(relations[d].desc != "SEQUENCE" for d in deps if d in relations)
    if e.desc in ("INDEX ATTACH",):
        return deps <= chosen
    if e.desc in FOLLOWS:
        return bool(deps & chosen)
    return False


def context(toc: Toc, chosen: list[TocEntry]) -> list[TocEntry]:
    """Everything the chosen entries depend on, transitively, in archive order
    (without the chosen entries themselves)."""
    by_id = toc.by_id()
    need: set[int] = set()
    todo = [d for e in chosen for d in e.deps]
    while todo:
        d = todo.pop()
        if d in need or d not in by_id:
            continue
        need.add(d)
        todo.extend(by_id[d].deps)
    picked = {e.id for e in chosen}
    return [e for e in toc.entries if e.id in need and e.id not in picked]


def list_file(entries: list[TocEntry]) -> str:
    return "".join(e.line + "\n" for e in entries)
