"""Civitai: image generation data into job parameters, and model downloads into the library.

urls (links -> ids), client (Civitai's REST API), importer + local (meta -> params, local
matching), hashes (local file hashes, cached), filenames (safe names), downloads (the download
manager), fake (a local Civitai for tests and benchmarks).
"""
