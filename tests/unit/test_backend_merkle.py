"""Unit tests of sandboxfs.backend.merkle: checking Directory blobs, resolving shared trees, diffing.

Covers every rule a blob must follow (hostile blobs: wrong bytes, unsorted or
repeated names, '..', '/', NUL, bad digests, undecodable bytes), refusals
remembered across Pushes, resolving to one shared object per digest, reporting
every missing directory at once, size disagreements, deep trees, and diff's
answers and its cost (shared subtrees are never opened); and what a digest
and a hash function may be (``digests``).

Pure: no I/O.
"""

from __future__ import annotations

import hashlib

import pytest

from sandboxfs.backend.digests import is_hash, require_sha256
from sandboxfs.backend.merkle import (
    EMPTY_DIRECTORY_HASH, Change, DirectoryStore, FileLeaf, MerkleDir, SymlinkLeaf, diff,
    file_digests, parse_directory, walk,
)
from sandboxfs.backend.proto.remote_execution_pb2 import (
    Digest, Directory, DirectoryNode, FileNode, NodeProperties, SymlinkNode,
)
from sandboxfs.errors import InvalidRequestError


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Exe(bytes):
    """File content that is executable, in a tree spec."""


class Link(str):
    """A symlink target, in a tree spec."""


def encode_tree(spec: dict, blobs: dict[str, bytes]) -> tuple[str, int]:
    """Serialize ``spec`` (name -> bytes | Exe | Link | dict) into ``blobs``; the root's digest."""
    directory = Directory()
    for name in sorted(spec, key=str.encode):
        value = spec[name]
        if isinstance(value, dict):
            child, size = encode_tree(value, blobs)
            directory.directories.append(DirectoryNode(name=name, digest=Digest(hash=child, size_bytes=size)))
        elif isinstance(value, Link):
            directory.symlinks.append(SymlinkNode(name=name, target=str(value)))
        else:
            directory.files.append(FileNode(name=name, digest=Digest(hash=sha(value), size_bytes=len(value)),
                                            is_executable=isinstance(value, Exe)))
    blob = directory.SerializeToString()
    blobs[sha(blob)] = blob
    return sha(blob), len(blob)


def store_with(spec: dict) -> tuple[DirectoryStore, str, int]:
    blobs: dict[str, bytes] = {}
    root, size = encode_tree(spec, blobs)
    store = DirectoryStore()
    assert store.add_blobs(blobs) == []
    return store, root, size


def resolved(store: DirectoryStore, root: str, size: int) -> MerkleDir:
    result = store.resolve(root, size)
    assert result.missing == ()
    return result.root


TOOLCHAIN = {"bin": {"cc": Exe(b"#!cc"), "ld": Exe(b"#!ld")},
             "include": {"stdio.h": b"int printf();", "sys": {"types.h": b"typedef"}}}


# -- resolving ---------------------------------------------------------------------------


def test_a_tree_resolves_with_its_leaves_and_counts():
    store, root, size = store_with({"main.c": b"int main;", "tc": TOOLCHAIN, "cc": Link("tc/bin/cc")})
    tree = resolved(store, root, size)
    assert list(tree.entries) == [b"cc", b"main.c", b"tc"]  # one name order across the kinds
    assert tree.entries[b"main.c"] == FileLeaf(sha(b"int main;"), 9, False)
    assert tree.entries[b"cc"] == SymlinkLeaf(b"tc/bin/cc")
    tc = tree.entries[b"tc"]
    assert tc.entries[b"bin"].entries[b"cc"] == FileLeaf(sha(b"#!cc"), 4, True)
    assert (tc.subdirs, tc.nlink, tc.files, tc.nodes) == (2, 4, 4, 7)
    assert tc.content_bytes == 4 + 4 + 13 + 7
    assert (tree.files, tree.nodes, tree.subdirs) == (5, 10, 1)
    assert tree.blob_size == size and tree.digest == root


def test_one_digest_gives_one_shared_object_built_once():
    blobs: dict[str, bytes] = {}
    roots = [encode_tree({"tc": TOOLCHAIN, "src": {f"a{n}.c": str(n).encode()}}, blobs)
             for n in range(1000)]
    store = DirectoryStore()
    store.add_blobs(blobs)
    trees = [resolved(store, *root) for root in roots]
    toolchains = {id(tree.entries[b"tc"]) for tree in trees}
    assert len(toolchains) == 1  # a thousand sandboxes, one toolchain tree
    built = store.stats()["built"]
    assert built == 1000 + 1000 + 4  # roots, src dirs, the toolchain's four directories
    assert resolved(store, *roots[0]) is trees[0]
    assert store.stats()["built"] == built


