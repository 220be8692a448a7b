"""The ``url`` of a download request as a JSON Schema pattern: exactly the strings
:func:`arw_models.server.checks.checked_url` accepts, no more and no fewer.

The service reads an ``http(s)`` url with :func:`urllib.parse.urlsplit`, whose
rules are looser than RFC 3986 (any character but a blank or a control in the
path, userinfo with ``@`` and brackets in it, ports with leading zeros, a bracketed
host that is an IPv6 address with a zone or an IPvFuture literal), and an
``hf://`` reference with :func:`arw_models.engine.sources.parse_hf`. The pattern
follows both step by step, so a client that validates with the document never
refuses a url the service takes, and a fuzzer's "valid" url is one the service
takes. ``tests/test_url_pattern.py`` compares the two on tricky and random urls.

Everything here is built once, when the document is; the pattern uses only what
ECMA-262 and Python's ``re`` read alike (lookaheads, classes with ``\\uXXXX``).
"""

from __future__ import annotations

# What ``checked_url`` refuses anywhere: characters for which str.isspace() is true,
# controls, DEL, and lone surrogates (JSON may carry them, no url can encode them).
# Recomputed from unicodedata by the tests, so a new Python that changes them shows.
SPACES = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
          "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
# Characters that urlsplit refuses in a host part, since NFKC turns them into one of
# / ? # @ : (a fullwidth colon, say, or U+2100 "a/c").
NFKC_DELIMITERS = ("\u2047\u2048\u2049\u2100\u2101\u2105\u2106\u2a74\ufe13\ufe16\ufe55\ufe56\ufe5f\ufe6b"
                   "\uff03\uff0f\uff1a\uff1f\uff20")


def _escape(ch: str) -> str:
    if ch in "\\]^-[":  # special inside a class; other escapes differ between regex dialects
        return "\\" + ch
    if 0x20 < ord(ch) < 0x7F:
        return ch
    return f"\\u{ord(ch):04x}"


def _class(excluded: str) -> str:
    """A character class of everything but controls, DEL, blanks, surrogates and ``excluded``."""
    return "[^\\u0000-\\u001f\\u007f\\ud800-\\udfff" + "".join(_escape(c) for c in SPACES + excluded
                                                               if ord(c) > 0x1F) + "]"


ANY = _class("")
# The end of the string: Python's "$" also matches before a final newline, ECMA's does not.
_END = r"$(?!\n)"

# --- hf://[datasets/|spaces/]OWNER/REPO/PATH[@REVISION] and hf://OWNER/REPO@REVISION/PATH

_NAME = "[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_KIND = "(?:(?:datasets|spaces)/|(?!(?:datasets|spaces)/))"  # a first segment of that name is always a kind
_HF_CHAR = _class("/?#\\")
_HF_CHAR_NO_AT = _class("/?#\\@")
# A path segment: not empty, not . or ..
# A dot, written as it is or as %2e: the hub's server decodes before it resolves.
_DOTS = "(?:\\.|%2[Ee]){1,2}"
_PATH_SEG = rf"(?!{_DOTS}(?:/|$)){_HF_CHAR}+"
_PATH_SEG_NO_AT = rf"(?!{_DOTS}(?:/|$)){_HF_CHAR_NO_AT}+"
# Before the last @ of the path (which starts the revision): "." and ".." end there too.
_PATH_SEG_BEFORE_REV = rf"(?!{_DOTS}(?:/|@[^@]*$)){_HF_CHAR}+"
# A segment of a revision after the path's last @: only a literal . or .. is refused there.
_REV_SEG = rf"(?!\.\.?(?:/|$)){_HF_CHAR_NO_AT}+"
# huggingface_hub's REPO@REVISION: the revision is percent-decoded, so %2F is its "/"
# and %2E a dot; no segment of it may be empty, . or ..
_REV_SEG_QUOTED = rf"(?!(?:\.|%2[Ee]){{1,2}}(?:%2[Ff]|/))(?:(?!%2[Ff]){_HF_CHAR})+"
_REV_QUOTED = rf"{_REV_SEG_QUOTED}(?:%2[Ff]{_REV_SEG_QUOTED})*"

