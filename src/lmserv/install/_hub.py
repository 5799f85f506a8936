"""The Hugging Face hub as a model source: names, credentials, and which files a name means.

A hub model is asked for as ``hf.co/OWNER/REPO[:QUANT]`` (Ollama's form), ``OWNER/REPO:QUANT``
(llama-server's ``-hf``; the quantization is required here, so a mistyped path is not a hub name) or ``hf://OWNER/REPO[@REV]/FILE.gguf``; ``@REV`` may follow the
repository in every form. :func:`plan` turns a name into a :class:`HubPlan`: the commit the
revision pointed at (pinned: every file comes from that commit), the files (one GGUF, or every
part of a split set, plus a vision repository's ``mmproj``), and for each file the SHA-256 the
hub publishes for large (LFS) files, which the download is then verified against.

It asks the hub's public API the way ``huggingface_hub`` does (``hf_api.py``, ``file_download.py``,
``utils/_http.py``, ``constants.py``):

- ``GET {endpoint}/api/models/{repo}/revision/{rev}`` (``HfApi.model_info``): ``sha`` is the
  commit, ``gated`` and ``private`` say who may read it;
- ``GET {endpoint}/api/models/{repo}/tree/{commit}?recursive=true`` (``HfApi.list_repo_tree``,
  paginated with a ``Link: <…>; rel="next"`` header): ``path``, ``size``, ``oid`` (the git blob
  id) and, for LFS files, ``lfs.oid`` (the SHA-256) and ``lfs.size``;
- ``HEAD {endpoint}/{repo}/resolve/{commit}/{path}`` (``get_hf_file_metadata``, relative
  redirects followed, the storage redirect not): ``X-Repo-Commit``, ``X-Linked-Etag`` (the
  SHA-256 of an LFS file, quoted), ``X-Linked-Size``; this is also where a gated repository
  refuses (``X-Error-Code: GatedRepo``), so the refusal comes before a byte is written;
- errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``,
  ``GatedRepo``) and ``X-Error-Message`` (``hf_raise_for_status``).

Environment, as ``huggingface_hub.constants`` reads it: ``HF_ENDPOINT`` (a mirror),
``HF_TOKEN`` (then ``HUGGING_FACE_HUB_TOKEN``, then the token file ``HF_TOKEN_PATH``, by default
``$HF_HOME/token`` with ``HF_HOME`` defaulting to ``$XDG_CACHE_HOME/huggingface`` or
``~/.cache/huggingface``), ``HF_HUB_OFFLINE`` (checked by the caller: nothing here runs then).
The token goes to the endpoint's origin only; the downloader binds it there too, so the storage
host a resolve URL redirects to never sees it (:mod:`lmserv.install._http`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from lmserv.errors import ConfigError, DownloadError, GatedModel, ModelNotFound
from lmserv.install._catalog import HUB, hub_endpoint
from lmserv.install._download import with_retries
from lmserv.install._http import Retryable, origin, redact, retry_after
from lmserv.install._parallel import RetryPolicy

__all__ = [
    "QUANT_ORDER",
    "HubFile",
    "HubName",
    "HubPlan",
    "hub_token",
    "is_hub_name",
    "is_offline",
    "parse_hub_name",
    "plan",
    "quant_of",
]

log = logging.getLogger(__name__)

# Without :QUANT, the first of these the repository has. 4-bit first (the usual size/quality
# balance, and what Ollama and llama-server pick), then more bits before fewer (once 4-bit is
# missing, quality is worth more than size), full precision last (large).
QUANT_ORDER = (
    "Q4_K_M", "Q4_K_S", "Q4_0", "IQ4_XS", "IQ4_NL", "Q5_K_M", "Q5_K_S", "Q5_0", "Q6_K",
    "Q8_0", "Q3_K_M", "Q3_K_L", "Q3_K_S", "IQ3_M", "IQ3_XS", "Q2_K", "BF16", "F16", "F32",
)  # fmt: skip
_MMPROJ_ORDER = ("F16", "BF16", "F32", "Q8_0")
_PREFIXES = ("hf.co/", "huggingface.co/")
_PART = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$", re.IGNORECASE)
_QUANT = re.compile(r"^(?:I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32|FP16|FP32|TQ\d_\d|MXFP4(?:_MOE)?)$")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# OWNER/REPO only with :QUANT, so that a mistyped relative path never becomes a hub request.
_BARE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(?:@[\w.\-/]+)?:[\w.-]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_API_TIMEOUT = 10.0  # huggingface_hub's DEFAULT_ETAG_TIMEOUT / DEFAULT_REQUEST_TIMEOUT


@dataclass(frozen=True)
class HubName:
    """A hub model name, read: ``repo`` is ``owner/name``; ``quant`` or ``file`` (or neither)."""

    repo: str
    revision: str = "main"
    quant: str | None = None
    file: str | None = None

    def display(self) -> str:
        """The canonical way to write it (``hf.co/owner/repo:Q4_K_M``)."""
        rev = "" if self.revision == "main" else f"@{self.revision}"
        if self.file is not None:
            return f"hf://{self.repo}{rev}/{self.file}"
        return f"hf.co/{self.repo}{rev}" + (f":{self.quant}" if self.quant else "")


@dataclass(frozen=True)
class HubFile:
    """One file of a repository at a commit; ``sha256`` is None for a small non-LFS file,
    whose git blob id ``oid`` is checked instead."""

    path: str
    size: int
    sha256: str | None
    oid: str


@dataclass(frozen=True)
class HubPlan:
    """What to download for a name: files at ``commit``; ``files[0]`` is what llama.cpp opens."""

    name: HubName
    endpoint: str
    commit: str
    quant: str
    files: tuple[HubFile, ...]
    mmproj: HubFile | None = None

    def url(self, file: HubFile) -> str:
        """The resolve URL of ``file`` at the pinned commit (the hub redirects it to storage)."""
        return f"{self.endpoint}/{self.name.repo}/resolve/{self.commit}/{quote(file.path)}"


def is_hub_name(text: str) -> bool:
    """Whether ``text`` reads as a hub name rather than a catalog name, file or URL."""
    low = text.lower()
    if low.startswith(_PREFIXES) or low.startswith("hf://"):
        return True
    return bool(_BARE.match(text)) and not low.endswith((".gguf", ".bin"))


def parse_hub_name(text: str) -> HubName:
    """Read ``hf.co/OWNER/REPO[@REV][:QUANT]``, ``OWNER/REPO[@REV]:QUANT`` or
    ``hf://OWNER/REPO[@REV]/FILE.gguf``. Raises :class:`ConfigError` with the accepted forms.

    >>> parse_hub_name("hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:q4_k_m")
    HubName(repo='bartowski/SmolLM2-135M-Instruct-GGUF', revision='main', quant='Q4_K_M', file=None)
    """
    forms = (
        "write it as hf.co/OWNER/REPO[:QUANT], OWNER/REPO[:QUANT] or "
        "hf://OWNER/REPO[@REVISION]/FILE.gguf"
    )
    rest = text.strip()
    low = rest.lower()
    file: str | None = None
    quant: str | None = None
    if low.startswith("hf://"):
        forms = "write it as hf://owner/repo/file.gguf or hf://owner/repo@revision/file.gguf"
        parts = [p for p in rest[len("hf://") :].split("/") if p]
        if len(parts) < 3:
            raise ConfigError(f"cannot read the Hugging Face spec {text!r}; {forms}")
        rest, file = "/".join(parts[:2]), "/".join(parts[2:])
        if any(p in (".", "..") or "\\" in p for p in parts[2:]):
            raise ConfigError(f"the file path in {text!r} leaves the repository; {forms}")
    else:
        for prefix in _PREFIXES:
            if low.startswith(prefix):
                rest = rest[len(prefix) :]
                break
        rest, sep, tag = rest.partition(":")
        if sep:
            quant = tag.strip().upper()
            if not quant or not re.fullmatch(r"[\w.-]+", quant):
                raise ConfigError(f"{text!r} has an empty or malformed quantization; {forms}")
    repo, _, revision = rest.partition("@")
    owner, _, name = repo.partition("/")
    if not (_SEGMENT.match(owner) and _SEGMENT.match(name)) or ".." in repo:
        raise ConfigError(f"cannot read the repository in {text!r}; {forms}")
    if revision and (".." in revision or not re.fullmatch(r"[\w.\-/]+", revision)):
        raise ConfigError(f"cannot read the revision {revision!r} in {text!r}; {forms}")
    return HubName(f"{owner}/{name}", revision or "main", quant, file)


def is_offline(env: Mapping[str, str] | None = None) -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it (1, ON, YES, TRUE)."""
    env = os.environ if env is None else env
    return env.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_token(env: Mapping[str, str] | None = None) -> str | None:
    """The user's hub token: ``HF_TOKEN``, ``HUGGING_FACE_HUB_TOKEN``, else the token file."""
    env = os.environ if env is None else env
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if env.get(key, "").strip():
            return env[key].strip()
    cache = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    home = os.path.expanduser(env.get("HF_HOME") or os.path.join(cache, "huggingface"))
    path = Path(os.path.expanduser(env.get("HF_TOKEN_PATH") or os.path.join(home, "token")))
    try:
        token = path.read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


