"""Settings from the environment (names kept from the original plan), overridden by CLI flags.

Validated once at start: a folder that is missing and cannot be made, or is not writable, is a
`ConfigError` naming the variable, the path and the reason.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_PORT = 8188
TOKEN_FILE = "access_token"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A setting is wrong; the message says which one and what to do."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_path: Path = Path("data")
    gallery_path: Path = Path("outputs")
    inbox_path: Path = Path("inbox")
    lora_path: Path | None = None
    checkpoint_path: Path | None = None
    # Wildcard files (`animal.txt`, one value a line) for `__animal__` in expanded prompts.
    wildcards_path: Path | None = None
    inbox_poll_seconds: float | None = None
    # A dropped file is read once its size and mtime have held still this long (SMB clients
    # create the file first and fill it over seconds).
    inbox_settle_seconds: float = 1.0
    # Full rescans besides the watcher's events: events get lost (inotify overflow, replaced
    # folders), and a vanished share is noticed here.
    inbox_rescan_seconds: float = 30.0
    token: str | None = field(default=None, repr=False)
    civitai_api_key: str | None = field(default=None, repr=False)
    civitai_base_url: str = "https://civitai.com"
    # Downloads go to <LORA_PATH or CHECKPOINT_PATH>/<base model>/ when set (CIVITAI_SUBFOLDERS=1).
    civitai_subfolders: bool = False
    # Civitai retry tuning: 429/500/503 and dropped connections back off (Retry-After wins).
    civitai_retry_backoff: float = 2.0
    civitai_retry_backoff_max: float = 60.0
    civitai_max_retries: int = 6  # consecutive failures without progress before a download fails
    # Dispatcher tuning: defaults suit a real Forge server; tests shorten them.
    health_interval: float = 10.0
    progress_interval: float = 0.5
    stall_timeout: float = 180.0
    max_attempts: int = 3
    # A job running each time the core died may be what kills it: fail it after this many.
    max_interruptions: int = 25
    retry_backoff: float = 2.0
    retry_backoff_max: float = 60.0
    # Retention. Finished jobs older than `retention_archive_days` leave the default job list
    # (GET /api/v1/queue/jobs?archived=1 still finds them); older than `retention_prune_days`
    # they are deleted from the history unless pinned. Images always stay. 0 turns either off.
    retention_archive_days: float = 14.0
    retention_prune_days: float = 0.0
    retention_interval: float = 3600.0  # seconds between prune sweeps (one also runs at start)
    # Notifications: Apprise URLs (they hold tokens: never logged, never returned).
    notify_urls: tuple[str, ...] = field(default=(), repr=False)
    # Webhook signing key; when unset one is made and kept in CONFIG_DATA_PATH/webhook_secret.
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_max_attempts: int = 12
    webhook_backoff: float = 1.0  # first retry after this many seconds, doubling
    webhook_backoff_max: float = 600.0
    webhook_timeout: float = 10.0
    # The phone page's address for links in notifications (e.g. https://sd.example.net);
    # unset: http://<HOST, or the LAN address for 0.0.0.0>:<PORT>.
    public_url: str | None = None
    # Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (addresses or
    # networks); from anyone else those headers are ignored.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    # Scheduling: "checkpoint" keeps servers on the model they have loaded; "fifo" is queue order.
    scheduler: str = "checkpoint"
    # A job passed over this long, or by this many jobs, runs next whatever it costs.
    max_wait_seconds: float = 1800.0
    max_overtakes: int = 200
    # A zip download whose client takes nothing for this long is dropped (a phone that put the
    # download in the background), freeing its worker. Not an environment variable: tests set it.
    archive_stall_timeout: float = 60.0
    # Model sync: default cap, in GB (10^9 bytes), of the copies made into one server's sync
    # folders (a server's own sync_cap_gb wins); None: no cap.
    model_sync_cap_gb: float | None = None

    def with_overrides(self, **changes: Any) -> Settings:
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in changes.items() if k in known and v is not None})


_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def split_notify_urls(raw: str) -> tuple[str, ...]:
    """NOTIFY_URLS: Apprise URLs separated by spaces or commas. A comma only separates when a
    new `scheme://` follows, so commas inside a URL (`mailto://...?to=a@x.org,b@y.org`) stay."""
    parts = re.split(r"\s+|,(?=\s*[A-Za-z][A-Za-z0-9+.-]*://)", raw.strip())
    urls = tuple(p.strip().strip(",") for p in parts if p.strip().strip(","))
    for index, url in enumerate(urls, start=1):
        if not _URL_START.match(url):
            # Only the position: the entry may be a token pasted without its scheme.
            raise ValueError(f"entry {index} does not start with scheme://")
    return urls


def split_networks(raw: str) -> tuple[IPNetwork, ...]:
    """TRUSTED_PROXIES: addresses or networks (CIDR), separated by spaces or commas."""
    networks = []
    for index, entry in enumerate(re.split(r"[\s,]+", raw.strip()), start=1):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(
                f"entry {index} ({entry!r}) is not an IP address or network "
                "(e.g. 172.17.0.1 or 10.0.0.0/8)"
            ) from None
    return tuple(networks)


def _flag(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


_ENV: dict[str, tuple[str, Any]] = {
    "HOST": ("host", str),
    "PORT": ("port", int),
    "CONFIG_DATA_PATH": ("data_path", Path),
    "STABLE_DIFFUSION_SAVE_PATH": ("gallery_path", Path),
    "INBOX_PATH": ("inbox_path", Path),
    "LORA_PATH": ("lora_path", Path),
    "CHECKPOINT_PATH": ("checkpoint_path", Path),
    "WILDCARDS_PATH": ("wildcards_path", Path),
    "INBOX_POLL_SECONDS": ("inbox_poll_seconds", float),
    "INBOX_SETTLE_SECONDS": ("inbox_settle_seconds", float),
    "INBOX_RESCAN_SECONDS": ("inbox_rescan_seconds", float),
    "MOBILESD_TOKEN": ("token", str),
    "CIVITAI_API_KEY": ("civitai_api_key", str),
    "CIVITAI_BASE_URL": ("civitai_base_url", str),
    "CIVITAI_SUBFOLDERS": ("civitai_subfolders", _flag),
    # Dispatcher tuning (names of our own; the first ones above come from the original plan).
    "MOBILESD_HEALTH_SECONDS": ("health_interval", float),
    "MOBILESD_STALL_SECONDS": ("stall_timeout", float),
    "MOBILESD_MAX_ATTEMPTS": ("max_attempts", int),
    "MOBILESD_SCHEDULER": ("scheduler", str),
    "MOBILESD_MAX_WAIT_SECONDS": ("max_wait_seconds", float),
    "MOBILESD_MAX_OVERTAKES": ("max_overtakes", int),
    "MODEL_SYNC_CAP_GB": ("model_sync_cap_gb", float),
    # Notifications, webhooks, retention.
    "NOTIFY_URLS": ("notify_urls", split_notify_urls),
    "WEBHOOK_SECRET": ("webhook_secret", str),
    "WEBHOOK_MAX_ATTEMPTS": ("webhook_max_attempts", int),
    "PUBLIC_URL": ("public_url", str),
    "TRUSTED_PROXIES": ("trusted_proxies", split_networks),
    "RETENTION_ARCHIVE_DAYS": ("retention_archive_days", float),
    "RETENTION_PRUNE_DAYS": ("retention_prune_days", float),
}


def settings_from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read the environment, then apply non-None overrides (CLI flags)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for var, (name, kind) in _ENV.items():
        raw = env.get(var)
        if raw is None or raw.strip() == "":
            continue
        try:
            values[name] = kind(raw.strip())
        except ValueError as exc:
            # Their messages name the entry (NOTIFY_URLS only by position: it holds tokens).
            if kind in (split_notify_urls, split_networks):
                raise ConfigError(f"{var} is not valid: {exc}") from None
            expected = {int: "a whole number", _flag: "1 or 0 (true/false, yes/no)"}.get(
                kind, "a number"
            )
            raise ConfigError(f"{var}={raw!r} is not valid: expected {expected}") from None
    settings = Settings().with_overrides(**values).with_overrides(**overrides)
    if not 0 < settings.port < 65536:
        raise ConfigError(f"PORT={settings.port} is not valid: expected 1-65535")
    if settings.inbox_poll_seconds is not None and settings.inbox_poll_seconds <= 0:
        raise ConfigError("INBOX_POLL_SECONDS must be a positive number of seconds")
    if settings.scheduler not in ("checkpoint", "fifo"):
        raise ConfigError(
            f"MOBILESD_SCHEDULER={settings.scheduler!r} is not valid: expected checkpoint or fifo"
        )
    if settings.model_sync_cap_gb is not None and settings.model_sync_cap_gb <= 0:
        raise ConfigError(
            f"MODEL_SYNC_CAP_GB must be positive (found {settings.model_sync_cap_gb}); "
            "leave it unset for no cap"
        )
    for var, value in (
        ("MOBILESD_MAX_WAIT_SECONDS", settings.max_wait_seconds),
        ("MOBILESD_MAX_OVERTAKES", settings.max_overtakes),
        ("INBOX_SETTLE_SECONDS", settings.inbox_settle_seconds),
        ("INBOX_RESCAN_SECONDS", settings.inbox_rescan_seconds),
        ("MOBILESD_HEALTH_SECONDS", settings.health_interval),
        ("MOBILESD_STALL_SECONDS", settings.stall_timeout),
        ("MOBILESD_MAX_ATTEMPTS", settings.max_attempts),
        ("WEBHOOK_MAX_ATTEMPTS", settings.webhook_max_attempts),
    ):
        if value <= 0:
            raise ConfigError(f"{var} must be positive (found {value})")
    for var, value in (
        ("RETENTION_ARCHIVE_DAYS", settings.retention_archive_days),
        ("RETENTION_PRUNE_DAYS", settings.retention_prune_days),
    ):
        if value < 0:
            raise ConfigError(f"{var} must be 0 (off) or a positive number of days")
    archive, prune = settings.retention_archive_days, settings.retention_prune_days
    if archive and prune and prune < archive:
        raise ConfigError(
            f"RETENTION_PRUNE_DAYS ({prune:g}) must be at least RETENTION_ARCHIVE_DAYS "
            f"({archive:g}): jobs are archived first, pruned later"
        )
    if settings.public_url is not None and not re.match(
        r"^https?://[^\s/?#]+", settings.public_url
    ):
        raise ConfigError("PUBLIC_URL must be an http(s) address, e.g. https://sd.example.net")
    return settings


def _ensure_writable_dir(var: str, path: Path, *, create: bool) -> Path:
    path = path.expanduser()
    if not path.exists():
        if not create:
            raise ConfigError(f"{var}: folder {path} does not exist")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"{var}: folder {path} does not exist and cannot be created ({exc.strerror})"
            ) from None
    if not path.is_dir():
        raise ConfigError(f"{var}: {path} is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{var}: folder {path} is not writable by this user (uid {os.getuid()}); "
            "fix its owner or mode"
        )
    return path.resolve()


def prepare(settings: Settings) -> Settings:
    """Check and create the folders the core writes to; resolve paths. Run once at start."""
    data = _ensure_writable_dir("CONFIG_DATA_PATH", settings.data_path, create=True)
    gallery = _ensure_writable_dir("STABLE_DIFFUSION_SAVE_PATH", settings.gallery_path, create=True)
    lora = settings.lora_path.expanduser().resolve() if settings.lora_path else None
    ckpt = settings.checkpoint_path.expanduser().resolve() if settings.checkpoint_path else None
    wildcards = settings.wildcards_path.expanduser().resolve() if settings.wildcards_path else None
    inbox = settings.inbox_path.expanduser()
    if settings.inbox_path == Settings.inbox_path and not inbox.exists():
        # Only the default ./inbox is made: a configured path that is missing is usually an
        # unmounted share, and a folder made in its place would swallow the user's files.
        _ensure_writable_dir("INBOX_PATH", inbox, create=True)
    return replace(
        settings,
        data_path=data,
        gallery_path=gallery,
        inbox_path=settings.inbox_path.expanduser().resolve(),
        lora_path=lora,
        checkpoint_path=ckpt,
        wildcards_path=wildcards,
    )


def write_secret_file(path: Path, text: str) -> None:
    """Create a file readable only by its owner (0600) from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


