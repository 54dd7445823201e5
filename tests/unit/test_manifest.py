"""The streamed manifest: what a backup writes file by file reads back whole, and the
catalog entry's digest refuses a manifest that decodes but is not the one written."""

from __future__ import annotations

import json
import threading

import pytest

from pgsafe.config import RepoConfig
from pgsafe.errors import IntegrityError
from pgsafe.repo.manifest import FileEntry, Patch, Ref
from pgsafe.repo.repository import Repository


@pytest.fixture()
def repo(tmp_path) -> Repository:
    repository, created = Repository.create(RepoConfig(name="main", path=str(tmp_path / "repo")))
    assert created
    return repository


def _entry(i: int) -> FileEntry:
    if i % 7 == 0:  # a large file borrowing its base from an older backup, with a patch
        return FileEntry(f"base/1/{i}", 3 << 20, 0o600, 1700000000 + i, f"{i:032x}", Ref("20261101-000000F", 3, 0, 99),
                         (i, 24), [Patch("20261125-000000I", 1, 0, 50, 2, 1)])
    return FileEntry(f"base/1/{i}_fsm", 8192 + i, 0o600, 1700000000 + i, f"{i:032x}",
                     Ref("20261125-000000I", 1, i * 100, 100))


def test_entries_written_by_many_threads_read_back_whole(repo: Repository) -> None:
    writer = repo.manifest_writer("main", "20261125-000000I")
    written = [_entry(i) for i in range(5000)]

    def add(part: list[FileEntry]) -> None:
        for e in part:
            writer.add(e)

    threads = [threading.Thread(target=add, args=(written[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    header = {"format": 1, "id": "20261125-000000I", "start_time": "2026-11-25T00:00:00.000000Z",
              "references": sorted(writer.references - {"20261125-000000I"}), "directories": [{"path": "base"}]}
    repo.commit_backup("main", header, writer)

    manifest = repo.manifest("main", "20261125-000000I")
    assert sorted(manifest["files"], key=lambda f: f["path"]) == sorted(
        (e.as_dict() for e in written), key=lambda f: f["path"])
    assert manifest["references"] == ["20261101-000000F"]
    assert manifest["directories"] == [{"path": "base"}]
    assert writer.file_count == 5000 and writer.size == sum(e.size for e in written)
    (summary,) = repo.catalog("main")
    assert "files" not in summary and "directories" not in summary
    assert summary["id"] == "20261125-000000I" and len(summary["manifest_checksum"]) == 32


def test_a_manifest_that_decodes_but_is_not_the_one_committed_is_refused(repo: Repository) -> None:
    writer = repo.manifest_writer("main", "20261125-000000F")
    writer.add(_entry(1))
    repo.commit_backup("main", {"format": 1, "id": "20261125-000000F", "start_time": "x"}, writer)
    # a well-formed envelope, with its own valid digest, of a different document
    forged = repo.codec.encode(json.dumps({"files": [], "format": 1, "id": "20261125-000000F"}).encode())[0]
    w = repo.storage.writer("cluster/main/backup/20261125-000000F/manifest")
    w.write(forged)
    w.commit()
    with pytest.raises(IntegrityError, match="manifest is damaged"):
        repo.manifest("main", "20261125-000000F")


def test_an_aborted_manifest_leaves_nothing(repo: Repository, tmp_path) -> None:
    writer = repo.manifest_writer("main", "20261125-000000F")
    writer.add(_entry(1))
    writer.abort()
    assert not list(repo.storage.list("cluster/main/backup/"))
    assert repo.catalog("main") == []
