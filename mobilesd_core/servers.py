"""The configured Forge servers at run time: settings, client, health, cached model lists.

The registry is the only owner of ForgeClients. It health-checks each server on an interval
(and at once when asked), publishes a `server` event whenever what a client would see changes,
and wakes the dispatcher when a server comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from .errors import MobileSDError, NotFound
from .events import EventBus
from .forge.client import ForgeClient
from .forge.errors import ForgeError
from .forge.models import CheckpointInfo, model_key
from .forge.payload import ServerCatalog
from .jobs.store import ServerStore
from .schema import FieldProblem, ServerConfig
from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

CATALOG_TTL = 300.0
SLOT_EVENT_WINDOW = 0.1  # seconds over which slot changes are gathered into one server event


@dataclass
class ServerRuntime:
    config: ServerConfig
    client: ForgeClient
    online: bool = False
    checked: bool = False
    latency_ms: float | None = None
    current_checkpoint: str | None = None
    error: str | None = None
    active: int = 0  # jobs MobileSD runs there now
    planned_checkpoint: str | None = None  # model key of the last job sent there
    last_check: float = 0.0
    checkpoints: list[CheckpointInfo] | None = None
    catalog: ServerCatalog | None = None
    catalog_at: float = 0.0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # The URL that last answered a probe as Forge does; failures there are shown in detail.
    forge_url: str | None = None
    detail: str | None = None  # the last failure's own words, for the log (see shown_error)

    @property
    def alias(self) -> str:
        return self.config.alias

    @property
    def available(self) -> bool:
        return self.config.enabled and self.online

    @property
    def loaded(self) -> str | None:
        """Model key (see routing.model_key) it has, or will have once its jobs are done."""
        if self.active and self.planned_checkpoint:
            return self.planned_checkpoint
        return model_key(self.current_checkpoint) if self.current_checkpoint else None

    @property
    def free_slots(self) -> int:
        return max(0, self.config.max_concurrent - self.active) if self.available else 0

    def status(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "online": self.online,
            "enabled": self.config.enabled,
            "checked": self.checked,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
            "current_checkpoint": self.current_checkpoint,
            "busy": self.active > 0,
            "active_jobs": self.active,
            "max_concurrent": self.config.max_concurrent,
            "error": self.error,
        }


def not_forge_yet(alias: str) -> str:
    """The one reason shown for an address that never answered as Forge, whatever went wrong.

    The token chooses server URLs, so telling "connection refused" from "timeout", "host name
    not found" or an HTTP status there would make the status a scanner of the owner's network.
    The core's log (the owner's) has the exact reason."""
    return (
        f"server '{alias}' has not answered as Forge at this address yet (unreachable, no "
        "--api, or the login was refused); the core's log says which"
    )


class ServerNotFound(NotFound):
    code = "server_not_found"

    @property
    def public_message(self) -> str:
        return f"no server named '{self.args[0]}'"


class ServerExists(MobileSDError):
    status = 409
    code = "server_exists"

    @property
    def public_message(self) -> str:
        return f"a server named '{self.args[0]}' exists"


ClientFactory = Callable[[ServerConfig], ForgeClient]


def origin(url: str) -> tuple[str, bytes, int | None]:
    """Where requests to `url` go: scheme, host (IDNA, lower case) and port (None: the
    scheme's default, so http://h and http://h:80 are one address)."""
    parsed = httpx.URL(url)
    return parsed.scheme, parsed.raw_host.lower(), parsed.port


def password_stays_problem(
    current: ServerConfig, new_url: str | None, fields: set[str]
) -> FieldProblem | None:
    """A stored password goes (as Basic auth) only to the address it was given for.

    A change of scheme, host or port without `password` in the same request is refused, naming
    `password`: anyone holding the token could otherwise point the server at a listener of
    theirs and read the password off the first health check. Refused rather than dropped, so
    the person editing is told at the field instead of finding a 401 later. A change of path
    only keeps the password (same server)."""
    if new_url is None or "password" in fields:
        return None
    if not (current.password and current.password.get_secret_value()):
        return None
    if origin(new_url) == origin(current.api_url):
        return None
    return FieldProblem(
        path="password",
        message="re-enter the password for the new address: a stored password is only sent "
        "to the scheme, host and port it was given for",
    )


def default_client_factory(
    transport: httpx.AsyncBaseTransport | None = None,
) -> ClientFactory:
    def make(config: ServerConfig) -> ForgeClient:
        return ForgeClient(
            config.alias,
            config.api_url,
            username=config.username,
            password=config.password.get_secret_value() if config.password else None,
            transport=transport,
        )

    return make


class ServerRegistry:
    def __init__(
        self,
        store: ServerStore,
        bus: EventBus,
        *,
        health_interval: float,
        client_factory: ClientFactory | None = None,
        on_available: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._interval = health_interval
        self._factory = client_factory or default_client_factory()
        self._on_available = on_available or (lambda: None)
        self.runtimes: dict[str, ServerRuntime] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}  # health loop per runtime (by id)
        self._retired: list[ForgeClient] = []  # replaced clients jobs may still be using
        self._slots_changed: dict[int, ServerRuntime] = {}  # by id: to publish at the next flush
        self._flush: asyncio.TimerHandle | None = None

    def set_on_available(self, callback: Callable[[], None]) -> None:
        self._on_available = callback

    async def start(self) -> None:
        for stored in self._store.all():
            config = ServerConfig.model_validate(stored)
            self._add_runtime(config)

    async def stop(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        await cancel_and_wait(*self._tasks.values())
        self._tasks.clear()
        for client in [*(r.client for r in self.runtimes.values()), *self._retired]:
            await client.aclose()
        self._retired.clear()

    def _add_runtime(self, config: ServerConfig) -> ServerRuntime:
        runtime = ServerRuntime(config=config, client=self._factory(config))
        self.runtimes[config.alias] = runtime
        self._start_health_loop(runtime)
        return runtime

    def _start_health_loop(self, runtime: ServerRuntime) -> None:
        """Its first check runs at once: a job queued now need not wait for a health round."""
        self._tasks[id(runtime)] = asyncio.create_task(
            self._health_loop(runtime), name=f"health-{runtime.alias}"
        )

    async def _stop_health_loop(self, runtime: ServerRuntime) -> None:
        await cancel_and_wait(self._tasks.pop(id(runtime), None))

    async def _retire_client(self, runtime: ServerRuntime) -> None:
        # A running job keeps using the client it started with; close it later if so.
        if runtime.active:
            self._retired.append(runtime.client)
        else:
            await runtime.client.aclose()

    def get(self, alias: str) -> ServerRuntime:
        try:
            return self.runtimes[alias]
        except KeyError:
            raise ServerNotFound(alias) from None

    # -- CRUD (persisted first, then applied) ----------------------------------------------

    async def _persist(self, configs: dict[str, ServerConfig]) -> None:
        await self._store.replace_all({a: c.stored() for a, c in configs.items()})

    def _configs(self) -> dict[str, ServerConfig]:
        return {a: r.config for a, r in self.runtimes.items()}

    async def add(self, config: ServerConfig) -> ServerRuntime:
        if config.alias in self.runtimes:
            raise ServerExists(config.alias)
        configs = self._configs()
        configs[config.alias] = config
        await self._persist(configs)
        runtime = self._add_runtime(config)
        log.info("server %s added (%s)", config.alias, config.api_url)
        self._publish(runtime)
        return runtime

    async def update(self, alias: str, config: ServerConfig) -> ServerRuntime:
        """Apply new settings to the same runtime, so its slot count and running jobs carry
        over; a new client (URL, credentials) is used from the next request on."""
        runtime = self.get(alias)
        if config.alias != alias and config.alias in self.runtimes:
            raise ServerExists(config.alias)
        configs = {(config.alias if a == alias else a): c for a, c in self._configs().items()}
        configs[config.alias] = config
        await self._persist(configs)
        # A check of the old settings still running would report on them, and then wait a
        # whole round before the new ones are looked at: it is dropped, the new ones checked now.
        await self._stop_health_loop(runtime)
        await self._retire_client(runtime)
        runtime.config = config
        runtime.client = self._factory(config)
        runtime.checkpoints = runtime.catalog = None
        runtime.online = runtime.checked = False
        self.runtimes = {(config.alias if a == alias else a): r for a, r in self.runtimes.items()}
        self._start_health_loop(runtime)
        log.info("server %s updated", config.alias)
        if config.alias != alias:
            self._bus.publish("server", {"alias": alias, "removed": True})
        self._publish(runtime)
        return runtime

    async def remove(self, alias: str) -> None:
        self.get(alias)
        configs = self._configs()
        del configs[alias]
        await self._persist(configs)
        runtime = self.runtimes.pop(alias)
        await self._stop_health_loop(runtime)
        runtime.online = False  # jobs still running there finish; nothing new is sent
        await self._retire_client(runtime)
        log.info("server %s removed", alias)
        self._bus.publish("server", {"alias": alias, "removed": True})

    # -- health ------------------------------------------------------------------------------

    def _publish(self, runtime: ServerRuntime) -> None:
        self._bus.publish("server", runtime.status())

    def slots_changed(self, runtime: ServerRuntime) -> None:
        """A job took or freed one of the server's slots: clients show busy/idle from this.
        Published once per short window, so a stream of jobs costs one event per window, not
        two per job."""
        self._slots_changed[id(runtime)] = runtime
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(
                SLOT_EVENT_WINDOW, self._publish_slots
            )

    def _publish_slots(self) -> None:
        self._flush = None
        changed, self._slots_changed = self._slots_changed, {}
        for runtime in changed.values():
            if self.runtimes.get(runtime.alias) is runtime:  # not removed or replaced meanwhile
                self._publish(runtime)

    def shown_error(self, runtime: ServerRuntime, message: str, client: ForgeClient) -> str:
        """What answers and events may say about a failure of `client` (the server's client
        then): the failure itself once its URL has answered as Forge (a documented
        troubleshooting aid about the user's own server), else one coarse reason, with the
        detail logged when it changes."""
        if runtime.forge_url is not None and runtime.forge_url == client.api_url:
            return message
        if message != runtime.detail:
            runtime.detail = message
            log.warning(
                "server %s (%s) has not answered as Forge yet: %s",
                runtime.alias,
                client.api_url,
                message,
            )
        return not_forge_yet(runtime.alias)

    async def check(self, runtime: ServerRuntime) -> dict[str, Any]:
        """Probe the server now; update and publish its status."""
        client = runtime.client
        failure: ForgeError | None = None
        try:
            options, latency = await client.probe()
        except ForgeError as exc:
            failure = exc
        if client is not runtime.client:
            return runtime.status()  # edited meanwhile: the new settings' probe decides
        # Judged against the state after the probe, not before it: a job may have marked the
        # server offline meanwhile, and a probe that then succeeds must publish it and wake the
        # dispatcher (else jobs for this server wait for an unrelated wake-up).
        before = runtime.status()
        was_available = runtime.available
        if failure is not None:
            runtime.online = False
            runtime.error = self.shown_error(runtime, failure.message, client)
            runtime.latency_ms = None
        else:
            runtime.forge_url = client.api_url
            runtime.detail = None
            runtime.online = True
            runtime.error = None
            runtime.latency_ms = latency
            runtime.current_checkpoint = options.get("sd_model_checkpoint")
        runtime.checked = True
        runtime.last_check = time.monotonic()
        status = runtime.status()
        # Latency alone changes on every probe; it is not worth an event.
        if {**status, "latency_ms": None} != {**before, "latency_ms": None}:
            if runtime.online != before["online"]:
                log.info(
                    "server %s is %s%s",
                    runtime.alias,
                    "online" if runtime.online else "offline",
                    f": {runtime.error}" if runtime.error else "",
                )
            self._publish(runtime)
        if runtime.available and not was_available:
            self._on_available()
        return status

    def mark_offline(self, runtime: ServerRuntime, error: str) -> None:
        """A job could not reach the server: take it out of rotation and re-probe soon."""
        if runtime.online:
            log.warning("server %s went offline: %s", runtime.alias, error)
        runtime.online = False
        runtime.error = self.shown_error(runtime, error, runtime.client)
        self._publish(runtime)
        runtime.wake.set()

    def note_checkpoint(self, runtime: ServerRuntime, title: str | None) -> None:
        if title and runtime.current_checkpoint != title:
            runtime.current_checkpoint = title
            self._publish(runtime)

    async def _health_loop(self, runtime: ServerRuntime) -> None:
        while True:
            runtime.wake.clear()  # before the check: a wake during it asks for another
            try:
                await self.check(runtime)
                if runtime.online and runtime.checkpoints is None:
                    await self._load_models(runtime)
            except Exception:
                log.exception("health check of %s failed unexpectedly", runtime.alias)
            # Offline servers are probed more often, so they rejoin quickly.
            delay = self._interval if runtime.online else min(self._interval, 2.0)
            with contextlib.suppress(TimeoutError):  # (not wait_for: see Dispatcher._hand_over)
                async with asyncio.timeout(delay):
                    await runtime.wake.wait()

    # -- model lists -------------------------------------------------------------------------

    async def _load_models(self, runtime: ServerRuntime) -> None:
        """Fetch the lists when a server first answers: jobs are routed by what it has."""
        try:
            await self.checkpoints(runtime)
            await self.catalog(runtime)
        except ForgeError as exc:
            log.info("could not list the models of %s yet: %s", runtime.alias, exc.message)
            return
        self._on_available()  # routing may have changed: let the dispatcher look again

    async def checkpoints(
        self, runtime: ServerRuntime, *, refresh: bool = False
    ) -> list[CheckpointInfo]:
        if refresh or runtime.checkpoints is None:
            runtime.checkpoints = await runtime.client.checkpoints(refresh=refresh)
        return runtime.checkpoints

    async def catalog(self, runtime: ServerRuntime, *, refresh: bool = False) -> ServerCatalog:
        stale = time.monotonic() - runtime.catalog_at > CATALOG_TTL
        if refresh or runtime.catalog is None or stale:
            runtime.catalog = await runtime.client.catalog(refresh_loras=refresh)
            # Without its LoRA list (a Forge still starting) it is read again at the next use.
            runtime.catalog_at = time.monotonic() if runtime.catalog.loras_listed else -CATALOG_TTL
        return runtime.catalog

    async def refresh_models(self, kind: str) -> None:
        """Ask every reachable server to rescan its checkpoints (`kind` "checkpoint") or LoRAs
        (after a download put a new file in the shared folder). Offline servers list their
        files when they come back; a failure is logged, never raised."""

        async def one(runtime: ServerRuntime) -> None:
            try:
                if kind == "checkpoint":
                    await self.checkpoints(runtime, refresh=True)
                else:
                    await self.catalog(runtime, refresh=True)
            except ForgeError as exc:
                log.warning("server %s: model list refresh failed: %s", runtime.alias, exc.message)
            else:
                log.info("server %s: %s list refreshed", runtime.alias, kind)

        targets = [r for r in self.runtimes.values() if r.config.enabled and r.online]
        await asyncio.gather(*(one(r) for r in targets))
