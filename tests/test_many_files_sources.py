"""Models of many files from where people get them, end to end through the service:
a hub repository (the hub stand-in: revision and tree APIs, a gated repository, LFS
files behind a redirect to a CDN on another host) and registries (Debian's
docker-registry: an ollama model, a token-protected repository)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from arw_models import ArwModels
from arw_models.config import DEFAULTS, Settings
from arw_models.engine import references
from arw_models.engine.fileset import RemoteFile, Selection
from arw_models.errors import TransferError

from .support.app import Service, post_download
from .support.hub import Hub, needs_second_host
from .support.origin import payload
from .support.registry import Registries
from .support.tokens import USERS, basic

TOKEN = "hf_MoDeLsToKeN0123456789abcdefXYZ"
REPO = "acme-ai/Tiny-Coder"
FILES = {
    "config.json": b'{"model_type": "tiny"}\n',
    "tokenizer/vocab.txt": b"a\nb\nc\n",
    "model-00001-of-00002.safetensors": payload(300 * 1024, seed=1),
    "model-00002-of-00002.safetensors": payload(200 * 1024, seed=2),
    "gguf/tiny-q4_k_m.gguf": payload(3000, seed=3),
}


@pytest.fixture
def hub() -> Iterator[Hub]:
    server = Hub(token=TOKEN)
    yield server
    server.close()  # fails the test if the CDN ever saw the token


def folder_of(app: object, model_id: str) -> str:
    return os.path.join(ArwModels.state(app).dirs.models_dir, model_id)


def read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


@needs_second_host
def test_a_gated_hub_repository_installs_at_the_commit_it_was_resolved_to(service: Service, hub: Hub) -> None:
    first = hub.commit(REPO, FILES, gated=True)
    app, client, watch = service(ARW_HF_ENDPOINT=hub.endpoint, ARW_HF_TOKEN=TOKEN)
    r = post_download(client, "tiny", f"hf://{REPO}", exclude=["gguf/*"])
    assert r.status_code == 202, r.json
    # Once resolved, the branch moves on: the model stays at the commit it was resolved to.
    resolved = watch.until(lambda e: e.payload.get("id") == "tiny" and bool(e.payload.get("revision"))).payload
    hub.commit(REPO, {**FILES, "config.json": b'{"model_type": "moved"}\n'})
    assert resolved["revision"] == first
    done = watch.terminal("tiny")
    assert done["status"] == "complete", done
    folder = folder_of(app, "tiny")
    for path, data in FILES.items():
        if path.startswith("gguf/"):
            assert not os.path.exists(os.path.join(folder, path))
        else:
            assert read(os.path.join(folder, path)) == data, path
    [entry] = client.get("/models").json["items"]
    assert entry["revision"] == first and entry["provider"] == "hf"
    listed = {f["path"]: f for f in entry["files"]}
    assert listed["model-00001-of-00002.safetensors"]["sha256"] == hashlib.sha256(
        FILES["model-00001-of-00002.safetensors"]).hexdigest()
    assert "git_oid" in listed["config.json"]


@needs_second_host
def test_a_hub_listing_that_disagrees_with_the_bytes_names_the_file_and_installs_nothing(
        service: Service, hub: Hub) -> None:
    hub.commit(REPO, FILES)
    # The CDN serves other bytes than the listing vouches for.
    blob = hub.files_at(REPO, "main")["model-00002-of-00002.safetensors"].sha256
    hub.cdn.add(f"/repos/{blob[:2]}/{blob[2:4]}/{blob}", payload(200 * 1024, seed=99))
    app, client, watch = service(ARW_HF_ENDPOINT=hub.endpoint, ARW_HF_TOKEN=TOKEN)
    assert post_download(client, "tiny", f"hf://{REPO}").status_code == 202
    failed = watch.terminal("tiny")
    assert failed["status"] == "error" and failed["code"] == "checksum-mismatch", failed
    assert failed["file"] == "model-00002-of-00002.safetensors"
    assert client.get("/models").json["items"] == []
    assert not os.path.exists(folder_of(app, "tiny"))


@needs_second_host
def test_one_shard_of_a_split_gguf_fetches_all_of_them(service: Service, hub: Hub) -> None:
    shards = {f"q4/big-{i:05d}-of-00003.gguf": payload(2048 + i, seed=i) for i in (1, 2, 3)}
    hub.commit(REPO, {**shards, "README.md": b"# big\n"})
    app, client, watch = service(ARW_HF_ENDPOINT=hub.endpoint, ARW_HF_TOKEN=TOKEN)
    assert post_download(client, "big", f"hf://{REPO}/q4/big-00002-of-00003.gguf").status_code == 202
    assert watch.terminal("big")["status"] == "complete"
    folder = folder_of(app, "big")
    assert sorted(os.listdir(os.path.join(folder, "q4"))) == sorted(p.split("/")[1] for p in shards)
    assert not os.path.exists(os.path.join(folder, "README.md"))


def test_an_ollama_model_installs_its_layers_by_name(service: Service, regs: Registries) -> None:
    app, client, watch = service(ARW_REGISTRY_INSECURE=f"{regs.token.host},{regs.token_server.host}")
    r = post_download(client, "tiny", f"ollama://{regs.token.host}/library/tiny")
    assert r.status_code == 202, r.json
    done = watch.terminal("tiny")
    assert done["status"] == "complete", done
    folder = folder_of(app, "tiny")
    pushed = regs.pushed["tiny"]
    assert read(os.path.join(folder, "manifest.json")) == pushed.manifest
    assert read(os.path.join(folder, "template.txt")) == b"{{ .System }}\n{{ .Prompt }}"
    on_disk = {hashlib.sha256(read(os.path.join(folder, n))).hexdigest() for n in os.listdir(folder)
               if n != "manifest.json"}
    assert {d.split(":", 1)[1] for d in pushed.blobs} == on_disk
    [entry] = client.get("/models").json["items"]
    assert entry["provider"] == "ollama" and entry["revision"] == pushed.digest
    # The blobs came through a redirect to the storage host, which never saw a token.
    assert not [s for s in regs.cdn.all_seen() if "authorization" in s.headers]


def test_a_token_protected_repository_needs_its_credentials(service: Service, regs: Registries) -> None:
    app, client, watch = service(ARW_REGISTRY_INSECURE=f"{regs.token.host},{regs.token_server.host}")
    url = f"oci://{regs.token.host}/private/secret:v1"
    assert post_download(client, "anon", url).status_code == 202
    refused = watch.terminal("anon")
    assert refused["status"] == "error" and refused["code"] in ("http-status", "registry-auth"), refused
    r = post_download(client, "secret", url, headers={"Authorization": basic("reader", USERS["reader"])})
    assert r.status_code == 202, r.json
    assert watch.terminal("secret")["status"] == "complete"
    assert os.listdir(folder_of(app, "secret"))


def test_a_malformed_registry_reference_is_refused_at_once(service: Service) -> None:
    _app, client, _watch = service()
    r = post_download(client, "bad", "oci://host/UPPER")
    assert r.status_code == 400 and r.json["code"] == "invalid-url"
    assert r.json["detail"].startswith("url is not a valid registry reference")


@needs_second_host
def test_a_hub_model_opens_offline_with_huggingface_hub(service: Service, hub: Hub, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    hf = pytest.importorskip("huggingface_hub", reason="huggingface_hub is in the test extra")
    commit = hub.commit(REPO, FILES)
    cache = tmp_path / "hf-cache"
    app, client, watch = service(ARW_HF_ENDPOINT=hub.endpoint, ARW_HF_TOKEN=TOKEN, ARW_HF_CACHE=str(cache))
    assert post_download(client, "tiny", f"hf://{REPO}").status_code == 202
    done = watch.terminal("tiny")
    assert done["status"] == "complete" and done["hf_cache"].endswith(commit), done
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for revision in ("main", commit):
        folder = hf.snapshot_download(REPO, revision=revision, cache_dir=str(cache), local_files_only=True)
        for path, data in FILES.items():
            assert read(os.path.join(folder, path)) == data, (revision, path)
    # The cache holds no second copy: its blob is the model's file.
    ours = os.path.join(folder_of(app, "tiny"), "model-00001-of-00002.safetensors")
    theirs = os.path.join(folder, "model-00001-of-00002.safetensors")
    assert os.stat(ours).st_ino == os.stat(os.path.realpath(theirs)).st_ino
    # A request may say no.
    assert post_download(client, "again", f"hf://{REPO}", hf_cache=False, force=True).status_code == 202
    assert "hf_cache" not in watch.terminal("again")


@needs_second_host
def test_a_hub_dataset_goes_in_the_hugging_face_cache_as_a_dataset(service: Service, hub: Hub, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A dataset repository is put where huggingface_hub looks for a dataset, not for a model of the same
    name: ``snapshot_download(repo_type="dataset")`` opens it offline."""
    hf = pytest.importorskip("huggingface_hub", reason="huggingface_hub is in the test extra")
    repo, files = "acme-ai/Tiny-Set", {"data/train.csv": b"a,b\n1,2\n", "README.md": b"# tiny set\n"}
    commit = hub.commit(f"datasets/{repo}", files)
    cache = tmp_path / "hf-cache"
    _app, client, watch = service(ARW_HF_ENDPOINT=hub.endpoint, ARW_HF_TOKEN=TOKEN, ARW_HF_CACHE=str(cache))
    assert post_download(client, "set", f"hf://datasets/{repo}").status_code == 202
    done = watch.terminal("set")
    assert done["status"] == "complete" and done["hf_cache"].endswith(commit), done
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = hf.snapshot_download(repo, repo_type="dataset", revision=commit, cache_dir=str(cache),
                                  local_files_only=True)
    assert {path: read(os.path.join(folder, path)) for path in files} == files


