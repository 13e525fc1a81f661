"""CVE-2021-41190 (GHSA-5j5w-g665-5m35, GHSA-77vh-xpmg-72qh): one document read as two kinds.

An image index and an image manifest are told apart by the descriptor that points at them (or
the registry's Content-Type), not by the bytes. A document holding both an index's
``manifests`` and a manifest's ``config`` and ``layers`` has one digest, approved (signed,
pinned) as one kind, yet a client can be made to read it as the other. containerd refuses such
a document since 1.4.12 / 1.5.8: a manifest must carry no ``manifests`` and no index media
type, an index no ``config``, no ``layers`` and no manifest media type; schema 1 documents are
refused too. Berth refuses them the same way in both parsers, whoever reads the document
(pull, push, save, load, the CRI).

docker-registry itself refuses to store such documents, so the end-to-end case is served by a
small scripted registry on 127.0.0.1 standing in for a hostile one.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import Ctr
from daemon import Berthd
from registry import loopback_env

from berth import errdefs
from berth.images import manifest

REPO = Path(__file__).resolve().parents[2]
BERTH = REPO / ".venv" / "bin" / "berth"

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
D1, D2, D3 = ("sha256:" + c * 64 for c in "123")

CONFIG_DESC = {"mediaType": CONFIG, "digest": D1, "size": 10}
LAYERS = [{"mediaType": LAYER, "digest": D2, "size": 20}]
CHILDREN = [{"mediaType": MANIFEST, "digest": D3, "size": 30,
             "platform": {"os": "linux", "architecture": "amd64"}}]


def doc(**fields: object) -> bytes:
    return json.dumps({"schemaVersion": 2, **fields}).encode()


# -- the parsers -------------------------------------------------------------------------------


def test_plain_documents_still_parse() -> None:
    m = manifest.parse_manifest(doc(mediaType=MANIFEST, config=CONFIG_DESC, layers=LAYERS))
    assert (m.config.digest, [x.digest for x in m.layers]) == (D1, [D2])
    assert manifest.parse_manifest(doc(config=CONFIG_DESC, layers=LAYERS)).config.digest == D1
    assert [e.descriptor.digest for e in manifest.parse_index(doc(manifests=CHILDREN))] == [D3]
    assert [e.descriptor.digest for e in manifest.parse_index(
        doc(mediaType=INDEX, manifests=CHILDREN))] == [D3]


@pytest.mark.parametrize("fields", [
    {"mediaType": INDEX, "manifests": CHILDREN, "config": CONFIG_DESC, "layers": LAYERS},
    {"mediaType": MANIFEST, "manifests": CHILDREN},
    {"manifests": CHILDREN, "layers": LAYERS},
    {"manifests": CHILDREN, "config": None},
], ids=["index-with-config-and-layers", "index-typed-manifest", "index-with-layers",
        "index-with-null-config"])
def test_an_index_that_is_also_a_manifest_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="must be an index or a manifest, not both"):
        manifest.parse_index(doc(**fields))


@pytest.mark.parametrize("fields", [
    {"mediaType": MANIFEST, "config": CONFIG_DESC, "layers": LAYERS, "manifests": CHILDREN},
    {"mediaType": INDEX, "config": CONFIG_DESC, "layers": LAYERS},
    {"config": CONFIG_DESC, "layers": LAYERS, "manifests": []},
], ids=["manifest-with-manifests", "manifest-typed-index", "manifest-with-empty-manifests"])
def test_a_manifest_that_is_also_an_index_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(errdefs.InvalidArgument, match="must be a manifest or an index, not both"):
        manifest.parse_manifest(doc(**fields))


def test_schema_1_is_refused_by_both() -> None:
    schema1 = json.dumps({"schemaVersion": 1, "fsLayers": [{"blobSum": D2}],
                          "manifests": CHILDREN, "config": CONFIG_DESC,
                          "layers": LAYERS}).encode()
    for parse in (manifest.parse_manifest, manifest.parse_index):
        with pytest.raises(errdefs.InvalidArgument, match="schema 1"):
            parse(schema1)


# -- a pull from a registry that serves one ----------------------------------------------------


class ScriptedRegistry:
    """Serves `documents` (path -> (content type, body)) on 127.0.0.1; anything else is 404."""

    def __init__(self, documents: dict[str, tuple[str, bytes]]) -> None:
        docs = documents

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, *, body: bool) -> None:
                found = docs.get(self.path) if self.path != "/v2/" else ("application/json", b"{}")
                if found is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                content_type, data = found
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Docker-Content-Digest",
                                 "sha256:" + hashlib.sha256(data).hexdigest())
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


@pytest.fixture(scope="module")
def berthd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Berthd]:
    with Berthd(tmp_path_factory.mktemp("ambiguous") / "d") as d:
        yield d


@pytest.mark.parametrize(("served_as", "fields", "words"), [
    (INDEX, {"mediaType": INDEX, "manifests": CHILDREN, "config": CONFIG_DESC,
             "layers": LAYERS}, "must be an index or a manifest, not both"),
    (MANIFEST, {"mediaType": MANIFEST, "config": CONFIG_DESC, "layers": LAYERS,
                "manifests": CHILDREN}, "must be a manifest or an index, not both"),
], ids=["served-as-index", "served-as-manifest"])
def test_berthd_refuses_to_pull_a_document_of_two_kinds(
        berthd: Berthd, served_as: str, fields: dict[str, object], words: str) -> None:
    body = doc(**fields)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    with ScriptedRegistry({f"/v2/evil/image/manifests/{ref}": (served_as, body)
                           for ref in ("latest", digest)}) as reg:
        ref = f"{reg.host}/evil/image:latest"
        proc = subprocess.run([str(BERTH), "--address", berthd.address, "--namespace",
                               "ambiguous", "pull", "--plain-http", ref],
                              capture_output=True, text=True, timeout=60, env=loopback_env(),
                              check=False)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert words in proc.stderr, proc.stderr
    c = Ctr(berthd.address, "ambiguous")
    assert c("images", "ls", "-q").stdout.split() == []
    assert c("content", "ls", "-q").stdout.split() == []
