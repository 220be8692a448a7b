"""A hub repository served by nginx, for the many-file case of ``make bench``.

nginx answers what a hub client asks for a repository at one commit: the revision API
(``/api/models/OWNER/REPO/revision/REV`` -> ``{"sha": ...}``), the tree API (one page,
every file with its ``oid``, ``size`` and ``lfs``), and ``/OWNER/REPO/resolve/COMMIT/PATH``
with the headers ``huggingface_hub`` reads (``X-Repo-Commit``, ``X-Linked-Etag``,
``X-Linked-Size``), the file bytes under a ``limit_rate`` per connection. Both clients
measured (``hf download`` and the service) talk to the same nginx, so both meet the
same cap on each connection.
"""

from __future__ import annotations

import hashlib
import json
import os

from tests.support.nginx import Nginx

MiB = 1024 * 1024
OWNER, REPO = "bench", "shards"
COMMIT = hashlib.sha1(b"arw-models bench").hexdigest()


def _digests(path: str) -> tuple[str, str]:
    """(sha256, git blob id) of the file at ``path``."""
    size = os.path.getsize(path)
    sha256, git = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as fh:
        while chunk := fh.read(8 * MiB):
            sha256.update(chunk)
            git.update(chunk)
    return sha256.hexdigest(), git.hexdigest()


class NginxHub:
    """``files`` (path in the repository -> a file on disk, linked into nginx's root)
    served as ``OWNER/REPO`` at :data:`COMMIT`, each connection capped at ``rate_mb``
    MiB/s."""

    def __init__(self, binary: str, base: str, files: dict[str, str], rate_mb: int) -> None:
        api = os.path.join(base, "api")
        os.makedirs(api)
        tree, locations = [], []
        blobs = os.path.join(base, "blobs")
        os.makedirs(blobs)
        for path, source in sorted(files.items()):
            sha256, oid = _digests(source)
            size = os.path.getsize(source)
            os.link(source, os.path.join(blobs, sha256))
            tree.append({"type": "file", "path": path, "size": size, "oid": oid,
                         "lfs": {"oid": sha256, "size": size, "pointerSize": 134}})
            locations.append(f"""
        location = /{OWNER}/{REPO}/resolve/{COMMIT}/{path} {{
            add_header X-Repo-Commit {COMMIT};
            add_header X-Linked-Etag '"{sha256}"';
            add_header X-Linked-Size {size};
            limit_rate {rate_mb}m;
            alias {blobs}/{sha256};
        }}""")
        self.total = sum(entry["size"] for entry in tree)
        self.tree = tree
        with open(os.path.join(api, "revision.json"), "w") as fh:
            json.dump({"id": f"{OWNER}/{REPO}", "sha": COMMIT,
                       "siblings": [{"rfilename": e["path"]} for e in tree]}, fh)
        with open(os.path.join(api, "tree.json"), "w") as fh:
            json.dump(tree, fh)
        self.nginx = Nginx(binary, base, f"""
        sendfile on;
        tcp_nopush on;
        default_type application/octet-stream;
        location ~ ^/api/models/{OWNER}/{REPO}/revision/ {{
            default_type application/json;
            alias {api}/revision.json;
        }}
        location ~ ^/api/models/{OWNER}/{REPO}/tree/ {{
            default_type application/json;
            alias {api}/tree.json;
        }}
        {''.join(locations)}""")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.nginx.port}"

    def close(self) -> None:
        self.nginx.close()
