"""Unit tests of sandboxfs.backend.store: content kept once by digest, verified, bounded.

Covers the layout and mode of stored files, refusals (wrong bytes, unreadable
or non-regular sources, bad keys) that leave nothing behind, capture taken at
once (a source changed or removed afterwards does not matter) and never as a
hard link, the reflink path and its fallback, the budget with LRU eviction
that spares pinned content, all-or-nothing pins, single-use content, the
memory of evicted digests, a fresh store per process, and concurrent use.

Runs on a temporary directory: no mounts.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading

import pytest

from sandboxfs.backend import store as store_module
from sandboxfs.backend.store import ContentStore, clone_file
from sandboxfs.errors import InvalidRequestError


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


def held_files(store: ContentStore) -> list[str]:
    """Every file under the store's directories (cas/ and tmp/)."""
    return sorted(os.path.relpath(os.path.join(top, name), store.state_dir)
                  for top, _, names in os.walk(store.state_dir) for name in names)


def source(tmp_path, data: bytes, name: str = "src") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# -- taking content in ---------------------------------------------------------------------


def test_inline_content_is_kept_once_read_only_under_its_digest(state):
    store = ContentStore(state)
    store.put_inline(sha(b"hello"), b"hello")
    store.put_inline(sha(b"hello"), b"hello")
    path = store.path(sha(b"hello"))
    assert path == str(state / "cas" / sha(b"hello")[:2] / sha(b"hello"))
    with open(path, "rb") as f:
        assert f.read() == b"hello"
    assert os.stat(path).st_mode & 0o7777 == 0o444
    assert store.size(sha(b"hello")) == 5
    assert held_files(store) == [os.path.relpath(path, state)]
    stats = store.stats()
    assert (stats["bytes"], stats["files"], stats["inline"]) == (5, 1, 1)


def test_inline_bytes_that_do_not_match_are_refused_and_nothing_is_kept(state):
    store = ContentStore(state)
    digest = sha(b"expected")
    with pytest.raises(InvalidRequestError, match=f"content {digest}: the 5 inline bytes hash to "
                                                  f"{sha(b'other')}; nothing kept") as caught:
        store.put_inline(digest, b"other")
    assert caught.value.details == {"digest": digest}
    assert held_files(store) == [] and digest not in store
    assert "inline bytes hash to" in store.rejection(digest)
    store.put_inline(digest, b"expected")  # good bytes later replace the refusal
    assert store.rejection(digest) is None and digest in store


@pytest.mark.parametrize("key, why", [("ABC", "3 characters"), ("G" * 64, "not 64 lowercase hex")])
def test_a_key_that_is_not_a_digest_is_refused(state, key, why):
    with pytest.raises(InvalidRequestError, match=f"content '{key}': the key is {why}"):
        ContentStore(state).put_inline(key, b"")


def test_capture_reads_now_so_later_changes_to_the_source_do_not_matter(state, tmp_path):
    store = ContentStore(state)
    path = source(tmp_path, b"version 1")
    store.capture(sha(b"version 1"), path)
    with open(path, "r+b") as f:  # rewritten in place, as a rebuild reuses a path
        f.write(b"VERSION 2")
    with open(store.path(sha(b"version 1")), "rb") as f:
        assert f.read() == b"version 1"
    os.unlink(path)
    with open(store.path(sha(b"version 1")), "rb") as f:
        assert f.read() == b"version 1"


def test_capture_never_hard_links(state, tmp_path):
    store = ContentStore(state)
    path = source(tmp_path, b"data")
    store.capture(sha(b"data"), path)
    assert os.stat(path).st_nlink == 1
    assert os.stat(store.path(sha(b"data"))).st_ino != os.stat(path).st_ino


def test_capture_of_a_file_that_changed_before_the_push_is_refused(state, tmp_path):
    store = ContentStore(state)
    path = source(tmp_path, b"edited mid-build")
    digest = sha(b"what Bazel hashed")
    with pytest.raises(InvalidRequestError, match=f"content {digest}: {path} holds 16 bytes that hash to "
                                                  f"{sha(b'edited mid-build')} \\(changed since Bazel"):
        store.capture(digest, path)
    assert held_files(store) == [] and store.rejection(digest)


def test_capture_follows_a_symlinked_location(state, tmp_path):
    store = ContentStore(state)
    target = source(tmp_path, b"runfile")
    os.symlink(target, tmp_path / "link")
    store.capture(sha(b"runfile"), tmp_path / "link")
    assert os.path.getsize(store.path(sha(b"runfile"))) == 7