def quant_of(path: str) -> str | None:
    """The quantization a GGUF file name states (``x-Q4_K_M-00001-of-00002.gguf`` -> Q4_K_M).

    >>> quant_of("Qwen2.5-0.5B-Instruct-Q4_K_M.gguf"), quant_of("llama.Q8_0.gguf")
    ('Q4_K_M', 'Q8_0')
    >>> quant_of("gemma-3-4b-it-UD-Q4_K_XL.gguf"), quant_of("model.gguf")
    ('Q4_K_XL', None)
    """
    base = path.rsplit("/", 1)[-1]
    match = _PART.match(base)
    stem = (
        match.group("stem")
        if match
        else base[: -len(".gguf")]
        if base.lower().endswith(".gguf")
        else base
    )
    for token in reversed(re.split(r"[-.]", stem)):
        if _QUANT.match(token.upper()):
            return token.upper()
    return None


def _is_mmproj(path: str) -> bool:
    return "mmproj" in path.rsplit("/", 1)[-1].lower()


# -- the API -----------------------------------------------------------------------------------


class _Api:
    """GETs and HEADs on the hub's own origin, the token attached, errors mapped once."""

    def __init__(self, endpoint: str, token: str | None, policy: RetryPolicy) -> None:
        self.endpoint = endpoint
        self.token = token
        self.policy = policy
        self._client = httpx.Client(
            timeout=httpx.Timeout(_API_TIMEOUT), follow_redirects=False, trust_env=True
        )

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, url: str, name: HubName) -> httpx.Response:
        """One call, retried on 5xx/429/network errors; relative redirects followed (a
        renamed repository), a redirect to another origin returned as it is."""

        def once() -> httpx.Response:
            target = url
            for _hop in range(6):
                headers = {"User-Agent": "lmserv", "Accept-Encoding": "identity"}
                if self.token and origin(target) == origin(self.endpoint):
                    headers["Authorization"] = f"Bearer {self.token}"
                response = self._client.request(method, target, headers=headers)
                location = response.headers.get("location")
                if response.status_code in (301, 302, 303, 307, 308) and location:
                    following = str(httpx.URL(target).join(location))
                    # A renamed repository answers with a redirect on the hub itself: follow
                    # it. The redirect of a resolve URL to the storage host carries the file's
                    # metadata and is the answer; nothing is sent there.
                    same = origin(following) == origin(self.endpoint)
                    if same and "x-linked-etag" not in response.headers:
                        target = following
                        continue
                    return response
                if response.status_code >= 500 or response.status_code in (408, 429):
                    raise Retryable(
                        f"HTTP {response.status_code} from {redact(target)}",
                        retry_after(response.headers.get("retry-after")),
                    )
                if response.status_code >= 400:
                    raise _hub_error(response, name, self.token is not None)
                return response
            raise DownloadError(f"too many redirects from {redact(url)}; check HF_ENDPOINT")

        return with_retries(
            once, self.policy, lambda why: f"asking the hub about {name.display()} failed: {why}"
        )


