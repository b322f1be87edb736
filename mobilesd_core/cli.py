"""The `mobilesd` command: serve, link, demo, submit, validate, forge-sim, tui."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__, logflood
from .config import DEFAULT_PORT, TOKEN_FILE, ConfigError, Settings, prepare, settings_from_env
from .runner import bind_listener, run_until_signalled

log = logging.getLogger("mobilesd")


TUI_TABS = ("generator", "queue", "gallery", "servers")
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT, datefmt="%H:%M:%S"
    )
    # httpx logs every request URL at INFO; URLs may carry user info on misconfigured servers.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logflood.install()  # a stranger's flood of connections must not become a flood of log


def _add_core_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="bind address (HOST; default 127.0.0.1)")
    parser.add_argument("--port", type=int, help=f"HTTP port (PORT; default {DEFAULT_PORT})")
    parser.add_argument("--data", type=Path, help="CONFIG_DATA_PATH (default ./data)")
    parser.add_argument("--gallery", type=Path, help="STABLE_DIFFUSION_SAVE_PATH (./outputs)")
    parser.add_argument("--inbox", type=Path, help="INBOX_PATH (default ./inbox)")
    parser.add_argument("--lora-path", type=Path, help="LORA_PATH")
    parser.add_argument("--checkpoint-path", type=Path, help="CHECKPOINT_PATH")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _settings(args: argparse.Namespace, **fallbacks: Any) -> Settings:
    """Environment, then flags; `fallbacks` fill in what no flag gave (the demo's folders)."""
    flags = {
        "host": args.host,
        "port": args.port,
        "data_path": args.data,
        "gallery_path": args.gallery,
        "inbox_path": args.inbox,
        "lora_path": args.lora_path,
        "checkpoint_path": args.checkpoint_path,
    }
    for key, value in fallbacks.items():
        if flags.get(key) is None:
            flags[key] = value
    return settings_from_env(**flags)


def token_is_new(settings: Settings) -> bool:
    """Whether the core will generate its token on this start (none configured or kept)."""
    if settings.token:
        return False
    path = settings.data_path / TOKEN_FILE
    try:
        return not path.read_text().strip()
    except FileNotFoundError:
        return True


def token_source(settings: Settings) -> str:
    if settings.token:
        return "Access token: from MOBILESD_TOKEN."
    return f"Access token: kept in {settings.data_path / TOKEN_FILE} (mode 0600)."


LINK_AGAIN = "`mobilesd link` (Docker: `docker exec mobilesd mobilesd link`)"


async def serve(settings: Settings, *, qr: bool = True) -> None:
    from aiohttp import web

    from .api.app import create_app, runner_options
    from .api.keys import TOKEN
    from .listener import raise_fd_limit
    from .phone_link import print_phone_link

    raise_fd_limit()
    listener = bind_listener(settings.host, settings.port)
    first_start = token_is_new(settings)
    app = create_app(settings)
    runner = web.AppRunner(app, **runner_options())

    async def start() -> None:
        await runner.setup()
        await web.SockSite(runner, listener, shutdown_timeout=5.0).start()
        print(f"MobileSD {__version__} listening on http://{settings.host}:{settings.port}")
        print(token_source(settings))
        if first_start:
            # Only when the token was just made: stdout may be a kept log (Docker's), so later
            # starts say where to get the link, not the link. Never through logging.
            print_phone_link(settings.host, listener.getsockname()[1], app[TOKEN], qr=qr)
            print(
                f"This link is printed only on this first start; {LINK_AGAIN} prints it again.",
                flush=True,
            )
        else:
            print(f"Phone sign-in link and its QR code: {LINK_AGAIN}.", flush=True)

    await run_until_signalled(start, runner.cleanup)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = prepare(_settings(args))
    try:
        asyncio.run(serve(settings, qr=not args.no_qr))
    except OSError as exc:
        # A file in the data folder that cannot be read or written as it must (a folder where a
        # file should be, no permission): named, as a configuration error, not a traceback.
        raise ConfigError(f"cannot start: {exc}") from None
    return 0


def cmd_link(args: argparse.Namespace) -> int:
    from .phone_link import print_phone_link

    settings = settings_from_env(host=args.host, port=args.port, data_path=args.data)
    token = settings.token
    path = settings.data_path / TOKEN_FILE
    if not token:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            print(
                f"mobilesd link: cannot read the access token {path} ({exc.strerror}); "
                "`mobilesd serve` makes it on its first start (or set CONFIG_DATA_PATH / --data)",
                file=sys.stderr,
            )
            return 2
        if not token:
            print(f"mobilesd link: {path} is empty; start `mobilesd serve`", file=sys.stderr)
            return 2
    print_phone_link(settings.host, settings.port, token, qr=not args.no_qr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    root = args.dir.resolve()
    if args.inbox is None:
        (root / "inbox").mkdir(parents=True, exist_ok=True)  # the demo's own: the examples go in
    settings = _settings(
        args, data_path=root / "data", gallery_path=root / "outputs", inbox_path=root / "inbox"
    )
    settings = prepare(settings)
    if not args.verbose:
        # The demo's console shows the job view; the full log goes to a file beside the data.
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.WARNING)
        file_handler = logging.FileHandler(settings.data_path / "mobilesd.log")
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().addHandler(file_handler)
    tui = not args.no_tui and not args.once and sys.stdin.isatty() and sys.stdout.isatty()
    image_widget = None
    if tui:
        from mobilesd_tui.thumbs import pick_image_widget

        _quiet_console_logging()
        image_widget = pick_image_widget()  # asks the terminal, so before the app starts
    ok = asyncio.run(
        run_demo(
            settings,
            step_ms=args.step_ms,
            tui=tui and not args.once,
            tab=args.tab,
            image_widget=image_widget,
            once=args.once,
        )
    )
    return 0 if ok else 1


def _quiet_console_logging() -> None:
    """Under the TUI the terminal is the app's: log lines would scribble over it."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            root.removeHandler(handler)
    if not root.handlers:
        root.addHandler(logging.NullHandler())


def cmd_forge_sim(args: argparse.Namespace) -> int:
    from .forge.simulator import config_from_args, run_simulator

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_simulator(config_from_args(args), args.host, args.port))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .jobfiles import load_job_file

    bad = 0
    for name in args.files:
        result = load_job_file(Path(name))
        if result.problems:
            bad += 1
            for problem in sorted(result.problems, key=lambda p: (p.line is not None, p.line or 0)):
                print(problem.render_in(name))
        else:
            print(f"{name}: ok, {len(result.jobs)} job(s)")
    return 1 if bad else 0


def client_target(url: str | None, token: str | None) -> tuple[str, str | None]:
    """Where the core is and its token: flags, then MOBILESD_URL/TOKEN, then this machine's."""
    settings = settings_from_env()
    url = url or os.environ.get("MOBILESD_URL") or f"http://127.0.0.1:{settings.port}"
    token = token or os.environ.get("MOBILESD_TOKEN")
    if not token:
        path = settings.data_path / TOKEN_FILE
        with contextlib.suppress(OSError):
            token = path.read_text().strip() or None
    return url.rstrip("/"), token


def cmd_submit(args: argparse.Namespace) -> int:
    import httpx

    from .jobfiles import load_job_file

    url, token = client_target(args.url, args.token)
    headers = {"X-MobileSD-Source": "cli"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    failures = 0
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        for name in args.files:
            result = load_job_file(Path(name), expand_prompts=False)
            if result.problems:
                failures += 1
                for problem in result.problems:
                    print(problem.render_in(name))
                continue
            # One request per file: its jobs are one batch, created all or none; templates
            # (`expand`) are expanded by the core, which holds the wildcard files.
            body = {"jobs": [spec.request_job(args.server) for spec in result.jobs]}
            try:
                refused = _upload_job_images(http, Path(name).parent, body["jobs"])
                if refused:
                    failures += 1
                    for line in refused:
                        print(f"{name}: {line}")
                    continue
                response = http.post("/api/v1/generate", json=body)
            except httpx.HTTPError as exc:
                print(f"mobilesd: cannot reach the core at {url} ({type(exc).__name__})")
                return 2
            if response.status_code != 202:
                failures += 1
                message = response.json().get("error", {}).get("message", response.text)
                print(f"{name}: refused ({response.status_code}): {message}")
                continue
            answer = response.json()
            count = len(answer["mobilesd_job_ids"])
            print(f"{name}: queued {count} job(s) as batch {answer['batch_id']}")
    return 1 if failures else 0


def _upload_job_images(http: Any, folder: Path, jobs: list[dict[str, Any]]) -> list[str]:
    """Images a job file names by path, relative to its folder, sent to the core's upload store
    first: the job keeps the name and gets the stored copy's hash (the core cannot read files
    on this machine). The problems, one line each."""
    from .jobs.images import IMAGE_FIELDS

    problems = []
    for i, job in enumerate(jobs):
        where = f"jobs[{i}]." if len(jobs) > 1 else ""
        for block, ref_field, hash_field in IMAGE_FIELDS:
            part = job.get(block)
            ref = part.get(ref_field) if isinstance(part, dict) else None
            if not isinstance(ref, str) or ref.startswith(("gallery:", "upload:")):
                continue
            field = f"{where}{block}.{ref_field}"
            try:
                data = (folder / ref).read_bytes()
            except OSError as exc:
                problems.append(f"{field}: cannot read {folder / ref} ({exc.strerror or exc})")
                continue
            response = http.post("/api/v1/uploads", content=data)
            if response.status_code != 201:
                message = response.json().get("error", {}).get("message", response.text)
                problems.append(f"{field}: refused ({response.status_code}): {message}")
                continue
            part[hash_field] = response.json()["sha256"]  # type: ignore[index]
    return problems


def cmd_tui(args: argparse.Namespace) -> int:
    from mobilesd_tui.api_client import CoreClient
    from mobilesd_tui.app import make_app
    from mobilesd_tui.prefs import default_path
    from mobilesd_tui.thumbs import pick_image_widget

    url, token = client_target(args.url, args.token)
    if not token:
        print(
            f"mobilesd tui: no access token for {url}: pass --token or set MOBILESD_TOKEN "
            "(on the core's machine it is read from CONFIG_DATA_PATH/access_token)",
            file=sys.stderr,
        )
        return 2
    _quiet_console_logging()
    image_widget = pick_image_widget()  # asks the terminal, so before the app starts
    app = make_app(
        CoreClient(url, token),
        prefs_path=default_path(),
        initial_tab=args.tab,
        image_widget=image_widget,
    )
    app.run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mobilesd", description="Job queue and remote control for Stable Diffusion Forge"
    )
    parser.add_argument("--version", action="version", version=f"mobilesd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the core service")
    _add_core_flags(p)
    p.add_argument("--no-qr", action="store_true", help="print the phone link without a QR code")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "link", help="print the phone's sign-in link and its QR code (it holds the token)"
    )
    p.add_argument("--host", help="the core's HOST (default 127.0.0.1; 0.0.0.0: this LAN address)")
    p.add_argument("--port", type=int, help=f"the core's PORT (default {DEFAULT_PORT})")
    p.add_argument("--data", type=Path, help="CONFIG_DATA_PATH, where the token is (./data)")
    p.add_argument("--no-qr", action="store_true", help="the link without a QR code")
    p.set_defaults(func=cmd_link)

    p = sub.add_parser("demo", help="core + two simulated Forge servers, no GPU needed")
    _add_core_flags(p)
    p.add_argument("--dir", type=Path, default=Path("demo"), help="demo folder (./demo)")
    p.add_argument("--step-ms", type=float, default=60.0, help="simulated time per step")
    p.add_argument(
        "--no-tui",
        action="store_true",
        help="print job changes instead of opening the terminal UI (also when not on a TTY)",
    )
    p.add_argument("--tab", choices=TUI_TABS, default="queue", help="the TUI's first tab")
    p.add_argument(
        "--once",
        action="store_true",
        help="headless: exit when the example jobs are done (exit 1 if any did not complete)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("forge-sim", help="run the Forge simulator alone")
    from .forge.simulator import add_simulator_arguments

    add_simulator_arguments(p)
    p.set_defaults(func=cmd_forge_sim)

    p = sub.add_parser("validate", help="check job files offline")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("submit", help="send job files to a running core")
    p.add_argument("files", nargs="+")
    p.add_argument("--url", help="core URL (MOBILESD_URL)")
    p.add_argument("--token", help="access token (MOBILESD_TOKEN)")
    p.add_argument("--server", help="target server alias for every job")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("tui", help="terminal UI (connects to a running core)")
    p.add_argument("--url", help="core URL (MOBILESD_URL; default this machine's core)")
    p.add_argument("--token", help="access token (MOBILESD_TOKEN; default this machine's)")
    p.add_argument("--tab", choices=TUI_TABS, default="generator", help="the tab to open on")
    p.set_defaults(func=cmd_tui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"mobilesd: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
