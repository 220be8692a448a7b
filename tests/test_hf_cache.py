"""The Hugging Face cache export, read back by the real huggingface_hub, offline:
what it finds is byte for byte what the store holds, through the store's own
inodes, and nothing the export does leaves the cache or follows a planted link."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import constants as hf_constants

from arw_models.config import DEFAULTS, Settings, from_env
from arw_models.store import hfcache
from arw_models.store.hfcache import InvalidExport, UnsafeCache, export

REPO = "acme/tiny-model"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
FILES = {
    "model.safetensors": os.urandom(70_000),
    "tokenizer/nested/vocab.json": b'{"a": 1, "b": 2}\n' * 50,
    "config.json": b'{"model_type": "tiny"}\n',  # small: not in LFS, named by its git blob id
}
SMALL = {"config.json"}


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def etag(path: str) -> str:
    return git_oid(FILES[path]) if path in SMALL else hashlib.sha256(FILES[path]).hexdigest()


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # Read by huggingface_hub at import; its constant is set as well, for a process
    # that imported it before this test.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def store(tmp_path: Path) -> dict[str, Path]:
    """The store's blobs, each file's bytes once, named by SHA-256 as the store names them."""
    blobs = tmp_path / "state" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    held = {}
    for path, data in FILES.items():
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        held[path] = blob
    return held


def entries(store: dict[str, Path]) -> list[tuple[str, Path, str]]:
    return [(path, blob, etag(path)) for path, blob in store.items()]


def run(cache: Path, store: dict[str, Path], revision: str = "main", commit: str = COMMIT) -> str:
    return export(cache, repo_type="model", repo_id=REPO, commit=commit, revision=revision, files=entries(store))


def no_link(*args: object, **kwargs: object) -> None:
    """``hfcache.link`` on a file system that makes no hard link."""
    raise OSError(errno.EXDEV, "Invalid cross-device link")


def every_name(root: Path) -> Iterator[str]:
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            yield os.path.relpath(os.path.join(folder, name), root)


def test_huggingface_hub_finds_the_export_by_branch_and_by_commit(tmp_path: Path,
                                                                  store: dict[str, Path]) -> None:
    cache = tmp_path / "hf"
    snapshot = run(cache, store)
    repo = cache / "models--acme--tiny-model"
    assert snapshot == str(repo / "snapshots" / COMMIT)
    assert (repo / "refs" / "main").read_bytes() == COMMIT.encode()

    for revision in ("main", COMMIT):
        found = huggingface_hub.snapshot_download(REPO, revision=revision, cache_dir=cache, local_files_only=True)
        assert Path(found) == Path(snapshot)
        for path, data in FILES.items():
            assert (Path(found) / path).read_bytes() == data
            one = huggingface_hub.hf_hub_download(REPO, path, revision=revision, cache_dir=cache,
                                                  local_files_only=True)
            assert Path(one).read_bytes() == data

    for path, blob in store.items():
        # The cache's blob is the store's own inode: no second copy on the disk.
        assert os.stat(repo / "blobs" / etag(path)).st_ino == os.stat(blob).st_ino
        # Relative links, as huggingface_hub makes them: the cache can be moved.
        depth = path.count("/") + 2
        assert os.readlink(repo / "snapshots" / COMMIT / path) == "../" * depth + "blobs/" + etag(path)
    assert sorted(os.listdir(repo / "blobs")) == sorted(etag(p) for p in FILES)


def test_a_pull_request_ref_is_nested_as_the_hub_names_it(tmp_path: Path, store: dict[str, Path]) -> None:
    cache = tmp_path / "hf"
    run(cache, store, revision="refs/pr/1")
    assert (cache / "models--acme--tiny-model" / "refs" / "refs" / "pr" / "1").read_text() == COMMIT
    found = huggingface_hub.snapshot_download(REPO, revision="refs/pr/1", cache_dir=cache, local_files_only=True)
    assert (Path(found) / "config.json").read_bytes() == FILES["config.json"]
    # Asked by commit: no ref at all.
    other = tmp_path / "other"
    run(other, store, revision=COMMIT)
    assert not (other / "models--acme--tiny-model" / "refs").exists()


def test_a_revision_name_as_long_as_a_file_name_can_be_is_exported(tmp_path: Path, store: dict[str, Path]) -> None:
    """A branch of 255 characters, the longest name a file system takes: its ref is
    written under a temporary name of its own first, which must not be longer."""
    cache = tmp_path / "hf"
    long = "v" * 255
    run(cache, store, revision=long)
    assert (cache / "models--acme--tiny-model" / "refs" / long).read_text() == COMMIT
    assert not [n for n in os.listdir(cache / "models--acme--tiny-model" / "refs") if n.endswith(".tmp")]


@pytest.mark.parametrize("hard_links", [True, False], ids=["linked", "copied"])
def test_an_export_leaves_no_descriptor_open(tmp_path: Path, store: dict[str, Path],
                                            monkeypatch: pytest.MonkeyPatch, hard_links: bool) -> None:
    """The export walks the cache's folders by descriptors (so that it follows no
    link): a service that exports every hub model must close each of them, those of
    a copy and of a ref read again included."""
    if not hard_links:
        monkeypatch.setattr(hfcache, "link", no_link)
    before = len(os.listdir("/proc/self/fd"))
    run(tmp_path / "hf", store, revision="refs/pr/1")
    run(tmp_path / "hf", store, revision="refs/pr/1")  # the ref is there: read, found right
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_branch_that_moved_points_at_its_new_commit(tmp_path: Path, store: dict[str, Path]) -> None:
    cache = tmp_path / "hf"
    run(cache, store)
    run(cache, store, commit=OTHER_COMMIT)
    assert (cache / "models--acme--tiny-model" / "refs" / "main").read_text() == OTHER_COMMIT
    found = huggingface_hub.snapshot_download(REPO, revision="main", cache_dir=cache, local_files_only=True)
    assert Path(found).name == OTHER_COMMIT
    # The older snapshot stays, by its commit, sharing the blobs.
    old = huggingface_hub.snapshot_download(REPO, revision=COMMIT, cache_dir=cache, local_files_only=True)
    assert (Path(old) / "model.safetensors").read_bytes() == FILES["model.safetensors"]


def test_exporting_again_changes_nothing_and_repairs_what_was_changed(tmp_path: Path,
                                                                      store: dict[str, Path]) -> None:
    cache = tmp_path / "hf"
    run(cache, store)
    repo = cache / "models--acme--tiny-model"
    before = {name: os.lstat(repo / name) for name in every_name(repo)}
    run(cache, store)
    after = {name: os.lstat(repo / name) for name in every_name(repo)}
    assert after.keys() == before.keys()  # no temporary name left behind
    assert all((after[n].st_ino, after[n].st_mtime_ns) == (before[n].st_ino, before[n].st_mtime_ns) for n in after)

    # A link bent elsewhere, a truncated blob, a ref changed by hand: put right.
    link = repo / "snapshots" / COMMIT / "config.json"
    link.unlink()
    link.symlink_to("../../blobs/" + "f" * 40)
    blob = repo / "blobs" / etag("model.safetensors")
    blob.unlink()
    blob.write_bytes(b"half")
    (repo / "refs" / "main").write_text(OTHER_COMMIT)
    run(cache, store)
    assert os.readlink(link) == "../../blobs/" + etag("config.json")
    assert os.stat(blob).st_ino == os.stat(store["model.safetensors"]).st_ino
    assert (repo / "refs" / "main").read_text() == COMMIT


@pytest.mark.parametrize("path", ["../escape", "/etc/passwd", "a/../../b", "a//b", "./a", "a\\b", "", "a/\x00"])
def test_an_unsafe_path_is_refused_before_anything_is_written(tmp_path: Path, store: dict[str, Path],
                                                              path: str) -> None:
    cache = tmp_path / "hf"
    with pytest.raises(InvalidExport):
        export(cache, repo_type="model", repo_id=REPO, commit=COMMIT, revision="main",
               files=[*entries(store), (path, store["config.json"], etag("config.json"))])
    assert not cache.exists()


@pytest.mark.parametrize("change", [
    {"repo_id": "../up"}, {"repo_id": "acme/../x"}, {"repo_id": "acme--x/y"}, {"repo_id": "noslash"},
    {"repo_id": "a/b/c"}, {"repo_type": "models"}, {"commit": "main"}, {"commit": COMMIT.upper()},
    {"revision": "../../x"}, {"revision": ""}, {"revision": OTHER_COMMIT}, {"revision": "v" * 256},
])
def test_names_of_the_wrong_form_are_refused(tmp_path: Path, store: dict[str, Path], change: dict[str, str]) -> None:
    args = {"repo_type": "model", "repo_id": REPO, "commit": COMMIT, "revision": "main", **change}
    with pytest.raises(InvalidExport):
        export(tmp_path / "hf", files=entries(store), **args)
    assert not (tmp_path / "hf").exists()


def test_bad_etags_twice_named_paths_and_file_folder_clashes_are_refused(tmp_path: Path,
                                                                         store: dict[str, Path]) -> None:
    blob = store["config.json"]
    for files in ([("config.json", blob, "x" * 40)], [("config.json", blob, "A" * 64)],
                  [("a", blob, etag("config.json")), ("a", blob, etag("config.json"))],
                  [("a", blob, etag("config.json")), ("a/b", blob, etag("config.json"))]):
        with pytest.raises(InvalidExport):
            export(tmp_path / "hf", repo_type="model", repo_id=REPO, commit=COMMIT, revision="main", files=files)
    assert not (tmp_path / "hf").exists()


def test_a_link_planted_in_the_cache_is_never_followed(tmp_path: Path, store: dict[str, Path]) -> None:
    cache = tmp_path / "hf"
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_bytes(b"not yours")
    repo = cache / "models--acme--tiny-model"

    # A link where a folder belongs: refused, nothing written where it leads.
    repo.mkdir(parents=True)
    (repo / "blobs").symlink_to(outside)
    with pytest.raises(UnsafeCache, match="is a symbolic link"):
        run(cache, store)
    assert sorted(os.listdir(outside)) == ["secret"]
    (repo / "blobs").unlink()
    (repo / "snapshots" / COMMIT / "tokenizer").parent.mkdir(parents=True, exist_ok=True)
    (repo / "snapshots" / COMMIT / "tokenizer").symlink_to(outside)
    with pytest.raises(UnsafeCache):
        run(cache, store)
    assert sorted(os.listdir(outside)) == ["secret"]
    (repo / "snapshots" / COMMIT / "tokenizer").unlink()

    # A link where a blob or a ref belongs: replaced, its target untouched.
    (repo / "blobs" / etag("config.json")).unlink()  # made by the export that stopped at the link
    (repo / "blobs" / etag("config.json")).symlink_to(secret)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").symlink_to(secret)
    mode = secret.stat().st_mode
    run(cache, store)
    assert secret.read_bytes() == b"not yours" and secret.stat().st_mode == mode
    assert os.stat(repo / "blobs" / etag("config.json")).st_ino == os.stat(store["config.json"]).st_ino
    assert not (repo / "refs" / "main").is_symlink() and (repo / "refs" / "main").read_text() == COMMIT


def test_a_file_where_a_folder_belongs_stops_the_export_and_stays(tmp_path: Path, store: dict[str, Path]) -> None:
    repo = tmp_path / "hf" / "models--acme--tiny-model"
    repo.mkdir(parents=True)
    (repo / "snapshots").write_bytes(b"someone's file")
    with pytest.raises(UnsafeCache, match="not a folder"):
        run(tmp_path / "hf", store)
    assert (repo / "snapshots").read_bytes() == b"someone's file"


def test_a_link_as_the_store_blob_is_refused(tmp_path: Path, store: dict[str, Path]) -> None:
    fake = tmp_path / "fake-blob"
    fake.symlink_to(store["config.json"])
    with pytest.raises(InvalidExport):
        export(tmp_path / "hf", repo_type="model", repo_id=REPO, commit=COMMIT, revision="main",
               files=[("config.json", fake, etag("config.json"))])
    assert not (tmp_path / "hf" / "models--acme--tiny-model" / "blobs" / etag("config.json")).exists()


def test_without_hard_links_the_blob_is_copied_and_that_is_logged(tmp_path: Path, store: dict[str, Path],
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(hfcache, "link", no_link)
    cache = tmp_path / "hf"
    with caplog.at_level(logging.WARNING, logger="arw_models.store.hfcache"):
        run(cache, store, revision="v1.0")
    assert sum("copying it" in r.getMessage() for r in caplog.records) == len(FILES)
    found = huggingface_hub.snapshot_download(REPO, revision="v1.0", cache_dir=cache, local_files_only=True)
    for path, data in FILES.items():
        assert (Path(found) / path).read_bytes() == data
        blob = cache / "models--acme--tiny-model" / "blobs" / etag(path)
        assert os.stat(blob).st_ino != os.stat(store[path]).st_ino
        # The store's mode, readable by its owner at least: no more.
        assert stat.S_IMODE(os.stat(blob).st_mode) == stat.S_IMODE(os.stat(store[path]).st_mode) | 0o400
    assert not [n for n in every_name(cache) if n.endswith(".tmp")]


def test_a_copy_that_fails_fails_the_export_and_leaves_no_temporary_file(tmp_path: Path, store: dict[str, Path],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """No hard link, and the first copy in its place fails (the disk is full for a
    moment): the export fails with that error, not going on without that blob, and
    the half-written copy is not left in the cache."""
    real_fsync, failed_once = os.fsync, []

    def full_disk(fd: int) -> None:  # a file system that allocates late says so at the fsync of a file
        if stat.S_ISREG(os.fstat(fd).st_mode) and not failed_once:
            failed_once.append(fd)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(hfcache, "link", no_link)
    monkeypatch.setattr(os, "fsync", full_disk)
    cache = tmp_path / "hf"
    with pytest.raises(OSError) as failed:
        run(cache, store, revision="v1.0")
    assert failed.value.errno == errno.ENOSPC
    assert not [n for n in every_name(cache) if n.endswith(".tmp")]
    repo = cache / "models--acme--tiny-model"
    assert not os.listdir(repo / "blobs") and not (repo / "snapshots").exists()


def test_datasets_and_spaces_get_their_own_folder(tmp_path: Path, store: dict[str, Path]) -> None:
    for repo_type in ("dataset", "space"):
        export(tmp_path / "hf", repo_type=repo_type, repo_id=REPO, commit=COMMIT, revision="main",
               files=entries(store))
        found = huggingface_hub.snapshot_download(REPO, repo_type=repo_type, revision="main",
                                                  cache_dir=tmp_path / "hf", local_files_only=True)
        assert Path(found).parent.parent.name == f"{repo_type}s--acme--tiny-model"


def test_the_setting_is_a_path_made_absolute_and_blank_is_off(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.from_config(DEFAULTS).hf_cache is None
    assert Settings.from_config(dict(DEFAULTS, ARW_HF_CACHE="  ")).hf_cache is None
    monkeypatch.chdir(tmp_path)
    found = from_env({"ARW_HF_CACHE": "hf-cache"})
    assert Settings.from_config(dict(DEFAULTS, **found)).hf_cache == str(tmp_path / "hf-cache")
    assert Settings.from_config(dict(DEFAULTS, **from_env({"ARW_HF_CACHE": ""}))).hf_cache is None


@pytest.mark.parametrize("where", [f"blobs/{etag('config.json')}", f"snapshots/{COMMIT}/config.json", "refs/main"])
def test_a_folder_where_a_blob_a_snapshot_file_or_a_ref_belongs_stops_the_export_and_stays(
        tmp_path: Path, store: dict[str, Path], where: str) -> None:
    """Someone's folder where the export would put a blob, a file of the snapshot or
    a ref is not replaced: the export stops, saying so, and the folder stays as it was."""
    repo = tmp_path / "hf" / "models--acme--tiny-model"
    (repo / where / "theirs").mkdir(parents=True)
    with pytest.raises(UnsafeCache, match="is a folder, where a file belongs"):
        run(tmp_path / "hf", store)
    assert os.listdir(repo / where) == ["theirs"]


def test_the_folders_and_refs_made_get_the_umask_as_huggingface_hubs_own(tmp_path: Path,
                                                                         store: dict[str, Path]) -> None:
    """The folders the export makes are as huggingface_hub makes its own (0777 less
    the umask), and so are its refs (0666 less the umask), so that the users who
    share the cache can read it."""
    old = os.umask(0o022)
    try:
        run(tmp_path / "hf", store)
    finally:
        os.umask(old)
    repo = tmp_path / "hf" / "models--acme--tiny-model"
    for folder in (tmp_path / "hf", repo, repo / "blobs", repo / "refs", repo / "snapshots" / COMMIT / "tokenizer"):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o755, folder
    assert stat.S_IMODE(os.stat(repo / "refs" / "main").st_mode) == 0o644


def test_a_cache_dir_that_is_a_link_is_followed(tmp_path: Path, store: dict[str, Path]) -> None:
    """The cache folder itself may be a link (``~/.cache/huggingface/hub`` on a
    bigger disk, say): the operator chose that path, so the export goes through it."""
    real = tmp_path / "big-disk" / "hub"
    real.mkdir(parents=True)
    cache = tmp_path / "hf"
    cache.symlink_to(real)
    run(cache, store)
    assert (real / "models--acme--tiny-model" / "refs" / "main").read_text() == COMMIT
    found = huggingface_hub.snapshot_download(REPO, revision="main", cache_dir=cache, local_files_only=True)
    assert (Path(found) / "config.json").read_bytes() == FILES["config.json"]


@pytest.mark.parametrize("longer", ["owner", "name"])
def test_a_repo_id_of_96_characters_each_side_is_exported_and_one_longer_is_refused(
        tmp_path: Path, store: dict[str, Path], longer: str) -> None:
    """Repository ids are checked as huggingface_hub checks them, 96 characters at
    most for the owner and for the name (an id of 120 characters is a real one):
    the longest is exported, one more character on either side is not a hub id."""
    longest = "o" * 96 + "/" + "r" * 96
    export(tmp_path / "hf", repo_type="model", repo_id=longest, commit=COMMIT, revision="main",
           files=entries(store))
    found = huggingface_hub.snapshot_download(longest, revision="main", cache_dir=tmp_path / "hf",
                                              local_files_only=True)
    assert (Path(found) / "config.json").read_bytes() == FILES["config.json"]
    with pytest.raises(InvalidExport):
        export(tmp_path / "other", repo_type="model",
               repo_id="o" + longest if longer == "owner" else longest + "r", commit=COMMIT, revision="main",
               files=entries(store))
    assert not (tmp_path / "other").exists()


def test_temporary_names_left_by_a_dead_process_of_the_same_pid_are_replaced(
        tmp_path: Path, store: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A service restarted in a container often gets its old pid (and thread) back:
    the temporary blob, link and ref a dead export left under the names this one
    uses do not stop it, and none of them is left."""
    made: list[str] = []
    real_rename = os.rename

    def noting(src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        assert src_dir_fd is not None
        made.append(os.path.relpath(os.path.join(os.readlink(f"/proc/self/fd/{src_dir_fd}"), src), first))
        real_rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    first, cache = tmp_path / "first", tmp_path / "hf"
    with monkeypatch.context() as patch:
        patch.setattr(os, "rename", noting)
        run(first, store)
    assert len(made) == 2 * len(FILES) + 1  # each blob, each link, the ref
    for name in made:  # what a process killed in the middle of the same export left
        left = cache / name
        left.parent.mkdir(parents=True, exist_ok=True)
        if "/snapshots/" in name:
            left.symlink_to("../../blobs/" + "0" * 40)
        else:
            left.write_bytes(b"half")
    run(cache, store)
    found = huggingface_hub.snapshot_download(REPO, revision="main", cache_dir=cache, local_files_only=True)
    for path, data in FILES.items():
        assert (Path(found) / path).read_bytes() == data
    assert not [n for n in every_name(cache) if n.endswith(".tmp")]


@pytest.mark.parametrize("hard_links", [True, False], ids=["linked", "copied"])
def test_a_store_blob_swapped_while_it_is_exported_is_refused(tmp_path: Path, store: dict[str, Path],
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              hard_links: bool) -> None:
    """The blob the export checked is the one it puts in the cache: a blob path
    swapped between the check and the link (for a link, even one to the same bytes)
    or the copy (for another file) fails the export, and the cache gets nothing under
    that etag."""
    blob = store["model.safetensors"]
    swapped = []

    def swap_then(*args: object, **kwargs: object) -> None:
        if not swapped:
            swapped.append(blob)
            if hard_links:
                moved = blob.with_name(blob.name + ".moved")
                os.rename(blob, moved)
                blob.symlink_to(moved)
            else:
                other = blob.with_name("other")
                other.write_bytes(os.urandom(len(FILES["model.safetensors"])))
                os.replace(other, blob)
        if not hard_links:
            no_link()
        os.link(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(hfcache, "link", swap_then)
    cache = tmp_path / "hf"
    with pytest.raises(InvalidExport, match="changed while"):
        run(cache, store)
    assert swapped
    assert not os.path.lexists(cache / "models--acme--tiny-model" / "blobs" / etag("model.safetensors"))
    assert not [n for n in every_name(cache) if n.endswith(".tmp")]


@pytest.mark.parametrize("what", ["blob", "link", "ref"])
def test_a_name_that_cannot_be_put_in_place_fails_the_export_and_leaves_no_temporary_file(
        tmp_path: Path, store: dict[str, Path], monkeypatch: pytest.MonkeyPatch, what: str) -> None:
    """A blob, a snapshot link or a ref made but refused its final name (a folder
    that cannot grow on a full disk): the export fails with that error, not leaving
    a snapshot that lacks a file, and its temporary name is removed."""
    real_rename = os.rename

    def full_folder(src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        kind = os.stat(src, dir_fd=src_dir_fd, follow_symlinks=False)
        if {"blob": dst == etag("config.json"), "link": stat.S_ISLNK(kind.st_mode), "ref": dst == "main"}[what]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(os, "rename", full_folder)
    cache = tmp_path / "hf"
    with pytest.raises(OSError) as failed:
        run(cache, store)
    assert failed.value.errno == errno.ENOSPC
    assert not [n for n in every_name(cache) if n.endswith(".tmp")]


def test_a_folder_the_export_cannot_open_fails_it_with_the_file_systems_error(
        tmp_path: Path, store: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """An error of the file system other than a link or a file in the way (here no
    descriptor left) is raised as it is, an ``OSError`` the install logs and goes on
    from, not taken for an unsafe cache."""
    real_open = os.open

    def no_descriptor_left(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if dir_fd is not None and flags & os.O_DIRECTORY:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", no_descriptor_left)
    with pytest.raises(OSError) as failed:
        run(tmp_path / "hf", store)
    assert failed.value.errno == errno.EMFILE and not isinstance(failed.value, UnsafeCache)
