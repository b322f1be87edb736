"""MobileSD core service: job queue, Forge dispatcher, gallery and HTTP API."""

__version__ = "0.1.0"
