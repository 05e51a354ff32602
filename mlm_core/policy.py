"""What a browser user of a MaskLab server may do, declared once and set by the server's operator.

Every student who opens a shared MaskLab is an untrusted user of the machine it runs on. The
operator chooses the limits below in a TOML file and/or environment variables; the app, the job
system and the tests read them through ``server_policy()``. The command line is the local user's
own tool: it keeps full access to the machine's folders and is bounded only where a limit protects
the machine itself (model size, memory).

Where the settings come from, later overriding earlier:

1. the defaults declared on ``ServerPolicy`` (safe for a shared server);
2. the TOML file named by ``MASKLAB_CONFIG``, else ``<MASKLAB_HOME>/server.toml`` when it exists,
   keys as the field names below, e.g. ``model_sources = ["/srv/models", "bert-base-uncased"]``;
3. one environment variable per field, ``MASKLAB_`` + the field name in capitals, e.g.
   ``MASKLAB_MAX_MASKS_PER_TEXT=40`` or ``MASKLAB_MODEL_SOURCES=/srv/models:bert-base-uncased``
   (lists separated by the platform's path separator, ``:`` on Linux and macOS).

Example: ``server_policy().max_masks_per_text == 100`` unless the operator set another value.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from mlm_core.errors import InputError
from mlm_core.settings import Validated, param, param_specs

CONFIG_ENV = "MASKLAB_CONFIG"
ENV_PREFIX = "MASKLAB_"
ANY_SOURCE = "*"  # in model_sources: browsers may load any folder or hub id (a single-user machine only)


def masklab_home() -> Path:
    """Where MaskLab keeps its runs, caches and the operator's ``server.toml``: ``MASKLAB_HOME`` or ``~/.masklab``."""
    return Path(os.environ.get("MASKLAB_HOME", Path.home() / ".masklab"))


@dataclass(frozen=True)
class ServerPolicy(Validated):
    """The operator's limits for browser users; every field is declared once, with its bounds and help."""

    label = "server settings"

    model_sources: tuple[str, ...] = field(default=(), metadata=param(
        "Folders (each holding model folders, or a model folder itself) and hub ids that browser users may "
        "load, besides the built-in model and finished runs, which are always allowed. The folder "
        "<MASKLAB_HOME>/models is always allowed too. '*' allows anything: only for a machine nobody else "
        "reaches."))
    max_masks_per_text: int = field(default=100, metadata=param(
        "Most masks one text may carry in the app (typed [MASK]s and masks a strategy draws); more are "
        "refused with a message.", min=1, max=2048))
    max_joint_fill_masks: int = field(default=32, metadata=param(
        "Most masks filled jointly (one forward pass per mask, most confident first); beyond it the app and "
        "the CLI fill them independently and say so.", min=1, max=512))
    max_charts_per_page: int = field(default=24, metadata=param(
        "Most per-mask charts a page draws; the rest are summarised in one table.", min=1, max=500))
    max_queued_runs: int = field(default=8, metadata=param(
        "Most fine-tuning runs waiting or training at once on this server; a new start beyond it is "
        "refused until one ends.", min=1, max=1000))
    max_runs_per_owner: int = field(default=2, metadata=param(
        "Most runs one browser session (or signed-in user) may have waiting or training at once.",
        min=1, max=1000))
    max_run_minutes: int = field(default=120, metadata=param(
        "Longest a browser user's run may be estimated to take (the estimate the Fine-tune page shows); a "
        "longer one is refused, so one run cannot hold the training queue for a day.", min=1, max=100_000))
    run_store_quota_mb: int = field(default=20_000, metadata=param(
        "Most disk space the run store may use, in MB; a start that would go past it is refused.",
        min=10, max=10_000_000))
    others_may_manage_runs: bool = field(default=False, metadata=param(
        "Whether a browser user may cancel, delete or download runs that another session started "
        "(everyone may always view them)."))
    user_header: str = field(default="", metadata=param(
        "An HTTP header set by an authenticating reverse proxy (e.g. X-Forwarded-User) naming the signed-in "
        "user; runs then belong to that user instead of the browser session. Empty: no such proxy."))
    model_memory_fraction: float = field(default=0.5, metadata=param(
        "Most of the machine's available memory one model may take (computed from its config before "
        "any weight is allocated); a bigger model is refused.", min=0.01, max=1.0))
    max_model_layers: int = field(default=96, metadata=param(
        "Most layers a model's config may declare; more is refused before loading.", min=1, max=10_000))
    shared_results_mb: int = field(default=64, metadata=param(
        "Memory, in MB, for the predictions every session shares: a sentence the whole class types runs the "
        "model once; the least recently used are dropped first. 0 turns the sharing off.", min=0, max=100_000))

    def allows_any_model(self) -> bool:
        return ANY_SOURCE in self.model_sources


def _from_environment() -> dict[str, Any]:
    """The fields set through ``MASKLAB_<NAME>`` variables (raw strings; ``ServerPolicy`` parses them)."""
    values: dict[str, Any] = {}
    for spec in param_specs(ServerPolicy):
        raw = os.environ.get(ENV_PREFIX + spec.name.upper())
        if raw is None:
            continue
        if spec.kind in ("text_list", "int_list"):
            values[spec.name] = tuple(part.strip() for part in raw.split(os.pathsep) if part.strip())
        else:
            values[spec.name] = raw
    return values


def config_file() -> Path | None:
    """The operator's TOML file: ``MASKLAB_CONFIG`` (which must exist), else ``<MASKLAB_HOME>/server.toml`` if present."""
    named = os.environ.get(CONFIG_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise InputError(f"{CONFIG_ENV} names {str(path)!r}, which is not a file.")
        return path
    default = masklab_home() / "server.toml"
    return default if default.is_file() else None


def _from_file(path: Path) -> dict[str, Any]:
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"The server settings in {path} cannot be read: {exc}") from None
    known = {spec.name for spec in param_specs(ServerPolicy)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"{path}: unknown setting {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    return {name: tuple(value) if isinstance(value, list) else value for name, value in values.items()}


@lru_cache(maxsize=1)
def server_policy() -> ServerPolicy:
    """The settings in force (read once per process; ``reload_policy()`` reads them again).

    InputError, naming the file or variable, when a setting is invalid: a server must not start
    with limits it did not mean.
    """
    path = config_file()
    values = _from_file(path) if path else {}
    from_environment = _from_environment()
    values.update(from_environment)
    try:
        return ServerPolicy(**values)
    except InputError as exc:
        origins = [str(path)] if path else []
        origins += [ENV_PREFIX + name.upper() for name in from_environment]
        raise InputError(f"{exc} (set in {', '.join(origins) or 'the defaults'})") from None


def reload_policy() -> ServerPolicy:
    """Forget the cached settings and read them again (tests, and ``masklab app`` after writing a file)."""
    server_policy.cache_clear()
    return server_policy()


def describe_policy(policy: ServerPolicy | None = None) -> list[tuple[str, str, str]]:
    """(setting, value in force, what it means) for the README and ``masklab app --show-settings``."""
    policy = policy or server_policy()
    return [(spec.name, spec.format(getattr(policy, spec.name)), spec.help) for spec in param_specs(ServerPolicy)]


def replace_policy(**changes: Any) -> ServerPolicy:
    """A copy of the settings in force with ``changes`` (validated), for tests and callers that narrow them."""
    return dataclasses.replace(server_policy(), **changes)
