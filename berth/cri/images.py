"""The CRI image service over Berth's stores, with containerd 1.6.20's records.

A pulled image gets three records in the namespace ``k8s.io``, all pointing at the pulled target
and labelled ``io.cri-containerd.image=managed``: its ID (``sha256:<config digest>``), its repo
tag (``host/repository:tag``, when pulled by tag) and its repo digest
(``host/repository@<target digest>``). The CRI's view of an image is every record of the
namespace whose target leads to the same config, whoever made it: as containerd's CRI image
store, which follows all of ``k8s.io``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from berth import errdefs, namespaces
from berth.content import Provider
from berth.cri import NAMESPACE
from berth.digest import validate_digest
from berth.images import Image, manifest, platforms
from berth.images import Store as ImageStore
from berth.oci.image import Descriptor
from berth.remotes import reference
from berth.remotes.remotes import Resolver
from berth.snapshots import Snapshotter
from berth.transfer import Puller, PullOptions

MANAGED_LABEL = "io.cri-containerd.image"
MANAGED = "managed"
MAX_DOCUMENT = 4 << 20  # a manifest, index or config larger than this is not read

# (plain_http, {host: (username, secret)}) -> a resolver for one pull
ResolverFactory = Callable[[bool, dict[str, tuple[str, str]]], Resolver]


@dataclass
class Auth:
    """The CRI's AuthConfig, the fields a pull uses."""

    username: str = ""
    password: str = ""
    auth: str = ""  # base64 "username:password"
    server_address: str = ""
    identity_token: str = ""


@dataclass
class CRIImage:
    """One image as the CRI shows it."""

    id: str
    repo_tags: list[str] = field(default_factory=list)
    repo_digests: list[str] = field(default_factory=list)
    size: int = 0
    uid: int | None = None
    username: str = ""
    references: list[str] = field(default_factory=list)  # every record name, ID first


