"""The BlobStore contract, run against every backend."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from coffre.errors import AlreadyExists
from coffre.storage import BlobInfo, BlobNotFound, BlobStore, InvalidBlobKey
from coffre.storage.filesystem import FileSystemBlobStore
from coffre.storage.memory import MemoryBlobStore

INVALID_KEYS = [
    "../x",
    "A",
    "/abs",
    "a//b",
    "",
    "x" * 300,
    "a/../b",
    "a/",
    "a\n",
    "a/b/c/d/e",
    "chu-nord/ab~cd",
    "-a",
    "a b",
    "a/.tmp-x",
]


@pytest.fixture(params=["memory", "filesystem"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "memory":
        return MemoryBlobStore()
    return FileSystemBlobStore(tmp_path / "blobs", fsync=True)


def new_key(facility: str = "chu-nord") -> str:
    return f"{facility}/{os.urandom(16).hex()}"


def test_put_read_open_roundtrip(store: BlobStore) -> None:
    key = new_key()
    data = b"DICM" + os.urandom(3000)
    info = store.put(key, data)
    assert info == BlobInfo(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert store.read(key) == data
    with store.open(key) as stream:
        assert stream.read() == data


def test_large_blob_hash_and_size(store: BlobStore) -> None:
    key = new_key()
    data = os.urandom(3 * 1024 * 1024 + 17)  # several write chunks
    info = store.put(key, data)
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert store.read(key) == data


def test_zero_byte_blob(store: BlobStore) -> None:
    key = new_key()
    info = store.put(key, b"")
    assert info.size == 0
    assert info.sha256 == hashlib.sha256(b"").hexdigest()
    assert store.exists(key)
    assert store.read(key) == b""
    assert list(store.keys()) == [key]


def test_put_twice_raises_and_keeps_first(store: BlobStore) -> None:
    key = new_key()
    store.put(key, b"first")
    with pytest.raises(AlreadyExists):
        store.put(key, b"second")
    assert store.read(key) == b"first"
    assert list(store.keys()) == [key]


def test_exists_and_delete_idempotent(store: BlobStore) -> None:
    key = new_key()
    assert not store.exists(key)
    store.delete(key)  # absent: no-op
    store.put(key, b"x")
    assert store.exists(key)
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)
    assert list(store.keys()) == []
    with pytest.raises(BlobNotFound):
        store.read(key)


def test_key_can_be_reused_after_delete(store: BlobStore) -> None:
    key = new_key()
    store.put(key, b"one")
    store.delete(key)
    store.put(key, b"two")
    assert store.read(key) == b"two"


def test_keys_lists_exactly_what_was_put(store: BlobStore) -> None:
    assert list(store.keys()) == []
    expected = {new_key("chu-nord") for _ in range(20)}
    expected |= {new_key("clinique-sud") for _ in range(5)}
    expected |= {"a", "a/b", "a/b/c/d", "z" * 63 + "/" + "0" * 63 + "/" + "1" * 63 + "/" + "2" * 63}
    for key in expected:
        store.put(key, key.encode())
    gone = sorted(expected)[0]
    store.delete(gone)
    expected.discard(gone)
    listed = list(store.keys())
    assert len(listed) == len(expected)
    assert set(listed) == expected
    for key in expected:
        assert store.read(key) == key.encode()


def test_missing_key(store: BlobStore) -> None:
    key = new_key()
    with pytest.raises(BlobNotFound):
        store.read(key)
    with pytest.raises(BlobNotFound):
        store.open(key)
    assert not store.exists(key)


@pytest.mark.parametrize("key", INVALID_KEYS)
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s, k: s.put(k, b"x"), id="put"),
        pytest.param(lambda s, k: s.open(k), id="open"),
        pytest.param(lambda s, k: s.read(k), id="read"),
        pytest.param(lambda s, k: s.delete(k), id="delete"),
        pytest.param(lambda s, k: s.exists(k), id="exists"),
    ],
)
def test_invalid_keys_rejected(
    store: BlobStore, key: str, call: Callable[[BlobStore, str], object]
) -> None:
    with pytest.raises(InvalidBlobKey):
        call(store, key)
    assert list(store.keys()) == []


def test_invalid_key_rejected_even_if_a_valid_one_exists(store: BlobStore) -> None:
    store.put("a/b", b"x")
    for bad in ("a/b/", "a/b\n", "./a/b", "a/./b"):
        with pytest.raises(InvalidBlobKey):
            store.read(bad)
        with pytest.raises(InvalidBlobKey):
            store.exists(bad)


def test_concurrent_puts_distinct_keys(store: BlobStore) -> None:
    per_thread = 25
    barrier = threading.Barrier(8)
    written: dict[str, bytes] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                # same facility, so threads race to create the same shard folders
                key = new_key("chu-nord")
                data = f"{n}-{i}".encode() + os.urandom(n * 100 + i)
                info = store.put(key, data)
                assert info.sha256 == hashlib.sha256(data).hexdigest()
                with lock:
                    written[key] = data
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(written) == 8 * per_thread
    assert set(store.keys()) == set(written)
    for key, data in written.items():
        assert store.read(key) == data


def test_concurrent_puts_same_key_one_winner(store: BlobStore) -> None:
    key = new_key()
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        barrier.wait()
        try:
            store.put(key, bytes([n]) * 1000)
            result = f"ok{n}"
        except AlreadyExists:
            result = "exists"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o.startswith("ok")]
    assert len(winners) == 1
    assert outcomes.count("exists") == 7
    assert store.read(key) == bytes([int(winners[0][2:])]) * 1000
    assert list(store.keys()) == [key]


def test_successful_puts_leave_no_incomplete_writes(store: BlobStore) -> None:
    for i in range(5):
        store.put(f"site-a/{i:032x}", b"x" * i)
    assert store.incomplete_writes() == []
    assert store.remove_incomplete_writes(0) == 0
    assert len(list(store.keys())) == 5


def test_a_given_digest_is_recorded_and_the_bytes_are_stored(store: BlobStore) -> None:
    data = b"pixels" * 1000
    digest = hashlib.sha256(data).hexdigest()
    info = store.put("site-a/" + "b" * 32, data, sha256=digest)
    assert (info.sha256, info.size) == (digest, len(data))
    assert store.read("site-a/" + "b" * 32) == data