def test_every_missing_directory_is_reported_at_once():
    blobs: dict[str, bytes] = {}
    root, size = encode_tree({"a": {"deep": {"x": b"1"}}, "b": {"y": b"2"}, "c": {"z": b"3"}}, blobs)
    tree_blob = Directory.FromString(blobs[root])
    digest_of = {node.name: node.digest.hash for node in tree_blob.directories}
    deep = Directory.FromString(blobs[digest_of["a"]]).directories[0].digest.hash
    store = DirectoryStore()
    store.add_blobs({d: b for d, b in blobs.items() if d not in (digest_of["b"], digest_of["c"], deep)})
    assert store.resolve(root, size).missing == tuple(sorted((digest_of["b"], digest_of["c"], deep)))
    assert store.resolve(root, size).root is None
    store.add_blobs(blobs)
    assert resolved(store, root, size).entries[b"a"].entries[b"deep"].files == 1


def test_a_root_never_pushed_is_missing_itself():
    store = DirectoryStore()
    assert store.resolve("ab" * 32, 10).missing == ("ab" * 32,)


def test_the_empty_directory_needs_no_push():
    tree = resolved(DirectoryStore(), EMPTY_DIRECTORY_HASH, 0)
    assert tree.entries == {} and tree.nlink == 2
    store, root, size = store_with({"empty": {}})
    assert resolved(store, root, size).entries[b"empty"].digest == EMPTY_DIRECTORY_HASH


def test_a_tree_deeper_than_the_python_stack_resolves():
    blobs: dict[str, bytes] = {}
    child, child_size = EMPTY_DIRECTORY_HASH, 0  # built bottom-up here: encode_tree recurses
    for _ in range(3000):
        node = DirectoryNode(name="d", digest=Digest(hash=child, size_bytes=child_size))
        blob = Directory(directories=[node]).SerializeToString()
        child, child_size = sha(blob), len(blob)
        blobs[child] = blob
    store = DirectoryStore()
    store.add_blobs(blobs)
    tree = resolved(store, child, child_size)
    assert tree.nodes == 3000 and sum(1 for _ in walk(tree)) == 3000


def test_a_size_that_disagrees_with_the_blob_is_an_error():
    store, root, size = store_with({"a": {"x": b"1"}})
    with pytest.raises(InvalidRequestError, match=f"the input root gives directory {root} a size of "
                                                  f"{size + 1} bytes; its blob is {size} bytes"):
        store.resolve(root, size + 1)
    child = Directory(files=[file_node("x", b"1")]).SerializeToString()
    lying = Directory(directories=[DirectoryNode(name="a", digest=Digest(hash=sha(child), size_bytes=99))]
                      ).SerializeToString()
    store.add_blobs({sha(lying): lying})
    with pytest.raises(InvalidRequestError, match=f"directory {sha(lying)} \\(entry 'a'\\) gives directory "
                                                  f"{sha(child)} a size of 99 bytes"):
        store.resolve(sha(lying), len(lying))


def test_a_malformed_root_digest_is_an_error():
    with pytest.raises(InvalidRequestError, match="input root digest 'ABC' is 3 characters"):
        DirectoryStore().resolve("ABC", 0)


def test_node_properties_are_parsed_not_refused():
    blob = Directory(node_properties=NodeProperties(unix_mode={"value": 0o755})).SerializeToString()
    assert parse_directory(sha(blob), blob).node_properties.unix_mode.value == 0o755


# -- hostile blobs -----------------------------------------------------------------------


def file_node(name: str, data: bytes = b"x", **digest) -> FileNode:
    return FileNode(name=name, digest=Digest(**({"hash": sha(data), "size_bytes": len(data)} | digest)))


def dir_node(name: str) -> DirectoryNode:
    return DirectoryNode(name=name, digest=Digest(hash=EMPTY_DIRECTORY_HASH, size_bytes=0))


def link(name: str, target: str = "t") -> SymlinkNode:
    return SymlinkNode(name=name, target=target)


