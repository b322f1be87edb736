"""Typed application state (aiohttp AppKeys), all in one place."""

from __future__ import annotations

from aiohttp import web

from ..config import Settings
from ..core import Core

CORE = web.AppKey("core", Core)
SETTINGS = web.AppKey("settings", Settings)
TOKEN = web.AppKey("token", str)
