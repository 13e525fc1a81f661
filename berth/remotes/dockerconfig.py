"""Registry credentials in a docker ``config.json``, read like docker does and written by
``berth login`` / ``berth logout``.

The file (``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``)::

    {
      "auths": {
        "https://index.docker.io/v1/": {"auth": "<base64 user:password>"},
        "registry.example.com": {"username": "u", "password": "p"},
        "127.0.0.1:5000": {"identitytoken": "<refresh token>"}
      },
      "credHelpers": {"registry.example.com": "pass"},
      "credsStore": "desktop"
    }

Keys may be bare hosts or URLs (``https://host/v1/``); Docker Hub answers to ``docker.io``,
``index.docker.io`` and ``registry-1.docker.io`` alike. Lookups prefer, in order: a credential
helper named in ``credHelpers`` for the host, an ``auths`` entry, then ``credsStore``
(``docker-credential-<name> get``). An identity token is returned as ``("", token)``.

Writes keep every other key of the file, go to a temporary file created with mode 0600 in the
same directory and replace the original in one rename, so a crash never leaves a half-written
file and the secrets are never readable by others, even for a moment.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

from berth import errdefs

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_NAMES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_HELPER_NOT_FOUND = "credentials not found"
HELPER_TIMEOUT = 30.0


def default_config_path() -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    directory = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return Path(directory) / "config.json"


def normalize_host(key: str) -> str:
    """The registry host a config key or host name stands for (``docker.io`` for the Hub)."""
    host = key.split("://", 1)[-1].split("/", 1)[0].lower()
    return "docker.io" if host in _DOCKER_HUB_NAMES else host


def _entry_key(host: str) -> str:
    return DOCKER_HUB_KEY if normalize_host(host) == "docker.io" else host


class DockerConfig:
    """One docker config file. An instance is a :data:`berth.remotes.Credentials` callable."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_config_path()

    def __call__(self, host: str) -> tuple[str, str] | None:
        return self.credentials(host)

    # -- reading ----------------------------------------------------------------------------

    def load(self) -> dict[str, Any]:
        """The whole file as a dict ({} if it does not exist); InvalidArgument if unreadable."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise errdefs.InvalidArgument(f"cannot read {self.path}: {err}") from err
        if not text.strip():
            return {}
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise errdefs.InvalidArgument(f"{self.path} is not valid JSON: {err}") from err
        if not isinstance(doc, dict):
            raise errdefs.InvalidArgument(f"{self.path}: expected a JSON object")
        return doc

    def credentials(self, host: str) -> tuple[str, str] | None:
        """(username, secret) for ``host``, ``("", identity_token)``, or None."""
        doc = self.load()
        helpers = doc.get("credHelpers")
        if isinstance(helpers, dict):
            for key, helper in helpers.items():
                if normalize_host(key) == normalize_host(host) and isinstance(helper, str):
                    return _helper_get(helper, host)
        entry = self._find_entry(doc, host)
        if entry is not None:
            found = self._decode_entry(host, entry)
            if found is not None:
                return found
        store = doc.get("credsStore")
        if isinstance(store, str) and store:
            return _helper_get(store, host)
        return None

    def _find_entry(self, doc: dict[str, Any], host: str) -> dict[str, Any] | None:
        auths = doc.get("auths")
        if not isinstance(auths, dict):
            return None
        if isinstance(auths.get(host), dict):
            return dict(auths[host])
        wanted = normalize_host(host)
        for key, entry in auths.items():
            if normalize_host(key) == wanted and isinstance(entry, dict):
                return dict(entry)
        return None

    def _decode_entry(self, host: str, entry: dict[str, Any]) -> tuple[str, str] | None:
        token = entry.get("identitytoken")
        if isinstance(token, str) and token:
            return ("", token)
        encoded = entry.get("auth")
        if isinstance(encoded, str) and encoded:
            try:
                decoded = base64.b64decode(encoded, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError) as err:
                raise errdefs.InvalidArgument(
                    f"{self.path}: the 'auth' entry for {host} is not base64 of user:password"
                ) from err
            user, sep, password = decoded.partition(":")
            if not sep:
                raise errdefs.InvalidArgument(
                    f"{self.path}: the 'auth' entry for {host} has no ':' between user and password"
                )
            return (user, password)
        name, secret = entry.get("username"), entry.get("password")
        if isinstance(name, str) and isinstance(secret, str) and secret:
            return (name, secret)
        return None

    # -- writing ----------------------------------------------------------------------------

    def store(self, host: str, username: str, secret: str) -> None:
        """Save credentials for ``host`` (an empty username saves ``secret`` as an identity
        token), replacing any entry that names the same registry."""
        if not secret:
            raise errdefs.InvalidArgument("a password or token is required")
        if ":" in username:
            raise errdefs.InvalidArgument("a username cannot contain ':'")
        doc = self.load()
        auths = self._auths_without(doc, host)
        if username:
            token = base64.b64encode(f"{username}:{secret}".encode()).decode()
            auths[_entry_key(host)] = {"auth": token}
        else:
            auths[_entry_key(host)] = {"identitytoken": secret}
        doc["auths"] = auths
        self._write(doc)

    def remove(self, host: str) -> bool:
        """Forget the credentials for ``host``; False if there were none."""
        doc = self.load()
        before = doc.get("auths")
        if not isinstance(before, dict):
            return False
        after = self._auths_without(doc, host)
        if len(after) == len(before):
            return False
        doc["auths"] = after
        self._write(doc)
        return True

    def _auths_without(self, doc: dict[str, Any], host: str) -> dict[str, Any]:
        auths = doc.get("auths")
        if auths is None:
            return {}
        if not isinstance(auths, dict):
            raise errdefs.InvalidArgument(f"{self.path}: 'auths' is not a JSON object")
        wanted = normalize_host(host)
        return {k: v for k, v in auths.items() if normalize_host(k) != wanted}

    def _write(self, doc: dict[str, Any]) -> None:
        # Write through a symlinked config.json to its target, as docker does.
        target = Path(os.path.realpath(self.path))
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        data = (json.dumps(doc, indent="\t") + "\n").encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _helper_get(helper: str, host: str) -> tuple[str, str] | None:
    """Ask ``docker-credential-<helper>`` (docker's credential helper protocol)."""
    program = f"docker-credential-{helper}"
    server = DOCKER_HUB_KEY if normalize_host(host) == "docker.io" else host
    try:
        proc = subprocess.run(
            [program, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError as err:
        raise errdefs.FailedPrecondition(
            f"the docker config names credential helper {helper!r} but {program} is not installed"
        ) from err
    except subprocess.TimeoutExpired as err:
        raise errdefs.Unavailable(f"{program} did not answer in {HELPER_TIMEOUT:.0f} s") from err
    output = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0:
        if _HELPER_NOT_FOUND in output.lower():
            return None
        message = output or proc.stderr.decode(errors="replace").strip()
        raise errdefs.Unavailable(f"{program} get failed: {message}")
    try:
        answer = json.loads(output)
        user: object = answer["Username"]
        secret: object = answer["Secret"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise errdefs.Unavailable(f"{program} get answered something unreadable") from err
    if not isinstance(user, str) or not isinstance(secret, str) or not secret:
        return None
    # Helpers mark an identity token with the username "<token>".
    return ("", secret) if user == "<token>" else (user, secret)