HOSTILE = {  # case -> (the blob's Directory, what the error says)
    "unsorted files": (Directory(files=[file_node("b"), file_node("a")]),
                       "file names are not sorted: 'a' comes after 'b'"),
    "unsorted directories": (Directory(directories=[dir_node("z"), dir_node("y")]),
                             "directory names are not sorted: 'y' comes after 'z'"),
    "sorted by UTF-16, not by code point": (
        Directory(files=[file_node("\U0001f600"), file_node("\uff5e")]),
        "not sorted: '\uff5e' comes after"),
    "a repeated file": (Directory(files=[file_node("a"), file_node("a")]),
                        "file 'a' is listed twice"),
    "a repeated symlink": (Directory(symlinks=[link("l")] * 2), "symlink 'l' is listed twice"),
    "a file and a directory": (Directory(files=[file_node("a")], directories=[dir_node("a")]),
                               "'a' is both a file and a directory"),
    "a directory and a symlink": (Directory(directories=[dir_node("a")], symlinks=[link("a")]),
                                  "'a' is both a directory and a symlink"),
    "dot-dot": (Directory(directories=[dir_node("..")]), "directory name '..' is '..'"),
    "dot": (Directory(files=[file_node(".")]), "file name '.' is '.'"),
    "empty name": (Directory(symlinks=[link("")]), "symlink name '' is empty"),
    "a slash": (Directory(files=[file_node("a/b")]), "file name 'a/b' contains '/'"),
    "NUL": (Directory(files=[file_node("a\0b")]), "file name 'a\\\\x00b' contains NUL"),
    "an uppercase hash": (Directory(files=[file_node("a", hash="AB" * 32)]),
                          "digest hash 'ABAB.*' is not 64"),
    "a short hash": (Directory(files=[file_node("a", hash="ab")]),
                     "digest hash 'ab' is 2 characters"),
    "no digest": (Directory(directories=[DirectoryNode(name="d")]),
                  "directory 'd': digest hash '' is 0 char"),
    "a negative size": (Directory(files=[file_node("a", size_bytes=-1)]),
                        "file 'a': digest size -1 is negative"),
    "an empty symlink target": (Directory(symlinks=[link("l", "")]),
                                "symlink 'l' has an empty target"),
    "NUL in a symlink target": (Directory(symlinks=[link("l", "a\0")]),
                                "target that contains NUL"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_blobs_are_refused_naming_the_digest_and_the_rule(case):
    directory, why = HOSTILE[case]
    blob = directory.SerializeToString()
    with pytest.raises(InvalidRequestError, match=f"directory {sha(blob)}: .*{why}") as caught:
        DirectoryStore().add(sha(blob), blob)
    assert caught.value.details == {"digest": sha(blob)}


def test_names_in_code_point_order_are_accepted():
    blob = Directory(files=[file_node("Z"), file_node("a"), file_node("z"), file_node("\xe9"),
                            file_node("\uff5e"), file_node("\U0001f600")]).SerializeToString()
    parse_directory(sha(blob), blob)


def test_a_blob_whose_bytes_do_not_match_its_key_is_refused():
    blob = Directory(files=[file_node("a")]).SerializeToString()
    other = "0" * 64
    with pytest.raises(InvalidRequestError,
                       match=f"directory {other}: its {len(blob)} bytes hash to {sha(blob)}"):
        DirectoryStore().add(other, blob)


def test_a_key_that_is_not_a_digest_is_refused():
    with pytest.raises(InvalidRequestError, match="directory xyz: the key is 3 characters"):
        DirectoryStore().add("xyz", b"")


def test_undecodable_bytes_are_refused():
    blob = b"\x0a\xff"  # field 1, length 255, no bytes follow
    with pytest.raises(InvalidRequestError, match=f"directory {sha(blob)}: not a serialized Directory"):
        DirectoryStore().add(sha(blob), blob)


def test_a_refused_blob_fails_the_create_that_needs_it_until_good_bytes_come():
    good = Directory(files=[file_node("a")]).SerializeToString()
    node = DirectoryNode(name="d", digest=Digest(hash=sha(good), size_bytes=len(good)))
    root = Directory(directories=[node]).SerializeToString()
    store = DirectoryStore()
    errors = store.add_blobs({sha(good): b"tampered", sha(root): root})
    assert [e.details["digest"] for e in errors] == [sha(good)]  # the root was kept all the same
    assert store.stats()["rejected"] == 1
    with pytest.raises(InvalidRequestError, match=f"needs directory {sha(good)}, refused when pushed: "
                                                  f"directory {sha(good)}: its 8 bytes hash to"):
        store.resolve(sha(root), len(root))
    assert store.add_blobs({sha(good): good}) == []
    assert resolved(store, sha(root), len(root)).entries[b"d"].files == 1
    assert store.stats()["rejected"] == 0


def test_bad_bytes_for_a_digest_already_held_change_nothing():
    store, root, size = store_with({"a": b"1"})
    with pytest.raises(InvalidRequestError):
        store.add(root, b"other")
    assert resolved(store, root, size).files == 1 and store.stats()["rejected"] == 0


# -- walking and diffing -------------------------------------------------------------------


def test_walk_and_file_digests():
    store, root, size = store_with({"x": b"1", "a": {"y": b"2", "tc": TOOLCHAIN}, "tc": TOOLCHAIN})
    tree = resolved(store, root, size)
    paths = [path for path, _ in walk(tree)]
    assert paths[:3] == [b"a", b"tc", b"x"] and b"a/tc/include/sys/types.h" in paths
    assert len(paths) == tree.nodes
    contents = (b"1", b"2", b"#!cc", b"#!ld", b"int printf();", b"typedef")
    assert file_digests([tree]) == {sha(data) for data in contents}


def trees(old_spec: dict, new_spec: dict) -> tuple[MerkleDir, MerkleDir]:
    blobs: dict[str, bytes] = {}
    old, new = encode_tree(old_spec, blobs), encode_tree(new_spec, blobs)
    store = DirectoryStore()
    store.add_blobs(blobs)
    return resolved(store, *old), resolved(store, *new)


def test_diff_of_equal_trees_is_empty():
    old, new = trees({"a": {"b": b"1"}}, {"a": {"b": b"1"}})
    assert list(diff(old, new)) == []


def test_diff_names_each_changed_leaf_and_each_whole_subtree_once():
    old, new = trees(
        {"same": TOOLCHAIN, "src": {"a.c": b"1", "b.c": b"2", "run": b"x", "deep": {"k": b"1"}},
         "gone": TOOLCHAIN, "link": Link("a"), "kind": b"file"},
        {"same": TOOLCHAIN,
         "src": {"a.c": b"1", "b.c": b"22", "run": Exe(b"x"), "deep": {"k": b"1", "n": b"2"}},
         "new": {"f": b"1"}, "link": Link("b"), "kind": {"f": b"1"}},
    )
    changes = list(diff(old, new))
    assert [(c.path, type(c.old).__name__, type(c.new).__name__) for c in changes] == [
        (b"gone", "MerkleDir", "NoneType"),  # one Change for the whole toolchain, not one per file
        (b"kind", "FileLeaf", "MerkleDir"),
        (b"link", "SymlinkLeaf", "SymlinkLeaf"),
        (b"new", "NoneType", "MerkleDir"),
        (b"src/b.c", "FileLeaf", "FileLeaf"),
        (b"src/deep/n", "NoneType", "FileLeaf"),
        (b"src/run", "FileLeaf", "FileLeaf"),  # only the exec bit changed
    ]
    assert changes[2] == Change(b"link", SymlinkLeaf(b"a"), SymlinkLeaf(b"b"))


class Untouchable(dict):
    """Entries that fail if anything looks inside them."""

    def _refuse(self, *args):
        raise AssertionError("diff opened a subtree both trees share")

    keys = items = get = __getitem__ = __iter__ = __contains__ = _refuse  # values: counted once


def test_diff_never_opens_a_subtree_both_trees_share():
    shared = MerkleDir("ab" * 32, 10, Untouchable())
    twin = MerkleDir("ab" * 32, 10, Untouchable())  # same digest, another store's object
    old = MerkleDir("01" * 32, 1, {b"tc": shared, b"a": FileLeaf("cd" * 32, 1, False)})
    new = MerkleDir("02" * 32, 1, {b"tc": twin, b"a": FileLeaf("ef" * 32, 1, False)})
    assert [c.path for c in diff(old, new)] == [b"a"]
    assert list(diff(shared, twin)) == []


# -- digests ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "SHA-256", "SHA256", "sha256"])
def test_sha256_manifests_are_accepted(name):
    require_sha256(name)


@pytest.mark.parametrize("name", ["SHA-1", "BLAKE3", "MD5"])
def test_other_hash_functions_are_refused(name):
    with pytest.raises(InvalidRequestError, match=f"hash function '{name}' is not supported; only SHA-256"):
        require_sha256(name)


def test_a_digest_hash_is_64_lowercase_hex_digits():
    assert is_hash(sha(b"")) and not is_hash(sha(b"").upper()) and not is_hash(sha(b"") + "0")
    assert not is_hash(None) and not is_hash("g" * 64)
