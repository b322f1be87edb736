"""Civitai links and ids as people paste them, turned into the numbers the REST API takes.

Accepted forms (docs/civitai.md): `https://civitai.com/images/<id>`,
`https://civitai.com/models/<id>[/<slug>][?modelVersionId=<v>]`, `.../model-versions/<v>`,
`.../api/download/models/<v>[?fileId=<f>]` and bare numeric ids. The scheme may be missing (a
link copied from a share sheet often lacks it); the host must be Civitai's or the configured
`CIVITAI_BASE_URL`'s, so a typo never sends the key's requests somewhere unexpected.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

CIVITAI_HOSTS = ("civitai.com", "civitai.green")
MAX_ID = 2**53  # JavaScript's safe integers: what the page can send back unchanged


class BadReference(ValueError):
    """The text is not a Civitai link or id of the expected kind; the message says what is."""


@dataclass(frozen=True)
class ModelRef:
    """What a model link names: a model (its newest version is meant) or one version."""

    model_id: int | None = None
    model_version_id: int | None = None
    file_id: int | None = None


def _number(text: str, what: str) -> int:
    if not text.isdigit() or not 0 < int(text) < MAX_ID:
        raise BadReference(f"'{text}' is not a valid {what}")
    return int(text)


def _path_and_query(
    text: str, base_url: str | None, what: str
) -> tuple[list[str], dict[str, list[str]]]:
    raw = text.strip()
    if not raw:
        raise BadReference(f"is empty; paste a Civitai {what} link")
    if "://" not in raw:
        raw = "https://" + raw
    parts = urlsplit(raw)
    host = (parts.hostname or "").lower()
    allowed = set(CIVITAI_HOSTS)
    if base_url:
        allowed.add((urlsplit(base_url).hostname or "").lower())
    if not any(host == h or host.endswith("." + h) for h in allowed if h):
        raise BadReference(f"'{host or text}' is not Civitai; paste a civitai.com {what} link")
    segments = [s for s in parts.path.split("/") if s]
    return segments, parse_qs(parts.query)


def parse_image_ref(text: str, *, base_url: str | None = None) -> int:
    """The image id of `https://civitai.com/images/<id>` (or of a bare id)."""
    stripped = text.strip()
    if stripped.isdigit():
        return _number(stripped, "image id")
    segments, _ = _path_and_query(stripped, base_url, "image")
    if len(segments) >= 2 and segments[0] == "images":
        return _number(segments[1], "image id")
    raise BadReference("is not a Civitai image link; expected https://civitai.com/images/<id>")


def parse_model_ref(text: str, *, base_url: str | None = None) -> ModelRef:
    """The model, version and file a model link names. A bare number is a model version id
    (what the download endpoint takes)."""
    stripped = text.strip()
    if stripped.isdigit():
        return ModelRef(model_version_id=_number(stripped, "model version id"))
    segments, query = _path_and_query(stripped, base_url, "model")

    def first(name: str) -> int | None:
        values = query.get(name)
        return _number(values[0], name) if values else None

    if len(segments) >= 2 and segments[0] == "models":
        return ModelRef(
            model_id=_number(segments[1], "model id"),
            model_version_id=first("modelVersionId"),
        )
    if len(segments) >= 2 and segments[0] == "model-versions":
        return ModelRef(model_version_id=_number(segments[1], "model version id"))
    if segments[:3] == ["api", "download", "models"] and len(segments) >= 4:
        return ModelRef(
            model_version_id=_number(segments[3], "model version id"), file_id=first("fileId")
        )
    if segments[:3] == ["api", "v1", "model-versions"] and len(segments) >= 4:
        return ModelRef(model_version_id=_number(segments[3], "model version id"))
    raise BadReference(
        "is not a Civitai model link; expected https://civitai.com/models/<id> "
        "(optionally ?modelVersionId=<v>) or a model-versions / api/download link"
    )
