"""Which models the model service offers, under which names, with which llama-server options.

The service is llama-server's router mode fed a ``--models-preset`` INI that this module writes:
one section per model of the models folder, named by its catalog name (its aliases in
``alias``) or, for any other ``.gguf``, by its file stem. Options come from the catalog (an
embedding model gets ``embeddings``; its pooling comes from the GGUF's metadata) and from the
config file's ``[models.NAME]`` tables, looked up by name, alias or file stem.

Facts about the router this relies on (pinned commit, ``tools/server/server-models.cpp`` and
``common/preset.cpp``): a section name is the model name; keys are llama-server's long option
names without dashes (``ctx-size``), ``true`` for a flag; ``alias`` is a comma-separated list of
further names; a value runs to the end of its line or to a ``;`` or ``#`` (a comment), and a
section name to the first ``]``; the router re-reads the file on ``GET /models?reload=1``.

Everything here is private and I/O-free apart from listing the folder.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lmserv.config import ModelOptions
from lmserv.errors import ConfigError
from lmserv.install._catalog import CatalogEntry
from lmserv.install._hub_store import HUB_FOLDER, MANIFEST_SUFFIX
from lmserv.install._models import list_models

__all__ = ["PresetModel", "folder_snapshot", "parse_keep_alive", "preset_models", "render_preset"]

log = logging.getLogger(__name__)

# Characters the INI grammar cannot carry in a section name or a value (see the docstring);
# ":" too, because the router rewrites a section name's ":tag" suffix.
_UNSAFE = re.compile(r"[\[\]\r\n;#:]")
# A hub pull's name keeps its ":QUANT": the router serves such a section under its full name
# (checked at the pinned commit: [hf.co/o/r:Q8_0] is listed and routed as "hf.co/o/r:Q8_0").
_UNSAFE_HUB = re.compile(r"[\[\]\r\n;#]")
_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_keep_alive(value: str | float | None) -> int:
    """Seconds a model stays loaded after its last request, from Ollama's ``keep_alive`` form.

    ``"5m"``, ``"30s"``, ``"1h"``, ``"90"`` (seconds), ``0`` (unload after each request) and
    ``-1`` (never unload; returned as ``-1``). ``None`` is the default, ``"5m"``. The engine's
    idle timer counts whole seconds from 1, so a positive part of a second rounds up and ``0``
    becomes 1 second after the request.

    >>> parse_keep_alive("5m"), parse_keep_alive("30s"), parse_keep_alive(0), parse_keep_alive(-1)
    (300, 30, 1, -1)
    """
    if value is None:
        return 300
    m = _DURATION.match(str(value))
    if m is None or (float(m.group(1)) < 0 and float(m.group(1)) != -1):
        raise ConfigError(
            f"keep-alive {value!r} is not a duration; use e.g. 5m, 30s, 1h, 0 (unload after "
            "each request) or -1 (never unload)"
        )
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < 0:
        return -1
    whole = int(seconds)
    return max(1, whole + (1 if seconds > whole else 0))


@dataclass(frozen=True)
class PresetModel:
    """One model as the service offers it: ``name``, further ``aliases``, its GGUF ``path``
    (the first shard, for a split model), an ``mmproj`` file, and llama-server ``options``."""

    name: str
    path: Path
    aliases: tuple[str, ...] = ()
    mmproj: Path | None = None
    options: tuple[tuple[str, str], ...] = ()


def _model_file(path: Path) -> tuple[Path, Path | None] | None:
    """The GGUF to load (and its ``mmproj-*`` file) for a models-folder entry, or ``None``."""
    if path.is_file():
        return (path, None) if path.suffix == ".gguf" else None
    ggufs = sorted(p for p in path.glob("*.gguf") if p.is_file())
    mmproj = next((p for p in ggufs if p.name.startswith("mmproj")), None)
    weights = [p for p in ggufs if not p.name.startswith("mmproj")]
    shards = [p for p in weights if re.search(r"-0*1-of-\d+\.gguf$", p.name)]
    if len(weights) == 1 or shards:
        return (shards[0] if shards else weights[0]), mmproj
    return None


def args_to_options(args: Sequence[str]) -> list[tuple[str, str]]:
    """llama-server flags as preset keys: ``["--pooling", "mean", "--embeddings"]`` gives
    ``[("pooling", "mean"), ("embeddings", "true")]``.

    >>> args_to_options(["-ngl", "-1", "--no-mmap", "--rope-scaling=linear"])
    [('ngl', '-1'), ('no-mmap', 'true'), ('rope-scaling', 'linear')]
    """

    def is_flag(token: str) -> bool:
        return token.startswith("-") and not re.fullmatch(r"-\d+(\.\d+)?", token)

    out: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        token = args[i]
        if not is_flag(token):
            raise ConfigError(
                f"llama-server argument {token!r} in {list(args)!r} follows no flag; give flags "
                'with their values, e.g. ["--pooling", "mean"]'
            )
        key, eq, value = token.lstrip("-").partition("=")
        if not eq:
            if i + 1 < len(args) and not is_flag(args[i + 1]):
                value = args[i + 1]
                i += 1
            else:
                value = "true"
        out.append((key, value))
        i += 1
    return out


def _options(entry: CatalogEntry | None, table: ModelOptions | None) -> tuple[tuple[str, str], ...]:
    found: dict[str, str] = {}
    if entry is not None:
        if entry.kind == "embedding":  # pooling and context: the engine reads the metadata
            found["embeddings"] = "true"
    if table is not None:
        if table.ctx_size is not None:
            found["ctx-size"] = str(table.ctx_size)
        if table.n_gpu_layers is not None and table.n_gpu_layers != "auto":
            found["n-gpu-layers"] = str(table.n_gpu_layers)
        if table.parallel is not None:
            found["parallel"] = str(table.parallel)
        found.update(args_to_options(table.extra_args))
    return tuple(found.items())


def preset_models(
    folder: Path,
    catalog: Mapping[str, CatalogEntry],
    tables: Mapping[str, ModelOptions],
) -> list[PresetModel]:
    """Every servable model in ``folder``: catalog models by catalog name (aliases added),
    any other ``.gguf`` (or model folder) by its stem. Partial downloads are skipped, and so
    are names and paths the preset format cannot carry (logged)."""
    taken: set[str] = set()
    models: list[PresetModel] = []
    by_name = {e.name: e for e in catalog.values()}
    for local in list_models(folder, catalog):
        if local.partial:
            continue
        entry = by_name.get(local.catalog_name) if local.catalog_name else None
        if local.name:  # a hub pull: served by the name it was pulled with (hf.co/OWNER/REPO:Q)
            path, mmproj, name, unsafe = local.path, local.mmproj, local.name, _UNSAFE_HUB
        else:
            picked = _model_file(local.path)
            if picked is None:
                continue
            path, mmproj = picked
            name = entry.name if entry else local.path.name.removesuffix(".gguf")
            unsafe = _UNSAFE
        aliases = tuple(a for a in (entry.aliases if entry else ()) if a not in taken | {name})
        texts = [name, *aliases, str(path), str(mmproj or "")]
        if (
            name in taken
            or any(unsafe.search(t) for t in texts[:-2])
            or any(re.search(r"[\r\n;#]", t) for t in texts[-2:])
        ):
            log.warning(
                "model service: skipping %s (name %r taken, or a character such as ; # : [ ] "
                "in its name or path that a llama-server preset cannot hold); rename the file",
                local.path,
                name,
            )
            continue
        table = next((tables[n] for n in (name, *aliases, path.stem) if n in tables), None)
        models.append(PresetModel(name, path, aliases, mmproj, _options(entry, table)))
        taken.update((name, *aliases))
    return models


def render_preset(models: Sequence[PresetModel]) -> str:
    """The ``--models-preset`` INI for ``models``."""
    lines = ["; written by lmserv's model service; rewritten when the models folder changes", ""]
    lines.append("version = 1")
    for model in models:
        lines += ["", f"[{model.name}]", f"model = {model.path}"]
        if model.mmproj is not None:
            lines.append(f"mmproj = {model.mmproj}")
        if model.aliases:
            lines.append(f"alias = {','.join(model.aliases)}")
        lines += [f"{key} = {value}" for key, value in model.options]
    return "\n".join(lines) + "\n"


def folder_snapshot(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """A cheap fingerprint of ``folder``'s entries (name, size, mtime): it changes when a model
    is pulled, copied in or removed, so the service knows when to rebuild its preset."""
    found = []
    hub = folder / HUB_FOLDER  # pulls land two folders down: their manifests say when
    manifests = sorted(hub.glob(f"*/*/.*{MANIFEST_SUFFIX}")) if hub.is_dir() else []
    try:
        for entry in [*folder.iterdir(), *manifests]:
            try:
                st = entry.stat()
            except OSError:
                continue  # removed while we looked
            found.append((str(entry.relative_to(folder)), st.st_size, st.st_mtime_ns))
    except OSError:
        return ()
    return tuple(sorted(found))
