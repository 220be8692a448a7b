"""The OpenAPI document's ``url`` patterns accept exactly the urls the service
accepts: the forms people write (IPv6 literals, huggingface_hub's REPO@REVISION,
revisions with slashes) and the corners of urlsplit, then many random urls built
from the pieces where the two could part."""

from __future__ import annotations

import random
import re
import sys
import unicodedata

import pytest

from arw_models.errors import BadRequest
from arw_models.server.checks import checked_url
from arw_models.server.openapi import document
from arw_models.server.urlschema import NFKC_DELIMITERS, SPACES
from tools.fuzz import GENERATED_URL_PATTERNS


def service_accepts(url: str) -> bool:
    try:
        checked_url(url)
    except BadRequest:
        return False
    return True


URL = document()["components"]["schemas"]["DownloadRequest"]["properties"]["url"]
PATTERNS = [re.compile(branch["pattern"]) for branch in URL["anyOf"]]


def document_accepts(url: str) -> bool:
    # As jsonschema reads a pattern: re.search, every branch of the anyOf.
    return URL["minLength"] <= len(url) <= URL["maxLength"] and any(p.search(url) for p in PATTERNS)


EXAMPLES = [
    ("http://host/m.gguf", True),
    ("HTTPS://Host:443/m.gguf?x=1#f", True),
    ("http://[::1]:8080/x.gguf", True),
    ("http://[fe80::1%25eth0]/x", True),
    ("http://[::ffff:1.2.3.4]/x", True),
    ("http://[v1.x]/x", True),
    ("http://user:pw@host/x", True),
    ("http://a@b@host/x", True),
    ("http://host:0080/x", True),
    ("http://host:/x", True),
    ("http://ä.example/ü x", False),
    ("http://ä.example/ü", True),
    ("hf://OWNER/REPO@REV/PATH", True),
    ("hf://OWNER/REPO/PATH@refs/pr/1", True),
    ("hf://owner/repo@refs%2Fpr%2F1/dir/m.gguf", True),
    ("hf://datasets/owner/repo/data.parquet", True),
    ("hf://spaces/owner/repo/app.py@v1", True),
    ("hf://datasets/owner/repo", True),
    ("hf://owner/repo", True),
    ("hf://owner/repo@refs/pr/12", True),
    ("hf://owner/repo@refs%2Fconvert%2Fparquet", True),
    ("hf://owner/repo@v1.0", True),
    ("hf://owner/repo@", False),
    ("hf://owner/repo/", False),
    ("hf://owner/repo@%2E%2e", False),
    ("hf://owner/repo@a%2F%2Fb", False),
    ("hf://owner/repo@a%00", False),
    ("hf://owner/repo@a%7f", False),
    ("hf://datasets/repo", False),
    ("ollama://qwen2.5:0.5b", True),
    ("ollama://library/qwen2.5", True),
    ("ollama://registry.example:5000/ns/model:q4_K_M", True),
    ("ollama://localhost/model", True),
    ("ollama://my.host/Model", False),
    ("ollama://qwen2.5:", False),
    ("ollama://" + "a" * 247, True),
    ("ollama://" + "a" * 248, False),
    ("oci://127.0.0.1:5000/models/tiny:v1", True),
    ("oci://[::1]:5000/m@sha256:" + "a" * 64, True),
    ("oci://host/m:tag@sha256:" + "a" * 64, True),
    ("oci://host/m@sha512:" + "a" * 64, False),
    ("oci://host:0/m", False),
    ("oci://host:00080/m", True),
    ("oci://host:000080/m", False),
    ("oci://host/M", False),
    ("oci://host", False),
    ("oci://host/a//b", False),
    ("oci://host/a__b-c.d/e", True),
    ("oci://host/" + "a" * 255, True),
    ("oci://host/" + "a" * 256, False),
    ("hf://owner/repo/a/../b", False),
    ("hf://owner/repo@%2E/p", False),
    ("hf://owner/repo/p@", False),
    ("http://host:0/x", False),
    ("http://host:65536/x", False),
    ("http://host:8a/x", False),
    ("http://[::1/x", False),
    ("http://[1.2.3.4]/x", False),
    ("http://[::1]:0/x", False),
    ("http:///x", False),
    ("http://:80/x", False),
    ("http://a\uff1ab/x", False),
    ("http://host/x\n", False),
    ("http://host/x y", False),
    ("ftp://host/x", False),
    ("file:///etc/passwd", False),
    ("", False),
    ("http://h/" + "a" * 8183, True),
    ("http://h/" + "a" * 8184, False),
]


@pytest.mark.parametrize(("url", "accepted"), EXAMPLES)
def test_the_document_accepts_what_the_service_accepts(url: str, accepted: bool) -> None:
    assert service_accepts(url) == accepted, url
    assert document_accepts(url) == accepted, url


# Pieces where urlsplit, ipaddress and the hf:// reader decide something.
PIECES = [
    "http://", "https://", "HtTp://", "hf://", "datasets/", "spaces/", "ftp://", "http:", "/", "//", "@", ":", "[",
    "]", "::", "::1", "1.2.3.4", "ffff:", "fe80", "%", "%25", "eth0", "v1.", "v", "0", "00", "8080", "65535",
    "65536", "99999", ".", "..", "%2F", "%2f", "%2E", "?", "#", "\\", "a", "B", "-", "_", "x.gguf", "ä", "\uff1a",
    "\u2100", "\ufe6b", "\u00a0", " ", "\t", "\x7f", "\x85", "\ud800", "\n", "refs", "pr", "o", "r",
]


def test_random_urls_get_the_same_answer_from_both() -> None:
    rng = random.Random(20261206)
    starts = ["http://", "https://", "hf://", "hf://o/r/", "hf://o/r@", "http://[", "http://u@[", "hf://datasets/",
              "oci://", "oci://h:5/", "ollama://", "ollama://a.b/", "ollama://n/m:"]
    differ = []
    for _ in range(30_000):
        url = rng.choice(starts) + "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 9)))
        if service_accepts(url) != document_accepts(url):
            differ.append(url)
    assert not differ, differ[:20]


def test_the_fuzzers_plain_patterns_take_only_urls_the_service_accepts() -> None:
    # make fuzz generates "valid" urls from these: each must be one the service takes.
    rng = random.Random(7)
    plain = [re.compile(p) for p in GENERATED_URL_PATTERNS]
    for _ in range(30_000):
        url = rng.choice(["http://", "hf://", "hf://o/r/"]) + "".join(
            rng.choice(PIECES) for _ in range(rng.randint(0, 9)))
        if any(p.search(url) for p in plain):
            assert service_accepts(url) and document_accepts(url), url


def test_the_characters_the_pattern_names_are_pythons() -> None:
    assert set(SPACES) == {chr(i) for i in range(sys.maxunicode + 1) if chr(i).isspace()}
    found = "".join(chr(i) for i in range(128, sys.maxunicode + 1) if unicodedata.decomposition(chr(i))
                    and any(c in unicodedata.normalize("NFKC", chr(i)) for c in "/?#@:"))
    assert found == NFKC_DELIMITERS
