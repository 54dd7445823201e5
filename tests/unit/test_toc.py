"""Choosing a table with what belongs to it from a pg_dump table of contents."""

from __future__ import annotations

from pgsafe.pg.toc import context, parse_toc, select_tables

# pg_restore --list --verbose of a PostgreSQL 15 dump (abridged header)
LISTING = """;
; Archive created at 2026-11-25 18:39:37 UTC
;     dbname: postgres
;
3376; 0 0 ENCODING - ENCODING 
6; 2615 16384 SCHEMA - app postgres
844; 1247 16386 TYPE app mood postgres
;\tdepends on: 6
221; 1255 16423 FUNCTION app trg() postgres
;\tdepends on: 6
216; 1259 16392 TABLE app parent postgres
;\tdepends on: 6
215; 1259 16391 SEQUENCE app parent_id_seq postgres
;\tdepends on: 216 6
3381; 0 0 SEQUENCE OWNED BY app parent_id_seq postgres
;\tdepends on: 215
219; 1259 16404 TABLE app t postgres
;\tdepends on: 844 6
3382; 0 0 COMMENT app TABLE t postgres
;\tdepends on: 219
218; 1259 16403 SEQUENCE app t_g_seq postgres
;\tdepends on: 219 6
217; 1259 16402 SEQUENCE app t_id_seq postgres
;\tdepends on: 219 6
3383; 0 0 SEQUENCE OWNED BY app t_id_seq postgres
;\tdepends on: 217
220; 1259 16419 VIEW app v postgres
;\tdepends on: 219 219 6 844
3212; 2604 16395 DEFAULT app parent id postgres
;\tdepends on: 215 216 216
3213; 2604 16407 DEFAULT app t id postgres
;\tdepends on: 217 219 219
3372; 2613 16425 BLOB - 16425 postgres
3368; 0 16392 TABLE DATA app parent postgres
;\tdepends on: 216
3371; 0 16404 TABLE DATA app t postgres
;\tdepends on: 219
3384; 0 0 SEQUENCE SET app parent_id_seq postgres
;\tdepends on: 215
3385; 0 0 SEQUENCE SET app t_g_seq postgres
;\tdepends on: 218
3386; 0 0 SEQUENCE SET app t_id_seq postgres
;\tdepends on: 217
3373; 0 0 BLOBS - BLOBS 
3218; 2606 16399 CONSTRAINT app parent parent_pkey postgres
;\tdepends on: 216
3221; 2606 16412 CONSTRAINT app t t_pkey postgres
;\tdepends on: 219
3219; 1259 16418 INDEX app t_note_idx postgres
;\tdepends on: 219
3223; 2620 16424 TRIGGER app t t_trg postgres
;\tdepends on: 219 221
3222; 2606 16413 FK CONSTRAINT app t t_pid_fkey postgres
;\tdepends on: 219 216 3218
"""


def ids(entries: list) -> list[int]:
    return [e.id for e in entries]


def test_parse() -> None:
    toc = parse_toc(LISTING)
    assert toc.header[1].startswith("; Archive created")
    by_id = toc.by_id()
    assert (by_id[3222].desc, by_id[3222].namespace, by_id[3222].tag, by_id[3222].owner) == \
        ("FK CONSTRAINT", "app", "t t_pid_fkey", "postgres")
    assert by_id[3383].desc == "SEQUENCE OWNED BY" and by_id[3383].deps == [217]
    assert by_id[3376].desc == "ENCODING" and by_id[3376].owner == ""


def test_a_table_comes_with_what_belongs_to_it() -> None:
    chosen, missing = select_tables(parse_toc(LISTING), [("app", "t")])
    assert missing == []
    assert ids(chosen) == [219, 3382, 218, 217, 3383, 3213, 3371, 3385, 3386, 3221, 3219, 3223, 3222]


def test_what_belongs_to_another_table_stays_out() -> None:
    chosen, _ = select_tables(parse_toc(LISTING), [(None, "parent")])
    # not t's foreign key, although it depends on parent and its primary key
    assert ids(chosen) == [216, 215, 3381, 3212, 3368, 3384, 3218]


def test_unknown_names_are_reported() -> None:
    chosen, missing = select_tables(parse_toc(LISTING), [("app", "nosuch"), ("other", "t")])
    assert chosen == [] and missing == ["app.nosuch", "other.t"]


def test_context_is_everything_depended_upon() -> None:
    toc = parse_toc(LISTING)
    chosen, _ = select_tables(toc, [("app", "t")])
    assert ids(context(toc, chosen)) == [6, 844, 221, 216, 3218]
