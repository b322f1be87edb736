"""Request bodies of the Civitai routes (the OpenAPI document is generated from these)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .urls import MAX_ID


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ImageInfoRequest(_Strict):
    """Body of POST /api/v1/civitai/image-info: exactly one of `url` and `image_id`."""

    url: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        description="A Civitai image link, https://civitai.com/images/<id>, or a bare id.",
    )
    image_id: int | None = Field(default=None, ge=1, lt=MAX_ID, description="The image's id.")

    @model_validator(mode="after")
    def _one_of(self) -> ImageInfoRequest:
        if (self.url is None) == (self.image_id is None):
            raise ValueError("give either url or image_id")
        return self


class DownloadRequest(_Strict):
    """Body of POST /api/v1/civitai/download-model: `url` or `model_version_id`."""

    url: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        description=(
            "A model link (https://civitai.com/models/<id>[?modelVersionId=<v>]), a "
            "model-versions or api/download/models link, or a bare model version id."
        ),
    )
    model_version_id: int | None = Field(default=None, ge=1, lt=MAX_ID)
    file_id: int | None = Field(
        default=None,
        ge=1,
        lt=MAX_ID,
        description="The file of the version (files[].id); default: its primary file.",
    )

    @model_validator(mode="after")
    def _one_of(self) -> DownloadRequest:
        if (self.url is None) == (self.model_version_id is None):
            raise ValueError("give either url or model_version_id")
        return self
