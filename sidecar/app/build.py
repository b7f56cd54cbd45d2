"""Every component of the public app, built once from the config, and their life:
the background tasks (revocation feed, last-used flushing, master watch) and the
clients (Redis, upstream pool) started and closed with the app."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis

from sidecar.api.console import ConsolePage, page_settings
from sidecar.api.forward_auth import ForwardAuth
from sidecar.api.keys import PREFIX as KEYS_PREFIX
from sidecar.api.keys import KeysApi
from sidecar.api.scanning_source import ScanningKeySource
from sidecar.api.secret_scanning import SecretScanning
from sidecar.auth.assertion import AssertionSigner
from sidecar.auth.credentials import Authenticator
from sidecar.auth.failed_auth import FailedAuthLimiter
from sidecar.auth.jwt_auth import JwtVerifier
from sidecar.auth.restrictions import Restrictions, Scopes
from sidecar.config.model import Config
from sidecar.core.errors import (
    StoreUnavailable,
)
from sidecar.core.paths import PrefixMatcher
from sidecar.keys.audit_events import configured_key
from sidecar.keys.audit_reader import AuditReader
from sidecar.keys.audit_trail import AuditTrail
from sidecar.keys.cache import KeyCache
from sidecar.keys.canary_events import CanaryEvents
from sidecar.keys.hashing import KeyHasher
from sidecar.keys.reads import SCOPED_READ_LIMIT
from sidecar.keys.revocations import RevocationListener
from sidecar.keys.store import KeyStore
from sidecar.keys.usage import UsageTracker
from sidecar.observability.accesslog import AccessLog
from sidecar.observability.metrics import Metrics
from sidecar.observability.record import RequestRecord
from sidecar.observability.spans import Tracer
from sidecar.proxy.decision import Decider
from sidecar.proxy.gateway import Gateway
from sidecar.proxy.headers import HeaderRules
from sidecar.proxy.upstream import UpstreamClient
from sidecar.proxy.websocket import WebSockets
from sidecar.ratelimit.limiter import limiter_for
from sidecar.redisconn.client import connect, durability
from sidecar.redisconn.master_watch import MasterWatch

_CONFIRM_EVERY = 1.0  # seconds between attempts to re-apply possibly lost revocations
_SCOPE_CHECK_RETRY = 5.0  # seconds between attempts of the scope check at start
log = logging.getLogger("sidecar")


class Components:
    """The sidecar's parts, wired together."""

    def __init__(self, config: Config, redis_url: str, metrics: Metrics | None = None) -> None:
        self.config = config
        keys = config.auth.api_keys
        self.redis: Redis = connect(redis_url, config.redis)
        self.durability = durability(redis_url, config.redis)
        self.watch = MasterWatch(self.redis)
        hasher = KeyHasher(keys.hash_secret.get_secret_value().encode())
        retry_after = config.redis.retry_after_seconds
        self.store = KeyStore(
            self.redis,
            hasher,
            keys.max_active_per_user,
            retry_after=retry_after,
            durability=self.durability,
            on_readonly=self.watch.demoted,
            audit=AuditTrail(configured_key(config), config.audit.retention_days, retry_after),
        )
        self.cache = KeyCache(
            ttl=keys.cache_ttl_seconds,
            max_entries=keys.cache_max_entries,
            negative_ttl=keys.negative_cache_ttl_seconds,
            stale_window=keys.stale_window_seconds,
        )
        self.usage = UsageTracker(self.store, keys.last_used_flush_seconds)
        rules = HeaderRules(config)
        failed = config.auth.failed_auth
        self.failed_auth = (
            FailedAuthLimiter(requests=failed.requests, per_seconds=failed.per_seconds)
            if failed.enabled
            else None
        )
        self.authenticator = Authenticator(
            store=self.store,
            hasher=hasher,
            cache=self.cache,
            jwt_verifier=JwtVerifier(config.auth.jwt),
            usage=self.usage,
            failed_auth=self.failed_auth,
            proxies=rules.proxies,
        )
        self.metrics = metrics or Metrics()
        self.tracer = tracer_for(config)
        self.websockets = WebSockets(
            limit=config.server.max_websockets,
            hasher=hasher,
            reverify=self.authenticator.reverify,
            jwt_leeway=config.auth.jwt.leeway_seconds,
            stale_window=keys.stale_window_seconds,
        )
        self.cache.on_evict.append(self.websockets.evicted)
        self.cache.on_desync.append(self.websockets.desynced)
        self.listener = RevocationListener(
            self.redis, self.cache, on_message=self.metrics.revocations.inc
        )
        self.upstream = UpstreamClient(config.upstream, config.server.max_body_bytes)
        test_settings = config.upstream.for_test_keys()
        self.test_upstream = (
            None
            if test_settings is None
            else UpstreamClient(test_settings, config.server.max_body_bytes)
        )
        self.scopes = Scopes(config.auth.scopes)
        self.keys_api = KeysApi(
            self.authenticator,
            self.store,
            on_revoked=self.cache.evict,
            max_lifetime_days=keys.max_lifetime_days,
            scopes=self.scopes.names,
            proxies=rules.proxies,
            events=AuditReader(self.redis, retry_after=retry_after),
        )
        self.limiter = limiter_for(
            config.rate_limits,
            self.redis,
            retry_after=config.redis.retry_after_seconds,
            on_store_error=self.metrics.rate_limit_store_errors.inc,
            on_readonly=self.watch.demoted,
            durability=self.durability,
        )
        self.watch.on_switch(self.limiter.reconnect)
        self.watch.on_switch(self.listener.reconnect)
        self.canaries = CanaryEvents(self.store)
        self.decider = Decider(
            rules=rules,
            public_paths=PrefixMatcher(config.auth.public_paths),
            authenticator=self.authenticator,
            limiter=self.limiter,
            report_only=report_only_matcher(config),
            assertion=(
                AssertionSigner(config.identity.assertion)
                if config.identity.assertion.enabled
                else None
            ),
            restrictions=Restrictions(self.scopes),
            canaries=self.canaries,
        )
        self.gateway = Gateway(
            decider=self.decider,
            rules=rules,
            authenticator=self.authenticator,
            limiter=self.limiter,
            upstream=self.upstream,
            test_upstream=self.test_upstream,
            websockets=self.websockets,
        )
        self._owned = PrefixMatcher((KEYS_PREFIX,))
        self._reject_ambiguous = config.server.reject_ambiguous_paths
        self.scanning: SecretScanning | None = None
        self._scanning_path: str | None = None
        if config.secret_scanning.enabled:
            self.scanning = SecretScanning(
                keys=ScanningKeySource(config.secret_scanning),
                store=self.store,
                hasher=hasher,
                on_revoked=self.cache.evict,
                max_concurrent=config.secret_scanning.max_concurrent_reports,
                body_timeout=config.secret_scanning.body_timeout_seconds,
                proxies=rules.proxies,
            )
            self._scanning_path = config.secret_scanning.path.rstrip("/").lower()
        self.console = console_page(config)
        self.access_log = AccessLog() if config.logging.access_log else None
        # The decision listener's app; served by server.py/workers.py when enabled.
        self.forward_auth = ForwardAuth(
            self.decider,
            config.forward_auth,
            owned=self._owned,
            refuse_ambiguous=config.server.reject_ambiguous_paths,
            done=self.finished,
            tracer=self.tracer,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._register_callback_metrics()

    def _register_callback_metrics(self) -> None:
        auth = self.authenticator
        self.metrics.count_from(
            "sidecar_key_cache",
            "API-key cache lookups",
            lambda: {"hit": auth.cache_hits, "miss": auth.cache_misses},
            "result",
        )
        self.metrics.count_from(
            "sidecar_redis_errors",
            "Redis operations that failed",
            lambda: {"key_store": self.store.errors, "revocations": self.listener.errors},
            "component",
        )
        self.metrics.count_from(
            "sidecar_redis_master_switches",
            "Times every Redis connection was dropped to follow a new master",
            lambda: dict(self.watch.switches),
            "source",
        )
        self.metrics.count_total(
            "sidecar_revocations_republished",
            "Revocations a failover may have lost, applied again on the new master",
            lambda: self.store.republished,
        )
        self.metrics.count_total(
            "sidecar_revocation_holds",
            "Key lookups Redis answered less restricted than a revocation or rotation this "
            "instance saw published (a failover lost the write): the published state held",
            lambda: self.cache.held_back,
        )
        self.metrics.count_total(
            "sidecar_canary_hits", "Requests that used a canary key", lambda: auth.canary_hits
        )
        self.metrics.count_total(
            "sidecar_leaked_keys",
            "Keys revoked because secret scanning reported them leaked",
            lambda: self.scanning.leaked if self.scanning is not None else 0,
        )
        tracer = self.tracer
        self.metrics.count_total(
            "sidecar_trace_spans_dropped",
            "Finished trace spans that never reached the collector (export failed, or the "
            "queue was full)",
            lambda: tracer.dropped() if tracer is not None else 0,
        )
        failed = self.failed_auth
        self.metrics.count_total(
            "sidecar_failed_auth_limited",
            "API-key requests refused by the failed-authentication limit",
            lambda: failed.limited if failed is not None else 0,
        )
        self.metrics.count_total(
            "sidecar_audit_resealed",
            "Audited writes sealed again because another instance moved the chain head",
            lambda: self.store.audit.conflicts,
        )
        self.metrics.count_total(
            "sidecar_audit_canary_events_dropped",
            "canary.used events not recorded because too many were waiting",
            lambda: self.canaries.dropped,
        )

    async def startup(self) -> None:
        await self.upstream.start()
        if self.test_upstream is not None:
            await self.test_upstream.start()
        self._tasks = [
            asyncio.create_task(self.listener.run(), name="revocations"),
            asyncio.create_task(self.usage.run(), name="last-used"),
            asyncio.create_task(self.canaries.run(), name="canary-events"),
            asyncio.create_task(self.watch.run(), name="master-watch"),
            asyncio.create_task(self._confirm_revocations(), name="revocation-confirm"),
            asyncio.create_task(self._check_scopes(), name="scope-check"),
        ]
        if self.access_log is not None:
            self._tasks.append(asyncio.create_task(self.access_log.run(), name="access-log"))

    async def _confirm_revocations(self) -> None:
        """Revocations a failover may have lost are run again until a master has them
        replicated (KeyStore.confirm_revocations)."""
        while True:
            await asyncio.sleep(_CONFIRM_EVERY)
            if self.store.unconfirmed:
                with contextlib.suppress(StoreUnavailable):
                    await self.store.confirm_revocations()

    async def _check_scopes(self) -> None:
        """Once at start: a WARNING for each scope that keys have and the config no
        longer names (it grants them nothing now). Retried while Redis is unreachable."""
        while True:
            try:
                counts, read = await self.store.scope_references()
                break
            except StoreUnavailable:
                await asyncio.sleep(_SCOPE_CHECK_RETRY)
        for scope in sorted(set(counts) - self.scopes.names):
            log.warning(
                "scope %s is not in auth.scopes any more: %d active key(s) have it, and it "
                "grants them nothing",
                scope,
                counts[scope],
            )
        if read >= SCOPED_READ_LIMIT:
            log.warning("scope check: only the first %d scoped keys were read", read)

    async def shutdown(self) -> None:
        self.websockets.close_all()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.upstream.close()
        if self.test_upstream is not None:
            await self.test_upstream.close()
        await self.limiter.close()
        if self.scanning is not None:
            await self.scanning.close()
        await self.redis.aclose()
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.shutdown)

    def finished(self, record: RequestRecord) -> None:
        """A request is done: end its span (a sampled request's), count it and log it."""
        if record.trace is not None:
            record.trace.end(record)
        self.metrics.observe(record)
        if self.access_log is not None:
            self.access_log.write(record)


def tracer_for(config: Config) -> Tracer | None:
    """The process's tracer when ``tracing.enabled``; OpenTelemetry is imported only then."""
    if not config.tracing.enabled:
        return None
    from sidecar.observability.tracing import OtelTracer

    return OtelTracer(config.tracing)


def console_page(config: Config) -> ConsolePage | None:
    """The API Keys page when ``console.enabled``; its settings are fixed at start-up."""
    console = config.console
    if not console.enabled:
        return None
    settings = page_settings(
        login_url=console.login_url,
        refresh_url=console.refresh_url,
        scopes=tuple(config.auth.scopes),
        max_lifetime_days=config.auth.api_keys.max_lifetime_days,
    )
    return ConsolePage(console.path, settings)


def report_only_matcher(config: Config) -> PrefixMatcher | None:
    """Where refusals are only reported: everywhere (``auth.mode: report``), under
    ``auth.report_only_paths``, or nowhere (None)."""
    if config.auth.mode == "report":
        return PrefixMatcher(("/",))
    return PrefixMatcher(config.auth.report_only_paths) if config.auth.report_only_paths else None
