"""What the key endpoints (keys_api.py) and the operator CLI accept: request models
with the key lifecycle's rules (SPEC Part 2), in one place. Pure: no I/O."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from sidecar.core.domain import (
    DEFAULT_GRACE_SECONDS,
    MAX_DESCRIPTION,
    MAX_GRACE_SECONDS,
    MAX_USAGE_DAYS,
    MIN_EXPIRY_LEAD_SECONDS,
    Environment,
)
from sidecar.core.timeutil import utc_day

USAGE_DAYS = TypeAdapter(Annotated[int, Field(ge=1, le=MAX_USAGE_DAYS)])


def _iso_datetime(value: object) -> object:
    """Only an ISO 8601 string with a time zone: pydantic alone would also take a
    number (a Unix time) or a string of digits."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise PydanticCustomError(
            "datetime_type", "Input should be an ISO 8601 date-time string with a time zone"
        )
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise PydanticCustomError(
            "datetime_parsing", "Input should be an ISO 8601 date-time with a time zone"
        ) from None
    if moment.tzinfo is None:
        raise PydanticCustomError("timezone_aware", "Input should have timezone info")
    return moment


class Lifetime:
    """What ``expires_at`` is checked against: the moment of the request and the
    longest lifetime configured (auth.api_keys.max_lifetime_days)."""

    def __init__(self, max_days: int, now: datetime | None = None) -> None:
        self.max_days = max_days
        self.now = now or datetime.now(UTC)


class CreateKeyBody(BaseModel):
    """The create request. Validate with ``context={"lifetime": Lifetime(...)}``."""

    model_config = ConfigDict(extra="ignore")
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION)
    expires_at: Annotated[datetime | None, BeforeValidator(_iso_datetime)] = None
    environment: Environment = "live"

    @field_validator("expires_at")
    @classmethod
    def _within_lifetime(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if value is None:
            return None
        lifetime: Lifetime = (info.context or {})["lifetime"]
        ahead = value - lifetime.now
        if ahead < timedelta(seconds=MIN_EXPIRY_LEAD_SECONDS):
            raise ValueError(f"must be at least {MIN_EXPIRY_LEAD_SECONDS} seconds in the future")
        if ahead > timedelta(days=lifetime.max_days):
            raise ValueError(f"must be at most {lifetime.max_days} days in the future")
        return value.astimezone(UTC)


class RotateKeyBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    grace_period_seconds: int = Field(
        default=DEFAULT_GRACE_SECONDS, ge=0, le=MAX_GRACE_SECONDS, strict=True
    )


def usage_window(days: int, now: float | None = None) -> list[str]:
    """The last ``days`` UTC days, oldest first, today included."""
    today = time.time() if now is None else now
    return [utc_day(today - back * 86400) for back in range(days - 1, -1, -1)]