def _hub_error(response: httpx.Response, name: HubName, had_token: bool) -> Exception:
    """The error for a refusal, from ``X-Error-Code`` first (as ``hf_raise_for_status``)."""
    code = response.headers.get("x-error-code", "")
    said = response.headers.get("x-error-message", "")
    status = response.status_code
    where = f"{name.display()} (HTTP {status} from {redact(str(response.request.url))}"
    where += f": {said})" if said else ")"
    page = f"{HUB}/{name.repo}"
    if code == "GatedRepo":
        todo = (
            f"your token has no access yet: accept the licence at {page} with the account "
            "the token belongs to"
            if had_token
            else f"accept its licence at {page}, then set HF_TOKEN to a token of that account "
            "(or log in with `hf auth login`)"
        )
        return GatedModel(f"{where} is a gated repository; {todo}")
    if code == "RevisionNotFound":
        return ModelNotFound(
            f"{where}: the repository has no revision {name.revision!r}; give a branch, tag "
            "or commit that exists, or leave @REVISION out for main"
        )
    if code == "EntryNotFound":
        return ModelNotFound(f"{where}: no such file in the repository; see {page}/tree/main")
    if code == "RepoNotFound" or status in (401, 404):
        hint = (
            "check the name and that your token may read it"
            if had_token
            else "check the name; a private repository needs HF_TOKEN set to a token that "
            "may read it"
        )
        return ModelNotFound(f"{where}: repository {name.repo!r} not found; {hint}")
    if status == 403:
        return GatedModel(f"{where}: access refused; set HF_TOKEN to a token that may read it")
    return DownloadError(f"{where}; the hub refused the request")


