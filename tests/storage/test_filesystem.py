"""Filesystem-specific behaviour of FileSystemBlobStore: layout, durability, cleanup."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

import pytest

from coffre.errors import AlreadyExists, StorageFailure
from coffre.storage.filesystem import FileSystemBlobStore

KEY = "chu-nord/9f3a0c1d2e3f40516273849a5b6c7d8e"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "blobs"


@pytest.fixture
def store(root: Path) -> FileSystemBlobStore:
    return FileSystemBlobStore(root)


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_layout_on_disk_under_root_only(store: FileSystemBlobStore, root: Path) -> None:
    outside_before = set(root.parent.iterdir())
    store.put(KEY, b"payload")
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    expected = root / "chu-nord" / digest[:2] / digest[2:4] / KEY.replace("/", "~")
    assert store.path_for(KEY) == expected
    assert all_files(root) == [expected]
    assert expected.read_bytes() == b"payload"
    assert set(root.parent.iterdir()) == outside_before


def test_shards_spread_keys(store: FileSystemBlobStore, root: Path) -> None:
    # Keys sharing a long prefix still land in different shards.
    keys = [f"chu-nord/{i:040x}" for i in range(64)]
    for key in keys:
        store.put(key, b"")
    shards = {store.path_for(k).parent for k in keys}
    assert len(shards) > 50
    assert set(store.keys()) == set(keys)


def test_keys_recovered_by_new_instance(store: FileSystemBlobStore, root: Path) -> None:
    keys = {KEY, "clinique-sud/00ff", "one", "a/b/c/d"}
    for key in keys:
        store.put(key, key.encode())
    reopened = FileSystemBlobStore(root)
    assert set(reopened.keys()) == keys
    assert reopened.read("a/b/c/d") == b"a/b/c/d"


def test_keys_ignore_foreign_and_misplaced_files(store: FileSystemBlobStore, root: Path) -> None:
    store.put(KEY, b"x")
    leaf = store.path_for(KEY).parent
    (leaf / "README").write_bytes(b"not a blob")  # valid-looking name, wrong shard
    (leaf / "Bad Name").write_bytes(b"junk")
    (root / "notes.txt").write_bytes(b"junk")
    (root / "UPPER").mkdir()
    assert list(store.keys()) == [KEY]


def test_modes_are_umask_independent(root: Path) -> None:
    old = os.umask(0o000)
    try:
        store = FileSystemBlobStore(root)
        store.put(KEY, b"x")
    finally:
        os.umask(old)
    path = store.path_for(KEY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    folder = path.parent
    while folder != root.parent:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o750, folder
        folder = folder.parent


def test_modes_with_restrictive_umask(root: Path) -> None:
    old = os.umask(0o077)
    try:
        store = FileSystemBlobStore(root)
        store.put(KEY, b"x")
    finally:
        os.umask(old)
    path = store.path_for(KEY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750


def test_no_temp_files_after_success(store: FileSystemBlobStore, root: Path) -> None:
    for i in range(10):
        store.put(f"chu-nord/{i:04x}", os.urandom(100))
    assert list(store.temp_files()) == []
    assert not [p for p in root.rglob(".tmp-*")]


def test_fsync_failure_leaves_nothing(
    store: FileSystemBlobStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StorageFailure) as caught:
        store.put(KEY, b"payload")
    assert KEY in caught.value.reason
    assert str(root) not in caught.value.reason
    monkeypatch.undo()
    assert not store.exists(KEY)
    assert list(store.temp_files()) == []
    assert all_files(root) == []
    assert list(store.keys()) == []
    # the store still works afterwards
    store.put(KEY, b"payload")
    assert store.read(KEY) == b"payload"


def test_failure_after_link_takes_the_blob_back(
    store: FileSystemBlobStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync_fails_on_folder(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            calls["n"] += 1
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_fails_on_folder)
    with pytest.raises(StorageFailure):
        store.put(KEY, b"payload")
    monkeypatch.undo()
    assert calls["n"] >= 1
    assert not store.exists(KEY)
    assert all_files(root) == []


def test_write_failure_leaves_nothing(
    store: FileSystemBlobStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_write(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", broken_write)
    with pytest.raises(StorageFailure, match="No space left"):
        store.put(KEY, b"payload")
    monkeypatch.undo()
    assert all_files(root) == []


def test_short_writes_are_completed(
    store: FileSystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write

    def short_write(fd: int, data: bytes) -> int:
        return real_write(fd, bytes(data)[:7])

    monkeypatch.setattr(os, "write", short_write)
    data = os.urandom(1000)
    info = store.put(KEY, data)
    monkeypatch.undo()
    assert info.size == 1000
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert store.read(KEY) == data


def test_already_exists_leaves_no_temp(store: FileSystemBlobStore) -> None:
    store.put(KEY, b"first")
    with pytest.raises(AlreadyExists):
        store.put(KEY, b"second")
    assert list(store.temp_files()) == []


def test_link_refuses_to_overwrite_a_file_created_meanwhile(
    store: FileSystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process creates the final name between the existence check and the link.
    real_link = os.link

    def racing_link(src: str, dst: str) -> None:
        Path(dst).write_bytes(b"other writer")
        real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    with pytest.raises(AlreadyExists):
        store.put(KEY, b"mine")
    monkeypatch.undo()
    assert store.read(KEY) == b"other writer"
    assert list(store.temp_files()) == []


def test_stale_temp_file_cleanup(store: FileSystemBlobStore, root: Path) -> None:
    store.put(KEY, b"x")
    leaf = store.path_for(KEY).parent
    stale = leaf / ".tmp-0123456789abcdef"
    fresh = leaf / ".tmp-fedcba9876543210"
    stale.write_bytes(b"half written")
    fresh.write_bytes(b"being written")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert set(store.temp_files()) == {stale, fresh}
    assert list(store.keys()) == [KEY]  # temp files are never keys
    assert store.remove_stale_temp_files(older_than_seconds=600) == 1
    assert not stale.exists()
    assert fresh.exists()
    assert store.remove_stale_temp_files(older_than_seconds=0, now=time.time() + 1) == 1
    assert list(store.temp_files()) == []
    assert store.read(KEY) == b"x"


def test_delete_fsyncs_folder(store: FileSystemBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.put(KEY, b"x")
    synced: list[bool] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    store.delete(KEY)
    assert synced == [True]
    store.delete(KEY)
    assert synced == [True]  # absent key: nothing to sync


def test_put_fsyncs_file_then_folders(
    store: FileSystemBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[bool] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    store.put(KEY, b"x")
    # three new folders (facility, two shards): each parent synced, then the file,
    # then the leaf folder after the link.
    assert synced == [True, True, True, False, True]
    synced.clear()
    store.put("chu-nord/" + "0" * 32, b"y")  # facility folder exists already
    assert synced.count(False) == 1
    assert synced[-1] is True


def test_fsync_off(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileSystemBlobStore(root, fsync=False)

    def no_fsync(fd: int) -> None:
        raise AssertionError("fsync called")

    monkeypatch.setattr(os, "fsync", no_fsync)
    store.put(KEY, b"x")
    store.delete(KEY)
    assert not store.exists(KEY)


def test_open_returns_binary_stream(store: FileSystemBlobStore) -> None:
    store.put(KEY, b"0123456789")
    with store.open(KEY) as stream:
        stream.seek(4)
        assert stream.read(3) == b"456"


def test_root_created(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "blobs"
    FileSystemBlobStore(root)
    assert root.is_dir()


def test_file_fsync_failure_removes_temp(
    store: FileSystemBlobStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    seen_temp: list[bool] = []

    def fsync_fails_on_file(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            seen_temp.append(bool(list(store.temp_files())))
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_fails_on_file)
    with pytest.raises(StorageFailure, match="Input/output error"):
        store.put(KEY, b"payload")
    monkeypatch.undo()
    assert seen_temp == [True]  # the temp file existed when the failure happened
    assert list(store.temp_files()) == []
    assert not store.exists(KEY)
    assert all_files(root) == []


def test_a_crashed_put_is_an_incomplete_write_until_removed(store: FileSystemBlobStore) -> None:
    store.put("site-a/" + "a" * 32, b"kept")
    folder = store.path_for("site-a/" + "a" * 32).parent
    crashed = folder / ".tmp-0123456789abcdef0123456789abcdef"
    crashed.write_bytes(b"half")
    old = time.time() - 3600
    os.utime(crashed, (old, old))
    assert store.incomplete_writes() == [crashed.name]
    assert store.remove_incomplete_writes(600) == 1
    assert store.incomplete_writes() == []
    assert store.read("site-a/" + "a" * 32) == b"kept"