def test_capture_of_what_cannot_be_read_is_refused(state, tmp_path):
    store = ContentStore(state)
    with pytest.raises(InvalidRequestError, match=f"cannot open {tmp_path}/nope: ENOENT"):
        store.capture(sha(b"x"), tmp_path / "nope")
    with pytest.raises(InvalidRequestError, match=f"{tmp_path} is not a regular file"):
        store.capture(sha(b"y"), tmp_path)
    assert held_files(store) == []


def test_a_held_digest_is_not_read_again(state, tmp_path):
    store = ContentStore(state)
    store.put_inline(sha(b"x"), b"x")
    store.capture(sha(b"x"), tmp_path / "does-not-exist")  # content by digest never changes
    assert store.stats()["copies"] == 0


def test_a_failed_write_leaves_nothing_behind(state, monkeypatch):
    store = ContentStore(state)

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space"):
        store.put_inline(sha(b"x"), b"x")
    monkeypatch.undo()
    assert held_files(store) == [] and sha(b"x") not in store


def test_a_failed_copy_is_refused_and_leaves_nothing_behind(state, tmp_path, monkeypatch):
    store = ContentStore(state)
    path = source(tmp_path, b"data")
    real_read = os.read

    def broken(fd, n):
        if fd > 2:
            raise OSError(errno.EIO, "Input/output error")
        return real_read(fd, n)

    monkeypatch.setattr(os, "read", broken)
    with pytest.raises(InvalidRequestError, match=f"cannot copy {path}: EIO"):
        store.capture(sha(b"data"), path)
    monkeypatch.undo()
    assert held_files(store) == []


# -- reflinks -------------------------------------------------------------------------------


def fake_clone(data_of_clone=None):
    """A stand-in for FICLONE: copies the bytes (or writes ``data_of_clone``) and says it cloned."""
    calls = []

    def clone(src_fd, dst_fd):
        calls.append((src_fd, dst_fd))
        data = os.pread(src_fd, 1 << 20, 0) if data_of_clone is None else data_of_clone
        os.pwrite(dst_fd, data, 0)
        return True

    return clone, calls


def test_a_reflink_is_used_where_the_filesystem_makes_one(state, tmp_path, monkeypatch):
    clone, calls = fake_clone()
    monkeypatch.setattr(store_module, "clone_file", clone)
    store = ContentStore(state)
    store.capture(sha(b"data"), source(tmp_path, b"data"))
    assert len(calls) == 1
    stats = store.stats()
    assert (stats["reflinks"], stats["copies"]) == (1, 0)


def test_a_reflink_is_verified_like_a_copy(state, tmp_path, monkeypatch):
    clone, _ = fake_clone(b"not the data")
    monkeypatch.setattr(store_module, "clone_file", clone)
    store = ContentStore(state)
    with pytest.raises(InvalidRequestError, match=f"hash to {sha(b'not the data')}"):
        store.capture(sha(b"data"), source(tmp_path, b"data"))
    assert held_files(store) == []


def test_a_filesystem_without_reflinks_gets_copies_and_is_not_asked_again(state, tmp_path, monkeypatch):
    calls = []

    def no_clone(src_fd, dst_fd):
        calls.append(src_fd)
        return False

    monkeypatch.setattr(store_module, "clone_file", no_clone)
    store = ContentStore(state)
    store.capture(sha(b"a"), source(tmp_path, b"a", "a"))
    store.capture(sha(b"b"), source(tmp_path, b"b", "b"))
    assert len(calls) == 1 and store.stats()["copies"] == 2


@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY])
def test_clone_file_says_no_where_reflinks_cannot_be_made(monkeypatch, code):
    def refuse(fd, request, arg):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(store_module.fcntl, "ioctl", refuse)
    assert clone_file(3, 4) is False


def test_clone_file_lets_real_errors_out(monkeypatch):
    def fail(fd, request, arg):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(store_module.fcntl, "ioctl", fail)
    with pytest.raises(OSError, match="Input/output"):
        clone_file(3, 4)


def test_clone_file_on_this_filesystem(tmp_path):
    src, dst = source(tmp_path, b"bytes", "a"), tmp_path / "b"
    with open(src, "rb") as s, open(dst, "wb") as d:
        cloned = clone_file(s.fileno(), d.fileno())
    assert dst.read_bytes() == (b"bytes" if cloned else b"")


# -- budget, pins, retention -------------------------------------------------------------------


def put(store: ContentStore, *datas: bytes, single_use: bool = False) -> None:
    for data in datas:
        store.put_inline(sha(data), data, single_use=single_use)