WEBHOOK_SECRET_FILE = "webhook_secret"


def _read_secret_file(path: Path, remedy: str) -> str:
    """The secret kept in `path` ("" when there is none). One that is not text is not one this
    program wrote: a ConfigError says so, rather than quietly making a new one that the phones
    or webhook receivers holding the old one would not know."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ""
    try:
        return raw.decode().strip()
    except UnicodeDecodeError:
        raise ConfigError(f"CONFIG_DATA_PATH: {path} is damaged (not text); {remedy}") from None


def load_or_create_webhook_secret(settings: Settings) -> tuple[str, bool]:
    """WEBHOOK_SECRET if set, else the one kept in CONFIG_DATA_PATH (made on first use).
    Returns (secret, whether it came from the environment)."""
    if settings.webhook_secret:
        return settings.webhook_secret, True
    path = settings.data_path / WEBHOOK_SECRET_FILE
    secret = _read_secret_file(
        path,
        "put the secret your webhook receivers check back in it, or delete it to make a new one "
        "(then give the receivers the new one)",
    )
    if secret:
        return secret, False
    secret = secrets.token_hex(32)
    write_secret_file(path, secret + "\n")
    return secret, False


def load_or_create_token(settings: Settings) -> str:
    """MOBILESD_TOKEN if set, else the token kept in CONFIG_DATA_PATH (made on first start)."""
    if settings.token:
        return settings.token
    path = settings.data_path / TOKEN_FILE
    token = _read_secret_file(
        path,
        "delete it to make a new token (the phone link printed at start then changes), or set "
        "MOBILESD_TOKEN",
    )
    if token:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return token
    token = secrets.token_urlsafe(24)
    write_secret_file(path, token + "\n")
    return token
