"""The core's HTTP API (aiohttp): JSON routes, gallery files, and later the phone page."""