def _json(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise DownloadError(
            f"{what} from {redact(str(response.request.url))} is not JSON; is HF_ENDPOINT a hub?"
        ) from None


def _next_link(response: httpx.Response) -> str | None:
    """The ``rel="next"`` page of a ``Link`` header (how the hub paginates trees)."""
    link: str = response.headers.get("link", "")
    for part in link.split(","):
        url, _, params = part.partition(";")
        if 'rel="next"' in params.replace(" ", ""):
            return url.strip().strip("<>")
    return None


def _tree(api: _Api, name: HubName, commit: str) -> list[HubFile]:
    url: str | None = f"{api.endpoint}/api/models/{name.repo}/tree/{commit}?recursive=true"
    files: list[HubFile] = []
    while url:
        response = api.request("GET", url, name)
        listing = _json(response, "the tree listing")
        if not isinstance(listing, list):
            raise DownloadError(
                f"the tree listing of {name.repo} is not a list; is HF_ENDPOINT a hub?"
            )
        for item in listing:
            if not isinstance(item, dict) or item.get("type") != "file":
                continue
            path = str(item.get("path", ""))
            parts = path.split("/")
            if path.startswith("/") or any(p in ("", ".", "..") or "\\" in p for p in parts):
                raise DownloadError(
                    f"the hub lists a file {path!r} in {name.repo} that is not a plain relative "
                    "path; nothing was downloaded. Is HF_ENDPOINT a hub you trust?"
                )
            lfs = item.get("lfs") if isinstance(item.get("lfs"), dict) else None
            sha = str(lfs.get("oid", "")).lower() if lfs else None
            if sha is not None and not _SHA256.match(sha):
                raise DownloadError(
                    f"the hub lists {item.get('path')!r} of {name.repo} with LFS oid {sha!r}, "
                    "not a SHA-256; is HF_ENDPOINT a hub?"
                )
            size = lfs.get("size") if lfs else item.get("size")
            files.append(HubFile(path, int(size or 0), sha, str(item.get("oid", ""))))
        following = _next_link(response)
        url = str(httpx.URL(url).join(following)) if following else None
    return files


def _check_metadata(api: _Api, plan_: HubPlan, file: HubFile) -> None:
    """HEAD the resolve URL: access (gated repos refuse here), and the hub's two descriptions
    of the file (tree listing, file metadata) must agree before a byte is downloaded."""
    response = api.request("HEAD", plan_.url(file), plan_.name)
    commit = response.headers.get("x-repo-commit")
    etag = response.headers.get("x-linked-etag") or response.headers.get("etag") or ""
    etag = etag.removeprefix("W/").strip('"').lower()
    size = response.headers.get("x-linked-size") or response.headers.get("content-length")
    problems = []
    if commit and commit != plan_.commit:
        problems.append(f"commit {commit} instead of {plan_.commit}")
    if file.sha256 and etag and etag != file.sha256:
        problems.append(f"SHA-256 {etag} instead of the listed {file.sha256}")
    if size and size.isdigit() and int(size) != file.size:
        problems.append(f"{size} bytes instead of the listed {file.size}")
    if problems:
        raise DownloadError(
            f"the hub describes {file.path} of {plan_.name.display()} two ways: its file "
            f"metadata says {', '.join(problems)}; nothing was downloaded. Try again later "
            "(the repository may be changing), or check HF_ENDPOINT"
        )


# -- choosing files ----------------------------------------------------------------------------


def _groups(files: list[HubFile]) -> dict[str, list[list[HubFile]]]:
    """GGUF model files by quantization label; a split set is one group, ordered by part."""
    sets: dict[tuple[str, int], list[HubFile]] = {}
    singles: list[list[HubFile]] = []
    for file in files:
        if not file.path.lower().endswith(".gguf") or _is_mmproj(file.path):
            continue
        base = file.path.rsplit("/", 1)[-1]
        match = _PART.match(base)
        if match:
            key = (
                file.path[: len(file.path) - len(base)] + match.group("stem"),
                int(match.group("n")),
            )
            sets.setdefault(key, []).append(file)
        else:
            singles.append([file])
    groups: dict[str, list[list[HubFile]]] = {}
    for (_stem, total), parts in sorted(sets.items()):
        parts.sort(key=lambda f: f.path)
        numbers = [int(_PART.match(p.path.rsplit("/", 1)[-1]).group("i")) for p in parts]  # type: ignore[union-attr]
        if numbers != list(range(1, total + 1)):
            log.warning("split set %s lacks parts (has %s of %d); skipped", _stem, numbers, total)
            continue
        singles.append(parts)
    for group in sorted(singles, key=lambda g: g[0].path):
        label = quant_of(group[0].path) or group[0].path.rsplit("/", 1)[-1][: -len(".gguf")]
        groups.setdefault(label.upper(), []).append(group)
    return groups


def _choose(name: HubName, files: list[HubFile]) -> tuple[str, list[HubFile], HubFile | None]:
    mmprojs = sorted(
        (f for f in files if _is_mmproj(f.path) and f.path.endswith(".gguf")), key=lambda f: f.path
    )
    if name.file is not None:
        chosen = [f for f in files if f.path == name.file]
        if not chosen:
            raise ModelNotFound(
                f"{name.display()}: the repository {name.repo} at {name.revision} has no file "
                f"{name.file!r}; its GGUF files: {', '.join(f.path for f in files if f.path.endswith('.gguf')) or 'none'}"
            )
        match = _PART.match(name.file.rsplit("/", 1)[-1])
        if match:  # a part of a split set stands for the whole set
            for group in (g for gs in _groups(files).values() for g in gs):
                if chosen[0] in group:
                    chosen = group
        quant = quant_of(name.file) or ""
        return quant, chosen, (_pick_mmproj(mmprojs, quant) if not _is_mmproj(name.file) else None)
    groups = _groups(files)
    if not groups:
        raise ModelNotFound(
            f"{name.display()}: the repository {name.repo} at {name.revision} has no GGUF "
            "model file; lmserv serves GGUF files only (look for a repository named …-GGUF)"
        )
    have = ", ".join(sorted(groups))
    if name.quant is not None:
        if name.quant not in groups:
            raise ModelNotFound(
                f"{name.display()}: the repository {name.repo} has no quantization "
                f"{name.quant}; it has {have}. Pull one of those, e.g. "
                f"`lmserv pull hf.co/{name.repo}:{_default(groups)}`"
            )
        quant = name.quant
    else:
        quant = _default(groups)
    return quant, groups[quant][0], _pick_mmproj(mmprojs, quant)


def _default(groups: Mapping[str, object]) -> str:
    for quant in QUANT_ORDER:
        if quant in groups:
            return quant
    return sorted(groups)[0]


def _pick_mmproj(mmprojs: list[HubFile], quant: str) -> HubFile | None:
    if not mmprojs:
        return None
    for wanted in (quant, *_MMPROJ_ORDER):
        for file in mmprojs:
            if quant_of(file.path) == wanted:
                return file
    return mmprojs[0]


def plan(
    name: HubName,
    *,
    env: Mapping[str, str] | None = None,
    retries: int = 3,
    backoff: float = 0.5,
    check: Callable[[HubFile], bool] | None = None,
) -> HubPlan:
    """Ask the hub which files ``name`` stands for, pinned to a commit, with their digests.

    ``check(file)`` returning True skips the metadata HEAD for a file already held and verified.
    Raises :class:`ModelNotFound` (no such repository, revision, file or quantization: the
    message lists the quantizations there are), :class:`GatedModel` (a gated or private
    repository without access), :class:`DownloadError` (network, or the hub contradicting
    itself), :class:`ConfigError` (a malformed ``HF_ENDPOINT``).
    """
    endpoint = hub_endpoint(HUB, env)
    api = _Api(endpoint, hub_token(env), RetryPolicy(retries=retries, backoff=backoff))
    try:
        rev = quote(name.revision, safe="")
        response = api.request("GET", f"{endpoint}/api/models/{name.repo}/revision/{rev}", name)
        info = _json(response, "the model info")
        commit = str(info.get("sha") or "") if isinstance(info, dict) else ""
        if not re.fullmatch(r"[0-9a-f]{40}", commit):
            raise DownloadError(
                f"the hub's model info for {name.display()} names no commit (sha {commit!r}); "
                "is HF_ENDPOINT a hub?"
            )
        files = _tree(api, name, commit)
        quant, chosen, mmproj = _choose(name, files)
        result = HubPlan(name, endpoint, commit, quant, tuple(chosen), mmproj)
        for file in (*chosen, *([mmproj] if mmproj else [])):
            if check is None or not check(file):
                _check_metadata(api, result, file)
        log.info(
            "%s is %s at commit %s (%d file%s)",
            name.display(),
            ", ".join(f.path for f in chosen),
            commit[:12],
            len(chosen),
            "" if len(chosen) == 1 else "s",
        )
        return result
    except httpx.InvalidURL as exc:
        raise ConfigError(f"HF_ENDPOINT {endpoint!r} does not make valid URLs ({exc})") from None
    finally:
        api.close()