def credentials(auth: Auth | None, host: str) -> tuple[str, str] | None:
    """What containerd's ParseAuth makes of a request's auth for ``host``: nothing when it names
    another server, ``("", token)`` for an identity token, else username and password (from
    ``auth`` when the two are not given)."""
    if auth is None:
        return None
    if auth.server_address:
        server = auth.server_address
        for prefix in ("https://", "http://"):
            server = server.removeprefix(prefix)
        server = server.split("/", 1)[0]
        if server in ("index.docker.io", "registry-1.docker.io"):
            server = "docker.io"
        if server != host:
            return None
    if auth.username:
        return auth.username, auth.password
    if auth.identity_token:
        return "", auth.identity_token
    if auth.auth:
        try:
            decoded = base64.b64decode(auth.auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise errdefs.InvalidArgument("auth: not base64-encoded username:password") from None
        user, colon, secret = decoded.partition(":")
        if not colon:
            raise errdefs.InvalidArgument("auth: invalid auth config format")
        return user, secret
    return None


def user_of(user: str) -> tuple[int | None, str]:
    """(uid, username) of an image config's ``User``, as containerd's getUserFromImage."""
    if not user:
        return None, ""
    name = user.split(":", 1)[0]
    try:
        return int(name), ""
    except ValueError:
        return None, name


def split_references(refs: list[str]) -> tuple[list[str], list[str]]:
    """(repo tags, repo digests) among record names; IDs (digests, which docker's
    ParseAnyReference reads as digest references) and other names count as neither."""
    tags, digests = [], []
    for name in refs:
        with contextlib.suppress(errdefs.InvalidArgument):
            validate_digest(name)
            continue
        try:
            parsed = reference.parse(name, default_tag=False)
        except errdefs.InvalidArgument:
            continue
        if parsed.digest:
            digests.append(str(parsed))
        elif parsed.tag:
            tags.append(str(parsed))
    return sorted(tags), sorted(digests)


@dataclass(frozen=True)
class LocalImage:
    """An image a pod or container is made from: the CRI's view of it, its OCI config
    document, and the chain ID of its layers (the snapshot a container's is prepared on)."""

    image: CRIImage
    config: dict[str, Any]
    chain_id: str
    name: str  # the record a container names as its image


@dataclass
class _Resolved:
    config: str
    size: int
    user: str


class ImageService:
    """PullImage, ImageStatus, ListImages, RemoveImage and ImageFsInfo, in ``k8s.io``."""

    def __init__(self, images: ImageStore, content: Provider, puller: Puller,
                 resolvers: ResolverFactory, snapshotter: Snapshotter, *,
                 snapshotter_name: str = "overlayfs", fs_path: str = "") -> None:
        self.images = images
        self.content = content
        self.puller = puller
        self.resolvers = resolvers
        self.snapshotter = snapshotter
        self.snapshotter_name = snapshotter_name
        self.fs_path = fs_path

    # -- documents ------------------------------------------------------------------------

    def _read(self, digest: str) -> bytes:
        with self.content.reader(digest) as r:
            if r.size > MAX_DOCUMENT:
                raise errdefs.InvalidArgument(f"{digest} is too large for an image document")
            return r.read_at(0, r.size)

    def _resolve(self, target: Descriptor) -> _Resolved:
        """The config, size (every document and layer the image's manifest for this host leads
        to, the target included: containerd's Image.Size) and user of a target."""
        size = target.size
        desc = target
        if target.media_type in manifest.INDEX_TYPES:
            desc = manifest.select_manifest(manifest.parse_index(self._read(target.digest)),
                                            platforms.host())
            size += desc.size
        if desc.media_type not in manifest.MANIFEST_TYPES:
            raise errdefs.InvalidArgument(f"{desc.digest}: {desc.media_type!r} is not an image")
        m = manifest.parse_manifest(self._read(desc.digest))
        config = manifest.parse_config(self._read(m.config.digest))
        size += m.config.size + sum(layer.size for layer in m.layers)
        inner = config.raw.get("config")
        user = inner.get("User", "") if isinstance(inner, dict) else ""
        return _Resolved(m.config.digest, size, user if isinstance(user, str) else "")

    def _all(self) -> dict[str, CRIImage]:
        """The CRI's images by ID, from every record of the namespace that resolves."""
        out: dict[str, CRIImage] = {}
        for record in sorted(self.images.list(), key=lambda i: i.name):
            try:
                resolved = self._resolve(record.target)
            except (errdefs.NotFound, errdefs.InvalidArgument):
                continue  # content not (or no longer) here, or not an image for this host
            image = out.get(resolved.config)
            if image is None:
                uid, username = user_of(resolved.user)
                image = out[resolved.config] = CRIImage(resolved.config, size=resolved.size,
                                                         uid=uid, username=username)
            image.references.append(record.name)
        for image in out.values():
            image.repo_tags, image.repo_digests = split_references(image.references)
        return out

    def _find(self, ref_or_id: str) -> CRIImage | None:
        """containerd's localResolve: an ID (full, or a unique prefix with or without
        ``sha256:``), else a reference normalized and looked up by name."""
        images = self._all()
        if ref_or_id in images:
            return images[ref_or_id]
        try:
            named = str(reference.parse(ref_or_id))
        except errdefs.InvalidArgument:
            named = ""
        if named:
            for image in images.values():
                if named in image.references:
                    return image
        short = ref_or_id.removeprefix("sha256:")
        if short and all(c in "0123456789abcdef" for c in short):
            found = [i for i in images.values() if i.id.removeprefix("sha256:").startswith(short)]
            if len(found) == 1:
                return found[0]
        return None

    def _reference(self, name: str, target: Descriptor) -> None:
        """containerd's createImageReference: the record ``name`` pointing at ``target``,
        labelled managed; an existing one is updated only when it differs."""
        labels = {MANAGED_LABEL: MANAGED}
        try:
            self.images.create(Image(name, target, labels))
            return
        except errdefs.AlreadyExists:
            pass
        old = self.images.get(name)
        if old.target.digest == target.digest and old.labels.get(MANAGED_LABEL) == MANAGED:
            return
        self.images.update(Image(name, target, labels), ["target", f"labels.{MANAGED_LABEL}"])

    # -- the RPCs --------------------------------------------------------------------------

    def pull(self, ref: str, auth: Auth | None = None) -> str:
        """Pull ``ref`` (unpacked) and record it; the image ID."""
        named = reference.parse(ref)
        creds = credentials(auth, named.host)
        resolver = self.resolvers(False, {named.host: creds} if creds else {})
        opts = PullOptions(platform=platforms.host(), unpack=True,
                           snapshotter=self.snapshotter_name)
        with namespaces.use(NAMESPACE):
            try:
                pulled = self.puller.pull(resolver, str(named), opts)
            except (errdefs.NotFound, errdefs.InvalidArgument):
                raise
            except errdefs.BerthError as err:
                # containerd answers Unknown for what is neither missing nor malformed (a host
                # that cannot be reached, a registry error).
                raise errdefs.Unknown(
                    f"failed to pull and unpack image {str(named)!r}: {err}") from None
            image_id = self._resolve(pulled.target).config
            repo_tag = str(named) if named.tag and not named.digest else ""
            repo_digest = f"{named.name}@{pulled.target.digest}"
            for name in (image_id, repo_tag, repo_digest):
                if name:
                    self._reference(name, pulled.target)
        return image_id

    def local(self, ref_or_id: str) -> LocalImage | None:
        """The image as a container is created from it, or None when it is not here."""
        with namespaces.use(NAMESPACE):
            image = self._find(ref_or_id)
            if image is None:
                return None
            config_doc = self._read(image.id)
            parsed = manifest.parse_config(config_doc)
        chain = manifest.chain_ids(parsed.diff_ids)
        if not chain:
            raise errdefs.InvalidArgument(f"image {image.id} has no layers")
        # A container names the image by the reference it was asked for when that is one of
        # the image's records, else by its first tag (containerd's toContainerdImage).
        name = next((r for r in image.references if r == ref_or_id), "")
        if not name:
            with contextlib.suppress(errdefs.InvalidArgument):
                name = str(reference.parse(ref_or_id))
            if name not in image.references:
                name = (image.repo_tags or image.repo_digests or [image.id])[0]
        return LocalImage(image, parsed.raw, chain[-1], name)

    def ensure(self, ref: str, auth: Auth | None = None) -> LocalImage:
        """The image, pulled first when it is not here (containerd's ensureImageExists)."""
        found = self.local(ref)
        if found is None:
            self.pull(ref, auth)
            found = self.local(ref)
        if found is None:
            raise errdefs.NotFound(f"image {ref!r} not found after pulling it")
        return found

    def status(self, ref_or_id: str) -> CRIImage | None:
        """The image, or None (the CRI answers an empty status, not an error)."""
        with namespaces.use(NAMESPACE):
            return self._find(ref_or_id)

    def list(self) -> list[CRIImage]:
        with namespaces.use(NAMESPACE):
            return sorted(self._all().values(), key=lambda i: i.id)

    def remove(self, ref_or_id: str) -> None:
        """Delete every record of the image (the last synchronously); unknown is no error."""
        with namespaces.use(NAMESPACE):
            image = self._find(ref_or_id)
            if image is None:
                return
            for i, name in enumerate(image.references):
                with contextlib.suppress(errdefs.NotFound):
                    self.images.delete(name, sync=i == len(image.references) - 1)

    def fs_usage(self) -> tuple[int, str, int, int]:
        """(timestamp ns, mountpoint, used bytes, inodes used) of the image filesystem: the
        snapshots of ``k8s.io``, as containerd's ImageFsInfo sums them."""
        used = inodes = 0
        with namespaces.use(NAMESPACE):
            for info in list(self.snapshotter.walk()):
                try:
                    usage = self.snapshotter.usage(info.name)
                except errdefs.NotFound:
                    continue
                used += usage.size
                inodes += usage.inodes
        return time.time_ns(), self.fs_path, used, inodes
