"""The urllib3 and requests names that :mod:`arw_models.engine.http` relies on beyond their
public API are still there, with the shape it expects, in the installed versions.

A failure here names the attribute and the module to update: after an upgrade, a
cancel that silently stops being prompt would be much harder to trace. Also checked:
no other module of the package reaches into those internals, and ``http.py`` uses no
private name of theirs that its list leaves out.
"""

from __future__ import annotations

import ast
import http.client
import importlib
import inspect
import io
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests.adapters
import urllib3
import urllib3.response
from urllib3.connection import HTTPConnection
from urllib3.poolmanager import PoolManager

import arw_models
import arw_models.engine.http
from arw_models.engine.http import PRIVATE_NAMES, Private, new_session

PACKAGE = pathlib.Path(arw_models.__file__).parent
VERSIONS = f"urllib3 {urllib3.__version__}, requests {requests.__version__}"


def _adapter() -> Iterator[Any]:
    adapter = requests.adapters.HTTPAdapter()
    try:
        yield adapter
    finally:
        adapter.close()


def _pool_manager() -> Iterator[Any]:
    manager = PoolManager()
    try:
        yield manager
    finally:
        manager.clear()


def _connection() -> Iterator[Any]:
    conn = HTTPConnection("example.invalid", 80)  # no connect: only the attributes set by __init__
    try:
        yield conn
    finally:
        conn.close()


def _http_client_response() -> Iterator[Any]:
    class Socket:  # all that HTTPResponse.__init__ asks of its socket; nothing is read
        def makefile(self, mode: str) -> io.BytesIO:
            return io.BytesIO(b"")

    response = http.client.HTTPResponse(Socket())  # type: ignore[arg-type]
    try:
        yield response
    finally:
        response.close()


def _urllib3_response() -> Iterator[Any]:
    response = urllib3.response.HTTPResponse(body=io.BytesIO(b""), preload_content=False)
    try:
        yield response
    finally:
        response.close()


def _requests_response() -> Iterator[Any]:
    yield requests.Response()  # no connection under it: nothing to close


# How to get an instance of each class whose instance attributes are relied on.
INSTANCES: dict[str, Callable[[], Iterator[Any]]] = {
    "urllib3.connection.HTTPConnection": _connection,
    "urllib3.poolmanager.PoolManager": _pool_manager,
    "requests.adapters.HTTPAdapter": _adapter,
    "http.client.HTTPResponse": _http_client_response,
    "urllib3.response.HTTPResponse": _urllib3_response,
    "requests.models.Response": _requests_response,
}


def resolve(where: str) -> tuple[Any, str, str]:
    """(the object that holds the name, its dotted path, the name) for ``where``."""
    parts = where.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            owner: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:-1]:
            if not hasattr(owner, attr):
                pytest.fail(f"{VERSIONS}: {'.'.join(parts[:-1])} is gone; arw_models/engine/http.py relies on "
                            f"{where} and needs updating")
            owner = getattr(owner, attr)
        return owner, ".".join(parts[:-1]), parts[-1]
    pytest.fail(f"{VERSIONS}: no module of {where} imports; arw_models/engine/http.py needs updating")


def missing(private: Private, what: str) -> str:
    return (f"{VERSIONS}: {private.where} {what}; arw_models/engine/http.py relies on it ({private.why}) "
            "and needs updating")


@pytest.mark.parametrize("private", PRIVATE_NAMES, ids=[p.where for p in PRIVATE_NAMES])
def test_a_private_name_the_cancellable_session_relies_on_is_still_there(private: Private) -> None:
    owner, owner_path, name = resolve(private.where)
    if private.kind == "instance attribute":
        assert owner_path in INSTANCES, f"no way to make a {owner_path} to look for {name} on: add one to INSTANCES"
        instances = INSTANCES[owner_path]()
        instance = next(instances)
        try:
            assert hasattr(instance, name), missing(private, "is no longer set on its instances")
        finally:
            next(instances, None)
        return
    assert hasattr(owner, name), missing(private, "is gone")
    value = inspect.getattr_static(owner, name)
    if private.kind in ("method", "function"):
        assert callable(value), missing(private, "is no longer callable")
    elif private.kind == "class attribute":
        assert inspect.isclass(value), missing(private, "is no longer a class")
    elif private.kind == "inherited":
        assert name not in vars(owner), missing(private, "is now defined by the class itself")
    elif private.kind == "marker":
        assert not isinstance(value, (int, float)), missing(private, "is now a number")
    else:
        pytest.fail(f"unknown kind {private.kind!r} in PRIVATE_NAMES")
    if private.params is not None:
        params = tuple(inspect.signature(getattr(owner, name)).parameters)
        assert params == private.params, missing(private, f"now takes {params}, not {private.params}")
    if private.source_has:
        source = inspect.getsource(getattr(owner, name))
        for code in private.source_has:
            assert code in source, missing(private, f"no longer has {code!r} in its source")


def test_the_pools_of_the_session_and_of_a_proxy_make_tracked_connections() -> None:
    """The names above are used as intended: the session's pools, and a proxy's, make
    their connections from the cancellable classes (no connection is opened)."""
    session = new_session("test")
    try:
        adapter = session.get_adapter("https://example.invalid/")
        managers = [adapter.poolmanager, adapter.proxy_manager_for("http://127.0.0.1:9")]
        for manager in managers:
            for url in ("http://example.invalid/m.gguf", "https://example.invalid/m.gguf"):
                pool = manager.connection_from_url(url)
                assert pool.ConnectionCls.__module__ == arw_models.engine.http.__name__, (manager, url, pool.ConnectionCls)
                assert pool.ConnectionCls._new_conn is not HTTPConnection._new_conn
    finally:
        session.close()


def test_the_docstring_lists_every_private_name() -> None:
    doc = arw_models.engine.http.__doc__ or ""
    for private in PRIVATE_NAMES:
        assert f"``{private.where}``" in doc


def _tree(path: pathlib.Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_http_py_uses_no_private_urllib3_name_it_does_not_list() -> None:
    """Every ``_name`` that http.py reads off an object is its own or in PRIVATE_NAMES."""
    tree = _tree(PACKAGE / "engine" / "http.py")
    own = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    own |= {target.attr for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.AnnAssign))
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Attribute)}
    own |= {node.target.id for node in ast.walk(tree)
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}
    listed = {p.where.rsplit(".", 1)[-1] for p in PRIVATE_NAMES}
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    used |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    private = {name for name in used if name.startswith("_") and not name.startswith("__")}
    unlisted = sorted(private - own - listed)
    assert unlisted == [], f"arw_models/engine/http.py uses {unlisted}: add each to PRIVATE_NAMES, with why"


# Where the connection machinery lives (the public names there, such as PoolManager,
# are reached through the top-level packages or not at all outside http.py).
FENCED = ("urllib3.connection", "urllib3.connectionpool", "urllib3.poolmanager", "urllib3.util.connection",
          "urllib3._", "requests.adapters")
OTHER_MODULES = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p != PACKAGE / "engine" / "http.py")


@pytest.mark.parametrize("path", OTHER_MODULES)
def test_no_other_module_reaches_into_urllib3(path: str) -> None:
    tree = _tree(PACKAGE / path)
    reached = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            reached.append(node.module)
        elif isinstance(node, ast.Import):
            reached += [alias.name for alias in node.names]
        elif isinstance(node, ast.Attribute):
            reached.append(ast.unparse(node))
    fenced = sorted({name for name in reached if name.startswith(FENCED)})
    assert fenced == [], f"arw_models/{path} uses {fenced}: only arw_models/engine/http.py may"
