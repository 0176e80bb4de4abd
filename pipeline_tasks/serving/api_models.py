"""The shapes `recpipe serve` answers with, declared so its OpenAPI schema (and the fuzz that checks
every answer against it) tells the truth; the error shape is api_guard.ErrorResponse."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline_tasks.serving.api_guard import ID_PATTERN, MAX_ID_CHARS


def IdField(**kwargs):  # noqa: N802 - reads like pydantic's Field
    return Field(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN, **kwargs)


class ScoredItem(BaseModel):
    item_id: str
    score: float


class Recommendation(BaseModel):
    """GET /recommend answer (declared so the OpenAPI schema, and the fuzz checking it, tell the truth)."""

    user_id: str
    variant: Literal["champion", "challenger"]
    model_version: str
    items: list[ScoredItem]
    exposure_id: str
    cold_start: bool


class FeedbackLogged(BaseModel):
    model_config = ConfigDict(extra="allow")  # the logged record: whatever the event log stores
    status: Literal["logged"]
    ts: str
    user_id: str
    item_id: str
    event: Literal["click", "purchase"]
    exposure_id: str | None
    variant: Literal["champion", "challenger"]
    experiment_id: str


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str
    model: str
    versions: dict[str, str]
    ab: dict
    experiment: dict