def test_least_recently_used_content_is_evicted_over_budget(state):
    store = ContentStore(state, budget_bytes=10)
    put(store, b"aaaa", b"bbbb")
    put(store, b"aaaa")  # pushed again: now the most recent
    put(store, b"cccc")
    assert sha(b"bbbb") not in store and os.listdir(state / "cas" / sha(b"bbbb")[:2]) == []
    assert sha(b"aaaa") in store and sha(b"cccc") in store
    assert store.was_evicted(sha(b"bbbb")) and not store.was_evicted(sha(b"aaaa"))
    stats = store.stats()
    assert (stats["bytes"], stats["files"], stats["evictions"], stats["evicted_bytes"]) == (8, 2, 1, 4)


def test_pinned_content_is_never_evicted(state):
    store = ContentStore(state, budget_bytes=10)
    for data in (b"pinned1", b"pinned2"):
        put(store, data)
        assert store.pin("s1", [sha(data)]) == []
    put(store, b"free1", b"free2")
    assert sha(b"pinned1") in store and sha(b"pinned2") in store
    assert sha(b"free1") not in store  # evicted; the newest one is kept for the Create to come
    assert store.stats()["bytes"] == 19 and store.stats()["pinned_bytes"] == 14
    store.unpin("s1")
    assert store.stats()["bytes"] <= 10 and sha(b"free2") in store


def test_the_content_just_taken_in_is_kept_even_alone_over_budget(state):
    store = ContentStore(state, budget_bytes=3)
    put(store, b"much too big")
    assert sha(b"much too big") in store


def test_a_pin_with_a_missing_digest_pins_nothing(state):
    store = ContentStore(state, budget_bytes=8)
    put(store, b"have")
    assert store.pin("s1", [sha(b"have"), sha(b"lack")]) == [sha(b"lack")]
    assert store.stats()["pinned_files"] == 0
    put(store, b"next", b"more")
    assert sha(b"have") not in store  # it was not pinned, so it could go


def test_single_use_content_goes_when_its_last_sandbox_unpins(state):
    store = ContentStore(state)
    put(store, b"params", single_use=True)
    store.pin("s1", [sha(b"params")])
    store.pin("s2", [sha(b"params")])
    store.unpin("s1")
    assert sha(b"params") in store
    store.unpin("s2")
    assert sha(b"params") not in store and held_files(store) == []
    assert store.was_evicted(sha(b"params")) and store.stats()["single_use_dropped"] == 1


def test_content_pushed_for_reuse_too_is_not_single_use(state):
    store = ContentStore(state)
    put(store, b"shared", single_use=True)
    put(store, b"shared")
    store.pin("s1", [sha(b"shared")])
    store.unpin("s1")
    assert sha(b"shared") in store


def test_reuse_content_stays_after_unpin(state):
    store = ContentStore(state)
    put(store, b"lib")
    store.pin("s1", [sha(b"lib")])
    store.unpin("s1")
    store.unpin("never-pinned")
    assert sha(b"lib") in store and store.stats()["sandboxes"] == 0


def test_evicted_content_put_again_is_no_longer_evicted(state):
    store = ContentStore(state, budget_bytes=4)
    put(store, b"aaaa", b"bbbb")
    assert store.was_evicted(sha(b"aaaa"))
    put(store, b"aaaa")
    assert not store.was_evicted(sha(b"aaaa")) and store.was_evicted(sha(b"bbbb"))


# -- lifetime and threads --------------------------------------------------------------------


def test_a_new_store_starts_empty_and_leaves_other_files_alone(state):
    put(ContentStore(state), b"old")
    (state / "keep.txt").write_text("not ours")
    store = ContentStore(state)
    assert sha(b"old") not in store and held_files(store) == ["keep.txt"]


def test_concurrent_puts_and_captures_keep_one_file_per_digest(state, tmp_path):
    store = ContentStore(state, budget_bytes=1 << 30)
    datas = [str(n % 50).encode() * 1000 for n in range(400)]
    paths = [source(tmp_path, data, f"s{n}") for n, data in enumerate(datas)]

    def work(offset: int) -> None:
        for n in range(offset, len(datas), 4):
            if n % 2:
                store.capture(sha(datas[n]), paths[n])
            else:
                store.put_inline(sha(datas[n]), datas[n])
            store.pin(f"s{offset}", [sha(datas[n])])

    threads = [threading.Thread(target=work, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    distinct = {sha(data) for data in datas}
    assert len(held_files(store)) == len(distinct) == store.stats()["files"]
    assert store.stats()["bytes"] == sum(len(d) for d in {sha(d): d for d in datas}.values())
    for digest in distinct:
        with open(store.path(digest), "rb") as f:
            assert sha(f.read()) == digest