HF_PATTERN = (
    rf"^hf://{_KIND}{_NAME}/(?:"
    rf"{_NAME}@{_REV_QUOTED}(?:/{_PATH_SEG})+"  # OWNER/REPO@REVISION/PATH
    rf"|{_NAME}/{_PATH_SEG_NO_AT}(?:/{_PATH_SEG_NO_AT})*"  # OWNER/REPO/PATH
    rf"|{_NAME}/{_PATH_SEG_BEFORE_REV}(?:/{_PATH_SEG_BEFORE_REV})*@{_REV_SEG}(?:/{_REV_SEG})*"
    rf"){_END}"
)

# --- hf://[datasets/|spaces/]OWNER/REPO[@REVISION]: a whole repository (engine.hub.parse_repo).
# The revision is percent-decoded: %2F is its "/", %2E a dot, and what decodes to a
# control character is refused; the hub's own refs/pr/N and refs/convert/NAME may be
# written with plain slashes.
_REPO_REV_SEG = (rf"(?!(?:\.|%2[Ee]){{1,2}}(?:%2[Ff]|$))"
                 rf"(?:(?!%2[Ff]|%[01][0-9A-Fa-f]|%7[Ff]){_HF_CHAR})+")
HF_REPO_PATTERN = (
    rf"^hf://{_KIND}{_NAME}/{_NAME}"
    rf"(?:@(?:refs/(?:pr/[0-9]+|convert/[A-Za-z0-9._-]+)|{_REPO_REV_SEG}(?:%2[Ff]{_REPO_REV_SEG})*))?{_END}"
)

# --- http(s)://

_H16 = "[0-9A-Fa-f]{1,4}"
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"


def _ipv6() -> str:
    """An IPv6 address as :mod:`ipaddress` reads it: "::" stands for at least one group."""
    forms = [rf"(?:{_H16}:){{7}}{_H16}", rf"(?:{_H16}:){{6}}{_IPV4}"]
    for left in range(8):
        head = "" if left == 0 else (_H16 if left == 1 else rf"(?:{_H16}:){{{left - 1}}}{_H16}")
        room = 7 - left  # groups the right side may still have
        tails = []
        if room >= 1:
            tails.append(_H16 if room == 1 else rf"{_H16}(?::{_H16}){{0,{room - 1}}}")
        if room >= 2:
            tails.append(_IPV4 if room == 2 else rf"(?:{_H16}:){{0,{room - 2}}}{_IPV4}")
        tail = f"(?:{'|'.join(tails)})?" if tails else ""
        forms.append(f"{head}::{tail}")
    return "(?:" + "|".join(forms) + ")"


# The first bracketed part of the whole netloc (userinfo included) must be an IPv6
# address, with an optional zone, or an IPvFuture literal; brackets come in pairs.
_BRACKETED = rf"(?:{_ipv6()}(?:%[^%\]/?#]+)?|v[0-9A-Fa-f]+\.[^\]/?#]+)"
_NO_BRACKETS = r"(?=[^\[\]/?#]*(?:[/?#]|$))"
_FIRST_BRACKETS_VALID = rf"(?=[^\[/?#]*\[{_BRACKETED}\][^/?#]*(?:[/?#]|$))"
_NETLOC_CHAR = _class("/?#" + NFKC_DELIMITERS)
_PORT = "(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
_OPT_PORT = rf"(?::(?:0*{_PORT})?)?"  # an empty port is none; port 0 is refused
_HOST_PLAIN = _class("/?#@:[" + NFKC_DELIMITERS) + "+" + _OPT_PORT
# With a "[" after the last @: the host runs to the first "]" (or the end), and the
# port is what follows the first ":" after that "]".
_HOST_BRACKETED = (_class("/?#@[" + NFKC_DELIMITERS) + r"*\[" + _class("/?#@]" + NFKC_DELIMITERS) + "+"
                   + r"(?:\]" + _class("/?#@:" + NFKC_DELIMITERS) + "*" + _OPT_PORT + ")?")

