"""What the key endpoints (keys_api.py) and the operator CLI accept: request models
with the key lifecycle's rules (SPEC Part 2), in one place. Pure: no I/O."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import (
    AfterValidator,
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
    MAX_ALLOWED_IPS,
    MAX_DESCRIPTION,
    MAX_GRACE_SECONDS,
    MAX_USAGE_DAYS,
    MIN_EXPIRY_LEAD_SECONDS,
    Environment,
    network_of,
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


def _configured_scope(value: str, info: ValidationInfo) -> str:
    """A scope name the config has (validation context ``scopes``: the names)."""
    configured: frozenset[str] = (info.context or {}).get("scopes", frozenset())
    if value not in configured:
        if not configured:
            raise PydanticCustomError("scope_unknown", "No scopes are configured")
        raise PydanticCustomError(
            "scope_unknown",
            "Input should be a configured scope: {expected}",
            {"expected": ", ".join(sorted(configured))},
        )
    return value


def _no_duplicates(values: list[str] | None) -> tuple[str, ...] | None:
    if values is None:
        return None
    if len(set(values)) != len(values):
        raise PydanticCustomError("unique_items", "List should not hold the same scope twice")
    return tuple(values)


def _network(value: str) -> str:
    try:
        return str(network_of(value))
    except ValueError:
        raise PydanticCustomError(
            "ip_network", "Input should be an IPv4 or IPv6 address or network in CIDR notation"
        ) from None


def _distinct(values: list[str] | None) -> tuple[str, ...] | None:
    """Normalised addresses, each once, in the order given."""
    return None if values is None else tuple(dict.fromkeys(values))


# A key's scopes: 1 or more configured names, each once; None = unrestricted.
Scopes = Annotated[
    list[Annotated[str, AfterValidator(_configured_scope)]] | None,
    Field(min_length=1),
    AfterValidator(_no_duplicates),
]
# A key's allowed addresses: 1 to 100, normalised CIDRs; None = any address.
AllowedIps = Annotated[
    list[Annotated[str, AfterValidator(_network)]] | None,
    Field(min_length=1, max_length=MAX_ALLOWED_IPS),
    AfterValidator(_distinct),
]
Description = Annotated[str | None, Field(max_length=MAX_DESCRIPTION)]


class CreateKeyBody(BaseModel):
    """The create request. Validate with ``context={"lifetime": Lifetime(...),
    "scopes": <the configured scope names>}``."""

    model_config = ConfigDict(extra="ignore")
    description: Description = None
    expires_at: Annotated[datetime | None, BeforeValidator(_iso_datetime)] = None
    environment: Environment = "live"
    scopes: Scopes = None
    allowed_ips: AllowedIps = None

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


class UpdateKeyBody(BaseModel):
    """A PATCH: any of these; a field absent stays as it is, null clears it. Validate
    with ``context={"scopes": <the configured scope names>}``."""

    model_config = ConfigDict(extra="ignore")
    description: Description = None
    scopes: Scopes = None
    allowed_ips: AllowedIps = None


UPDATE_NOTHING = {
    "type": "missing",
    "loc": ["body"],
    "msg": "Body should hold at least one of description, scopes, allowed_ips",
}


class RotateKeyBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    grace_period_seconds: int = Field(
        default=DEFAULT_GRACE_SECONDS, ge=0, le=MAX_GRACE_SECONDS, strict=True
    )


def usage_window(days: int, now: float | None = None) -> list[str]:
    """The last ``days`` UTC days, oldest first, today included."""
    today = time.time() if now is None else now
    return [utc_day(today - back * 86400) for back in range(days - 1, -1, -1)]
