"""hf:// references as the engine reads them: where they resolve, and the file
name they suggest."""

from __future__ import annotations

import pytest

from arw_models.engine import sources

HUB = "https://hub.example"


@pytest.mark.parametrize("ref, url", [
    ("hf://acme/model/w/q4.gguf", f"{HUB}/acme/model/resolve/main/w/q4.gguf"),
    ("hf://datasets/acme/data/part-0.parquet@v2", f"{HUB}/datasets/acme/data/resolve/v2/part-0.parquet"),
    ("hf://spaces/acme/demo@refs%2Fpr%2F3/app.py", f"{HUB}/spaces/acme/demo/resolve/refs%2Fpr%2F3/app.py"),
    # Only the first segment names a kind of repository: here "datasets" is a file.
    ("hf://acme/model/datasets", f"{HUB}/acme/model/resolve/main/datasets"),
    ("hf://acme/datasets/spaces", f"{HUB}/acme/datasets/resolve/main/spaces"),
])
def test_a_reference_resolves_to_its_resolve_url(ref: str, url: str) -> None:
    assert sources.parse_hf(ref).resolve_url(HUB + "/") == url


def test_the_file_name_is_the_last_segment_of_the_path_in_the_repository() -> None:
    assert sources.filename_of("hf://acme/model/quant/q4/tiny.gguf@v1") == "tiny.gguf"
    assert sources.filename_of("hf://acme/model@v1/quant/tiny.gguf") == "tiny.gguf"
    assert sources.filename_of("hf://acme/model/../x") == ""  # not a reference: no name
    assert sources.filename_of("https://files.example/d/m.gguf;token=1?sig=2") == "m.gguf"


def test_the_token_goes_with_the_hub_url_only_when_no_authorization_is_given() -> None:
    src = sources.origin("hf://acme/model/m.gguf", {}, HUB, "hf_tok")
    assert src.url == f"{HUB}/acme/model/resolve/main/m.gguf" and dict(src.headers) == {
        "Authorization": "Bearer hf_tok"}
    own = sources.origin("hf://acme/model/m.gguf", {"authorization": "Bearer mine"}, HUB, "hf_tok")
    assert dict(own.headers) == {"authorization": "Bearer mine"}
    plain = sources.origin("https://files.example/m.gguf", {}, HUB, "hf_tok")
    assert dict(plain.headers) == {}  # the hub token is for the hub
    assert "hf_tok" not in repr(src) and "mine" not in repr(own)


@pytest.mark.parametrize("ref, why", [
    ("https://hub.example/acme/model/resolve/main/m.gguf", "not an hf:// reference"),
    ("HF://acme/model/m.gguf", "not an hf:// reference"),
    ("hf://acme/model/m.gguf?download=1", "no query, fragment or backslash"),
    ("hf://acme/model/m.gguf#x", "no query, fragment or backslash"),
    ("hf://acme/model", "is hf://OWNER/REPO/PATH[@REVISION]"),
    ("hf://datasets/acme/data", "is hf://OWNER/REPO/PATH[@REVISION]"),
])
def test_what_is_no_reference_is_refused_with_why(ref: str, why: str) -> None:
    with pytest.raises(sources.InvalidReference) as refused:
        sources.parse_hf(ref)
    assert str(refused.value).endswith(why)