# A . or .. segment hidden behind an encoded slash or a backslash (headers.hides_dot_segment):
# a dot piece with such a slash on at least one side, anywhere in the path (before ? or #).
_ENCODED_SLASH = r"(?:%2[Ff]|%5[Cc]|\\)"
_HIDES_DOT = (rf"(?:{_ENCODED_SLASH}{_DOTS}(?:/|{_ENCODED_SLASH}|[?#]|$(?!\n))"
              rf"|/{_DOTS}{_ENCODED_SLASH})")
_NO_HIDDEN_DOT = rf"(?![^?#]*{_HIDES_DOT})"

HTTP_PATTERN = (
    rf"^[Hh][Tt][Tt][Pp][Ss]?://(?:{_NO_BRACKETS}|{_FIRST_BRACKETS_VALID})"
    rf"(?:{_NETLOC_CHAR}*@)?(?:{_HOST_PLAIN}|{_HOST_BRACKETED})(?:{_NO_HIDDEN_DOT}[/?#]{ANY}*)?{_END}"
)

# --- ollama://[HOST/][NAMESPACE/]NAME[:TAG][@sha256:DIGEST] and
# oci://HOST[:PORT]/REPOSITORY[:TAG][@sha256:DIGEST] (engine.oci.parse): the
# distribution spec's names, a repository of at most 255 characters (an ollama name
# without a namespace is library/NAME).
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_REG_PORT = rf"(?::(?=[0-9]{{1,5}}(?:/|$))0*{_PORT})?"
_REG_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\]){_REG_PORT}"
_COMPONENT = "[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*"
_TAG_DIGEST = r"(?::[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
_ONE = rf"(?=[^/:@]{{1,247}}(?:[:@]|$)){_COMPONENT}"  # one segment: library/ goes before it
_SEVERAL = rf"(?=[^:@]{{1,255}}(?:[:@]|$)){_COMPONENT}(?:/{_COMPONENT})+"
_MAYBE_HOST = "(?=(?:[^/]*[.:][^/]*|localhost)/)"  # a first segment that is a host
REGISTRY_PATTERN = (
    rf"^(?:oci://{_REG_HOST}/(?=[^:@]{{1,255}}(?:[:@]|$)){_COMPONENT}(?:/{_COMPONENT})*"
    rf"|ollama://(?:{_MAYBE_HOST}{_REG_HOST}/(?:{_SEVERAL}|{_ONE})|(?!{_MAYBE_HOST})(?:{_SEVERAL}|{_ONE})))"
    rf"{_TAG_DIGEST}{_END}"
)

MAX_URL = 8192


def url_schema() -> dict[str, object]:
    """The ``url`` property of a download request."""
    return {
        "type": "string", "minLength": 1, "maxLength": MAX_URL,
        "anyOf": [{"pattern": HTTP_PATTERN, "title": "http or https"}, {"pattern": HF_PATTERN, "title": "hf"},
                  {"pattern": HF_REPO_PATTERN, "title": "hf repository"},
                  {"pattern": REGISTRY_PATTERN, "title": "ollama or oci"}],
        "description": "An http or https URL as Python's urlsplit reads it (any host it parses, IPv6 "
                       "literals with a zone and userinfo included; no blanks or control characters; "
                       "port 0 is refused), or an hf:// reference to a file on the Hugging Face hub: "
                       "hf://[datasets/|spaces/]OWNER/REPO/PATH[@REVISION] or "
                       "hf://OWNER/REPO@REVISION/PATH (a revision with a slash written %2F), "
                       "or a whole repository, hf://[datasets/|spaces/]OWNER/REPO[@REVISION] (a model "
                       "of many files; one shard of a split GGUF names all of its shards), or a model in a "
                       "registry: ollama://[HOST/][NAMESPACE/]NAME[:TAG] or "
                       "oci://HOST[:PORT]/REPOSITORY[:TAG|@sha256:DIGEST]. "
                       "The patterns accept exactly what the service accepts.",
    }
