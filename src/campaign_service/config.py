"""The one settings object, built from the environment at start-up; nothing else reads it.

The plan's variable names are kept (`CAMPAIGN_DB_HOST`, `KAFKA_BROKER`, `REDIS_HOST`,
`AUTH_HOST`); everything else has the `CAMPAIGN_` prefix. With no database configured the
service runs on an embedded PostgreSQL in `CAMPAIGN_DATA_DIR`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
AuthMode = Literal["jwks_file", "jwks_url", "public_key", "auth_service", "dev"]
_HOST_PORT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")


class ConfigError(Exception):
    """A setting is missing or wrong; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CAMPAIGN_", extra="ignore", frozen=True)

    # Listening
    bind_host: str = "0.0.0.0"  # noqa: S104 - a service in a container listens on all interfaces
    grpc_port: int = Field(50058, ge=0, le=65535)
    http_port: int = Field(8080, ge=0, le=65535)
    grpc_max_message_bytes: int = Field(256 * 1024, ge=4096, le=16 * 1024 * 1024)

    # PostgreSQL: a DSN, or host/port/name/user/password; none of them -> embedded server.
    db_host: str | None = Field(None, validation_alias=AliasChoices("CAMPAIGN_DB_HOST"))
    db_port: int = Field(5438, ge=1, le=65535)
    db_name: str = "campaign"
    db_user: str = "campaign_app"
    db_password: SecretStr | None = None
    db_dsn: SecretStr | None = None
    # The owner role that runs migrations and provisions merchants.
    db_owner_user: str = "campaign_owner"
    db_owner_password: SecretStr | None = None
    db_owner_dsn: SecretStr | None = None
    # The outbox relay's and the tier-count metric's own login (sees every merchant's outbox
    # rows); never the request path's. On CAMPAIGN_DB_HOST, or its own DSN.
    relay_db_user: str = "campaign_relay"
    relay_db_password: SecretStr | None = None
    relay_db_dsn: SecretStr | None = None
    db_pool_min: int = Field(2, ge=1, le=100)
    db_pool_max: int = Field(10, ge=1, le=200)
    db_statement_timeout_ms: int = Field(5000, ge=100, le=600_000)
    db_connect_timeout_s: float = Field(5.0, gt=0, le=120)
    migrate_on_start: bool = True
    data_dir: Path = Path(".campaign-data")

    # Redis: the shared cache and rate limit. Without REDIS_HOST the cache is in-process (see
    # `cache_backend`) and each instance limits on its own.
    redis_host: str | None = Field(None, validation_alias=AliasChoices("REDIS_HOST"))
    redis_port: int = Field(6380, ge=1, le=65535)
    redis_db: int = Field(0, ge=0, le=15)
    redis_password: SecretStr | None = None
    # REDIS_HOST:CAMPAIGN_REDIS_PORT is one node of a Redis Cluster; the others are found from it
    # (CLUSTER SLOTS). Keys carry a hash tag on the merchant (redis_keys.py).
    redis_cluster: bool = False
    # Bounds connecting and every command; a slower Redis counts as down.
    redis_timeout_ms: int = Field(200, ge=5, le=10_000)
    redis_max_connections: int = Field(32, ge=1, le=1024)
    # After a Redis failure, skip Redis this long (serve from PostgreSQL, limit locally).
    redis_retry_after_ms: int = Field(1000, ge=10, le=60_000)

    # Cache of GetVIPTier/ListVIPTiers answers: auto = redis with REDIS_HOST, memory on the
    # embedded database (one process), otherwise off (instances without a shared cache would
    # disagree after a write).
    cache: Literal["auto", "redis", "memory", "off"] = "auto"
    cache_ttl_s: int = Field(3600, ge=1, le=7 * 24 * 3600)
    # How long an instance trusts the Redis cache after confirming the cache epoch with
    # PostgreSQL (refreshed every third of it in the background). A write that cannot reach Redis
    # waits this long before it is acknowledged (see adapters/redis/cache.py).
    cache_epoch_lease_ms: int = Field(1000, ge=100, le=30_000)
    cache_memory_max_bytes: int = Field(32 * 1024 * 1024, ge=64 * 1024, le=4 * 1024**3)

    # Requests per merchant per window over all CampaignService RPCs; 0 turns the limit off.
    rate_limit_requests: int = Field(100, ge=0, le=1_000_000_000)
    rate_limit_window_ms: int = Field(1000, ge=10, le=60_000)

    # Other dependencies (later features); the plan's names.
    kafka_broker: str | None = Field(None, validation_alias=AliasChoices("KAFKA_BROKER"))
    auth_host: str | None = Field(None, validation_alias=AliasChoices("AUTH_HOST"))

    # Authentication (SPEC Security). Local verification when a key source is configured (one of
    # JWKS file, JWKS URL, PEM public key file), else the Auth Service at AUTH_HOST. With
    # neither, only the embedded default serves: it verifies against a key pair it keeps in
    # `data_dir` (see `campaign-service dev-token`).
    jwt_jwks_file: Path | None = None
    jwt_jwks_url: str | None = Field(None, pattern=r"^https?://\S+$")
    jwt_public_key_file: Path | None = None
    # Comma-separated allow-list; asymmetric algorithms only (a public key cannot check an HMAC).
    jwt_algorithms: str = "RS256,PS256,ES256,EdDSA"
    jwt_issuer: str | None = None
    jwt_audience: str = Field("campaign-service", min_length=1)
    jwt_leeway_s: int = Field(30, ge=0, le=300)
    jwt_merchant_claim: str = Field("merchant_id", min_length=1)
    jwks_refresh_s: int = Field(300, ge=10, le=86_400)
    auth_timeout_s: float = Field(1.0, gt=0, le=30)
    # Verified tokens (either mode) are remembered until they expire, at most this long and
    # this many: a token revoked at the Auth Service stops working within max_ttl.
    auth_cache_size: int = Field(10_000, ge=0, le=1_000_000)
    auth_cache_max_ttl_s: int = Field(300, ge=0, le=86_400)

    # TLS for the gRPC port: cert + key -> TLS; plus a client CA -> clients must present a
    # certificate it signed (mTLS). The files are re-read when they change.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    # Events. Without KAFKA_BROKER events stay in the outbox (`campaign-service outbox list`).
    # The event bus: kafka (KAFKA_BROKER) or rabbitmq (RABBITMQ_URL, amqp://user:password@host:port/vhost,
    # with the rabbitmq_consistent_hash_exchange plugin enabled); the same Avro, registry and names.
    event_bus: Literal["kafka", "rabbitmq"] = "kafka"
    rabbitmq_url: SecretStr | None = Field(None, validation_alias=AliasChoices("RABBITMQ_URL"))
    # Queues per topic on RabbitMQ (its partitions: keys are hashed onto them), the same everywhere.
    rabbitmq_queues_per_topic: int = Field(4, ge=1, le=256)
    schema_registry_url: str | None = None
    kafka_client_id: str = "campaign-service"
    kafka_consumer_group: str = "campaign-service"
    # the broker's group.min.session.timeout.ms (6 s by default) is the floor
    kafka_session_timeout_ms: int = Field(10_000, ge=6000, le=300_000)
    kafka_delivery_timeout_ms: int = Field(10_000, ge=1000, le=300_000)
    # The relay hands a claim's rows to the producer at once, so a batch forms without waiting;
    # 5 ms added ~4 ms to every event's p50 (bench.points_latency: p99 0.61-0.82x with 1 ms).
    kafka_linger_ms: int = Field(1, ge=0, le=1000)
    # At most this many ready messages per batch (the consumer never waits for a full one).
    consumer_batch_size: int = Field(200, ge=1, le=10_000)
    # Merchant transactions of a batch at once; each holds a database connection while it runs.
    consumer_concurrency: int = Field(8, ge=1, le=100)
    # points.recorded messages per batch; a batch is one transaction over all its merchants.
    # bench.points on a quiet host: 1000 drained 4,390/s with the service at 54 % of a core (waiting
    # on the batch's round trips), 3000 drained 5,163/s at 65 %; CPU per event the same.
    points_batch_size: int = Field(3000, ge=1, le=10_000)
    # Transactions a points batch is split into (by customer) and run at once, each on a database
    # connection of its own: one's Python work overlaps another's database work.
    points_concurrency: int = Field(2, ge=1, le=16)
    # Deadline scheduler (tier downgrades): seconds between passes when nothing was due, and
    # customers per chunk transaction. 0 = off.
    scheduler_interval_s: float = Field(60.0, ge=0, le=86_400)
    scheduler_chunk_size: int = Field(20_000, ge=1, le=100_000)
    scheduler_concurrency: int = Field(2, ge=1, le=16)  # chunks in flight at once, one pool connection each
    # Outbox relay: rows per claim, claims in flight per relay, and the outbox's 16 shards by key
    # (migration 0050) one claim may hold while there is a backlog (without one it takes every free
    # shard); claims of other shards run in parallel (README "How a deployment grows").
    outbox_batch_size: int = Field(1000, ge=1, le=10_000)
    outbox_concurrency: int = Field(2, ge=1, le=16)
    outbox_shards_per_claim: int = Field(4, ge=1, le=16)
    # Tier change (re-assessment) jobs, issue 14: seconds between looks for a runnable job when
    # there was none (0 = this instance runs no jobs), and customers per chunk transaction.
    tier_change_jobs_interval_s: float = Field(1.0, ge=0, le=3600)
    tier_change_jobs_chunk_size: int = Field(20_000, ge=1, le=200_000)
    # Scheduled tier/programme changes: the activator looks for changes scheduled through other
    # replicas at least this often (it sleeps until the next one is due otherwise). 0 = off.
    activator_poll_s: float = Field(5.0, ge=0, le=3600)
    outbox_poll_interval_s: float = Field(5.0, gt=0, le=300)
    outbox_retention_hours: float = Field(72.0, ge=0, le=24 * 365)
    outbox_purge_interval_s: float = Field(600.0, gt=0, le=86_400)
    # The dedupe record of consumed events: must outlive the consumed topics' retention (Kafka's
    # default is 7 days), or a redelivered event older than it would be applied again.
    processed_retention_hours: float = Field(30 * 24.0, ge=1, le=24 * 3650)
    relay_backoff_max_s: float = Field(10.0, ge=0.1, le=300)

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Tracing (OpenTelemetry, telemetry.py): spans are made and exported over OTLP/gRPC only when
    # one of the standard endpoint variables is set. The exception to "nothing else reads the
    # environment": the SDK reads the other standard OTEL_* variables itself (OTEL_SERVICE_NAME,
    # OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER[_ARG], OTEL_EXPORTER_OTLP_[TRACES_]HEADERS,
    # _CERTIFICATE, _TIMEOUT, _COMPRESSION, OTEL_BSP_*), so their meaning is the standard one.
    otel_exporter_otlp_endpoint: str | None = Field(
        None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT"), pattern=r"^https?://\S+$"
    )
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), pattern=r"^https?://\S+$"
    )
    # Only the gRPC exporter is installed; asking for another protocol is refused, not ignored.
    otel_exporter_otlp_protocol: Literal["grpc"] = Field(
        "grpc", validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_PROTOCOL")
    )
    otel_exporter_otlp_traces_protocol: Literal["grpc"] = Field(
        "grpc", validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
    )
    otel_sdk_disabled: bool = Field(False, validation_alias=AliasChoices("OTEL_SDK_DISABLED"))

    @property
    def otel_endpoint(self) -> str | None:
        """Where spans go (the traces-specific variable wins, as the standard says); None: no tracing."""
        if self.otel_sdk_disabled:
            return None
        return self.otel_exporter_otlp_traces_endpoint or self.otel_exporter_otlp_endpoint

    @property
    def tracing(self) -> bool:
        return self.otel_endpoint is not None

    # vip_tiers_total: how many merchants get their own series (the rest are summed as "other")
    # and how often the counts are refreshed.
    tier_counts_top_n: int = Field(50, ge=0, le=1000)
    tier_counts_interval_s: float = Field(60.0, ge=0.1, le=3600)

    # Graceful shutdown on SIGTERM: keep serving (but report NOT_SERVING / not ready) for
    # `shutdown_delay_s` so load balancers stop sending traffic, then refuse new RPCs and give
    # in-flight ones up to `shutdown_grace_s`; the whole stop is bounded by delay + grace + 10 s.
    shutdown_delay_s: float = Field(0.0, ge=0, le=60)
    shutdown_grace_s: float = Field(10.0, ge=0, le=300)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.db_pool_min > self.db_pool_max:
            raise ValueError("CAMPAIGN_DB_POOL_MIN must not exceed CAMPAIGN_DB_POOL_MAX")
        return self

    @model_validator(mode="after")
    def _relay_role_of_its_own(self) -> Settings:
        if self.relay_db_user == self.db_user:
            raise ValueError("CAMPAIGN_RELAY_DB_USER: the relay needs a role of its own, not CAMPAIGN_DB_USER's")
        return self

    @model_validator(mode="after")
    def _cache_needs_redis(self) -> Settings:
        if self.cache == "redis" and self.redis_host is None:
            raise ValueError("CAMPAIGN_CACHE=redis needs REDIS_HOST")
        if self.redis_cluster and self.redis_db != 0:
            raise ValueError("CAMPAIGN_REDIS_DB: a Redis Cluster has only database 0")
        return self

    @property
    def cache_backend(self) -> Literal["redis", "memory", "off"]:
        if self.cache != "auto":
            return self.cache
        if self.redis_host is not None:
            return "redis"
        return "memory" if self.embedded_db else "off"

    @field_validator("jwt_algorithms")
    @classmethod
    def _asymmetric_algorithms(cls, value: str) -> str:
        names = [a.strip() for a in value.split(",") if a.strip()]
        bad = [a for a in names if a not in ASYMMETRIC_ALGORITHMS]
        if not names or bad:
            raise ValueError(f"use a comma-separated subset of {', '.join(ASYMMETRIC_ALGORITHMS)}")
        return ",".join(names)

    @field_validator("auth_host")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None and not _HOST_PORT.match(value):
            raise ValueError("must be host:port")
        return value

    @model_validator(mode="after")
    def _one_key_source_and_tls_pairs(self) -> Settings:
        sources = [
            name
            for name, value in (
                ("CAMPAIGN_JWT_JWKS_FILE", self.jwt_jwks_file),
                ("CAMPAIGN_JWT_JWKS_URL", self.jwt_jwks_url),
                ("CAMPAIGN_JWT_PUBLIC_KEY_FILE", self.jwt_public_key_file),
            )
            if value is not None
        ]
        if len(sources) > 1:
            raise ValueError(f"{sources[1]}: set only one of {', '.join(sources)}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("CAMPAIGN_TLS_KEY_FILE: set both CAMPAIGN_TLS_CERT_FILE and CAMPAIGN_TLS_KEY_FILE")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("CAMPAIGN_TLS_CLIENT_CA_FILE: mTLS also needs CAMPAIGN_TLS_CERT_FILE and _KEY_FILE")
        return self

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(self.jwt_algorithms.split(","))

    def auth_mode(self) -> AuthMode:
        """How tokens are verified; a production configuration without a verifier is refused."""
        if self.jwt_jwks_file is not None:
            return "jwks_file"
        if self.jwt_jwks_url is not None:
            return "jwks_url"
        if self.jwt_public_key_file is not None:
            return "public_key"
        if self.auth_host is not None:
            return "auth_service"
        if self.embedded_db:
            return "dev"
        raise ConfigError(
            "AUTH_HOST: a configured database means production, which needs a token verifier: set AUTH_HOST,"
            " CAMPAIGN_JWT_JWKS_FILE, CAMPAIGN_JWT_JWKS_URL or CAMPAIGN_JWT_PUBLIC_KEY_FILE"
        )

    @property
    def embedded_db(self) -> bool:
        return self.db_host is None and self.db_dsn is None

    def kafka(self) -> tuple[str, str]:
        """(broker, schema registry URL) for the commands that use Kafka."""
        if not self.kafka_broker:
            raise ConfigError("KAFKA_BROKER is required for this command")
        if not self.schema_registry_url:
            raise ConfigError("CAMPAIGN_SCHEMA_REGISTRY_URL is required when KAFKA_BROKER is set (events are Avro)")
        return self.kafka_broker, self.schema_registry_url

    @property
    def events_on(self) -> bool:
        """Events leave the outbox: the chosen bus has its address."""
        return bool(self.rabbitmq_url if self.event_bus == "rabbitmq" else self.kafka_broker)

    def event_bus_address(self) -> tuple[str, str]:
        """(the chosen bus's address: Kafka bootstrap servers or the RabbitMQ URL, schema registry URL)."""
        if self.event_bus == "kafka":
            return self.kafka()
        if self.rabbitmq_url is None:
            raise ConfigError("RABBITMQ_URL is required when CAMPAIGN_EVENT_BUS=rabbitmq")
        if not self.schema_registry_url:
            raise ConfigError("CAMPAIGN_SCHEMA_REGISTRY_URL is required for the event bus (events are Avro)")
        return self.rabbitmq_url.get_secret_value(), self.schema_registry_url

    def app_dsn(self) -> str:
        if self.db_dsn is not None:
            return self.db_dsn.get_secret_value()
        return self._dsn(self.db_user, self.db_password)

    def owner_dsn(self) -> str:
        if self.db_owner_dsn is not None:
            return self.db_owner_dsn.get_secret_value()
        return self._dsn(self.db_owner_user, self.db_owner_password)

    def relay_dsn(self) -> str:
        """The outbox relay's and tier counts' connection (its own role, see provision.py)."""
        if self.relay_db_dsn is not None:
            return self.relay_db_dsn.get_secret_value()
        if self.db_host is None:
            raise ConfigError(
                "CAMPAIGN_RELAY_DB_DSN: the outbox relay and the tier-count metric log in as their own role;"
                " set CAMPAIGN_RELAY_DB_DSN, or CAMPAIGN_DB_HOST with CAMPAIGN_RELAY_DB_USER/CAMPAIGN_RELAY_DB_PASSWORD"
            )
        return self._dsn(self.relay_db_user, self.relay_db_password)

    def _dsn(self, user: str, password: SecretStr | None) -> str:
        if self.db_host is None:
            raise ConfigError("CAMPAIGN_DB_HOST or CAMPAIGN_DB_DSN is required for this command")
        secret = f":{quote(password.get_secret_value(), safe='')}" if password else ""
        return (
            f"postgresql://{quote(user, safe='')}{secret}@{self.db_host}:{self.db_port}/{quote(self.db_name, safe='')}"
        )


_ENV_NAMES = {
    "db_host": "CAMPAIGN_DB_HOST",
    "kafka_broker": "KAFKA_BROKER",
    "redis_host": "REDIS_HOST",
    "auth_host": "AUTH_HOST",
    "rabbitmq_url": "RABBITMQ_URL",
}


def load_settings() -> Settings:
    """Builds the settings or raises ConfigError with one line naming the bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = str(err["loc"][0]) if err["loc"] else ""
        message = err["msg"].removeprefix("Value error, ")
        if not loc:  # a check across fields: its message starts with the variable's name
            raise ConfigError(message) from None
        # Fields read through a validation alias report the alias (the variable's own name).
        name = loc if loc.isupper() else _ENV_NAMES.get(loc, f"CAMPAIGN_{loc.upper()}")
        raise ConfigError(f"{name}: {message}") from None