@needs_second_host
def test_asked_for_the_hugging_face_cache_with_no_folder_set_uses_huggingface_hubs_own(
        service: Service, hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request that asks for the cache where none is configured gets the folder huggingface_hub itself reads
    (``HF_HUB_CACHE``, else ``HF_HOME/hub``); a cache that cannot be written leaves the model installed."""
    commit = hub.commit(REPO, FILES)
    app, client, watch = service(ARW_HF_ENDPOINT=hub.endpoint, ARW_HF_TOKEN=TOKEN)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    assert post_download(client, "one", f"hf://{REPO}", hf_cache=True).status_code == 202
    assert watch.terminal("one")["hf_cache"].startswith(str(tmp_path / "hub-cache")), commit
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert post_download(client, "two", f"hf://{REPO}", hf_cache=True).status_code == 202
    assert watch.terminal("two")["hf_cache"].startswith(str(tmp_path / "home" / "hub"))
    assert post_download(client, "none", f"hf://{REPO}").status_code == 202  # not asked, none set: no cache
    assert "hf_cache" not in watch.terminal("none")
    (tmp_path / "a-file").write_bytes(b"not a folder")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "a-file"))
    assert post_download(client, "three", f"hf://{REPO}", hf_cache=True).status_code == 202
    done = watch.terminal("three")
    assert done["status"] == "complete" and "hf_cache" not in done
    assert read(os.path.join(folder_of(app, "three"), "config.json")) == FILES["config.json"]


def test_references_name_their_provider_and_refuse_what_they_cannot_resolve() -> None:
    """The provider a model is recorded with comes from its reference; a reference no resolver takes, or a
    selection of files from a registry's model (fetched whole), is refused before any request is made."""
    assert [references.names_many(u) for u in ("hf://acme/tiny", "ollama://llama3:8b", "https://e.com/m.gguf")] == [
        True, True, False]
    assert [references.provider_of(u) for u in ("hf://acme/tiny", "ollama://llama3:8b", "oci://ghcr.io/acme/m:1",
                                                 "models/tiny")] == ["hf", "ollama", "oci", "local"]
    settings = Settings.from_config(DEFAULTS)
    with pytest.raises(TransferError) as caught:
        references.resolve("ftp://example.com/m", Selection(), settings, None, {})
    assert caught.value.code == "unsupported-reference" and "ftp://" in caught.value.message
    with pytest.raises(TransferError) as caught:
        references.resolve("ollama://llama3:8b", Selection(include=("*.gguf",)), settings, None, {})
    assert caught.value.code == "invalid-selection" and "ollama://llama3:8b" in caught.value.message
    plain = references.authorizer("https://e.com/m.gguf", settings, {"Authorization": "Bearer x"})
    assert plain(RemoteFile("m.gguf", "https://e.com/m.gguf", 1, "a" * 64), False) == {}
