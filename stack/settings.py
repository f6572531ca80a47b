"""The platform's one configuration object.

Every setting is an environment variable with the prefix ``JOURNEYS_`` (for
example ``JOURNEYS_KAFKA_BOOTSTRAP_SERVERS``). ``Settings()`` is built once at
start-up by the CLI and handed down; nothing else reads the environment. Child
processes receive the same settings through :meth:`Settings.to_env`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from api.cors import origin_problem

ENV_PREFIX = "JOURNEYS_"


class Settings(BaseSettings):
    """Configuration of every process of the platform (gateway, worker, CLI)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    # Where the embedded stack keeps its files: chdb folder, SQLite event store, keys.
    data_dir: Path = Path("data")

    # Kafka. Empty means "the embedded broker": `journeys up` starts Tansu and fills it in.
    kafka_bootstrap_servers: str = ""
    # Set by `journeys up` for its memory-only broker: offsets restart with each
    # broker, so consumed positions are tracked per broker epoch.
    kafka_epoch: str = ""
    # `journeys up` restarts a dead child (broker, node) with backoff; more than this
    # many deaths of one child within the window is a crash loop and stops the stack.
    supervisor_max_restarts: int = Field(default=5, ge=0)
    supervisor_window_s: float = Field(default=60.0, gt=0)
    # The embedded broker (Tansu, memory://) keeps every record it was sent, whatever
    # the topics' retention (bench/broker_memory.py). Past this resident size `journeys up`
    # rolls it: a new broker (a new epoch) starts, the node drains and stops, then starts
    # on the new broker. 0: never. About 0.85M storefront events per GiB (with their outcomes).
    broker_max_rss_mib: int = Field(default=2048, ge=0)
    # How long a roll lets the node drain (calls wait meanwhile); past it the node is
    # killed and replays its journal into the new broker (the crash path), which is
    # far faster than the worker (61k records/s against ~3k events/s): a long drain
    # lengthens the pause to shrink a backlog the replay carries over in seconds.
    broker_roll_drain_s: float = Field(default=5.0, ge=0)
    # The ingest journal (streams/journal.py): the node keeps every accepted event on
    # disk (fsynced before the 200) until the journey worker processed it, and produces
    # it again into a new broker. Only where the broker forgets its log, i.e. where an
    # epoch is set (`journeys up`'s embedded broker); a replicated Kafka keeps its own.
    journal_enabled: bool = True
    # Empty: ``data_dir/journal``.
    journal_dir: Path | None = None
    journal_segment_mib: int = Field(default=64, ge=1)
    # A segment is closed after this long too, so a quiet stack's journal empties.
    journal_segment_s: float = Field(default=60.0, gt=0)
    # Past this, ingest answers 503 (Retry-After): the worker is that far behind.
    journal_max_mib: int = Field(default=4096, ge=1)
    journal_trim_s: float = Field(default=1.0, gt=0)
    topic_prefix: str = "journey"
    topic_partitions: int = Field(default=4, ge=1, le=1024)
    topic_replication_factor: int = Field(default=1, ge=1)
    # A write with acks=all succeeds only while this many replicas have it: with 3
    # replicas and 2, one broker can be lost without losing or refusing an event.
    topic_min_insync_replicas: int = Field(default=1, ge=1)
    # Retention per topic role (stack/topics.py: topic_configs). The ingest topic must keep
    # a record until the worker processed it: past the journey's 24 h dedup window a
    # worker down over a long weekend still finds its backlog. Sizes are per partition.
    topic_events_retention_h: float = Field(default=168.0, gt=0)
    topic_events_retention_mib: int = Field(default=10_240, ge=1)
    # Stage changes and fired triggers are read by the platform's own consumers within
    # seconds; a week lets a downstream consumer catch up.
    topic_outcomes_retention_h: float = Field(default=168.0, gt=0)
    topic_outcomes_retention_mib: int = Field(default=2048, ge=1)
    # Dead letters are for people to look at: kept for days, and small.
    topic_dead_letters_retention_h: float = Field(default=336.0, gt=0)
    topic_dead_letters_retention_mib: int = Field(default=1024, ge=1)
    # Idempotent producers (librdkafka and aiokafka): a retried produce is not written
    # twice and cannot reorder a partition (up to 5 requests in flight). Off by
    # default: the embedded shape measured and tested with it off (one request in flight).
    kafka_idempotence: bool = False
    worker_group: str = "journeys-worker"
    # Short enough that a restarted worker rejoins quickly, long enough for GC pauses.
    kafka_session_timeout_s: float = Field(default=10.0, gt=0)
    kafka_heartbeat_interval_s: float = Field(default=1.0, gt=0)
    # How long the worker's consumers let a fetch wait for new records. The embedded
    # broker (Tansu) does not always answer a waiting fetch when records arrive: with
    # aiokafka's default (500 ms) single records waited up to ~200 ms, with 20 ms up
    # to ~23 ms (measured). Costs an idle consumer one fetch per interval.
    kafka_fetch_max_wait_ms: int = Field(default=50, ge=0, le=10_000)

    # ClickHouse: empty means the embedded engine (chdb) in ``data_dir/clickhouse``;
    # otherwise ``http(s)://user:password@host:8123``, or ``chdb:///abs/path``.
    clickhouse_url: str = ""
    clickhouse_database: str = "journeys"

    # Event store: SQLite file in ``data_dir`` by default, PostgreSQL for scale-out.
    event_store: Literal["sqlite", "postgres"] = "sqlite"
    postgres_dsn: str = ""

    # Journeys kept in memory by the worker (0: none). A cached journey is still
    # fast-forwarded from the event store on every read, so it is never stale.
    # The journey pipeline also keeps this many journeys it committed (see LiveJourneys).
    journey_cache_size: int = Field(default=10_000, ge=0)
    # The node's API serves a customer's stage from its worker's decision while the
    # ClickHouse insert is under way: at most this many customers held (0: off).
    stages_in_flight: int = Field(default=100_000, ge=0)

    # Stage rules (TOML). Empty: the documented defaults in journeys/stage_rules.toml.
    stage_rules_file: Path | None = None
    # Computed traits and segments (TOML); unset: journeys/segments.toml.
    segments_file: Path | None = None
    # How often the worker looks for segment states that time alone changes
    # (a rolling window sliding past an event, a "days since" crossing a day).
    segment_tick_s: float = Field(default=0.25, gt=0)
    # Journey flows (TOML); unset: journeys/flows.toml.
    flows_file: Path | None = None

    # HTTP gateway.
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    # Set by `journeys up`: the API's listening socket, opened by the supervisor and
    # inherited by the node, so connections wait in its backlog while the node
    # restarts (a crash, a broker roll) rather than being refused.
    api_socket_fd: int | None = None
    # Ingest gateways `journeys up` runs on the API's socket (`journeys gateway`:
    # parse, validate, journal, produce), the kernel spreading connections among
    # them; every other path they forward to the node. Unset: one per core. 0: none,
    # the node serves the socket itself (the layout before issue 19).
    gateways: int | None = Field(default=None, ge=0)
    # Journey worker processes `journeys up` runs (`journeys journey-worker`, one
    # consumer group over the event partitions, one shared SQLite event store); their
    # ClickHouse writes reach the node over the projections topic (chdb: one process
    # per folder). 0: the journey worker runs in the node (the default layout).
    journey_workers: int = Field(default=0, ge=0)
    # Which of them this process is (set by `journeys up` for each journey worker).
    journey_worker_index: int = Field(default=0, ge=0)
    # Set by `journeys up` for a gateway: the node's private Unix socket.
    node_socket: str = ""
    # Set by `journeys up` with gateways: where they keep their counters (prometheus
    # multiprocess files), which the node's /metrics sums.
    gateway_metrics_dir: Path | None = None
    # How often a gateway reads the worker's positions and the broker's end offsets
    # for its lag limit (and its journal's trim): the staleness of its 503.
    gateway_lag_poll_s: float = Field(default=1.0, gt=0)
    # Development keys. `journeys up` generates and keeps them in data_dir when unset.
    write_key: str = ""
    read_key: str = ""
    # Manages keys, webhooks and rules, lists dead letters.
    admin_key: str = ""
    # Write keys created through the API are cached this long by each replica:
    # a key revoked through another replica stops working within this time.
    write_key_cache_s: float = Field(default=5.0, ge=0)
    # Per write key token bucket (events per second, burst); 0 turns it off.
    ingest_rate_per_s: float = Field(default=2000.0, ge=0)
    ingest_burst: int = Field(default=10000, ge=1)
    # Backpressure (the node, where the API shares the worker's process): while the
    # journey worker is further behind than this, ingest answers 503 with Retry-After
    # instead of letting the backlog grow. In events (1M: about 10 min of the node's
    # pipeline) and in seconds (age of the oldest unprocessed event); 0 turns one off.
    ingest_max_lag_events: int = Field(default=1_000_000, ge=0)
    ingest_max_lag_s: float = Field(default=0.0, ge=0)
    # The gateway's Kafka producer: librdkafka (confluent-kafka) measured 1.2-2.7x
    # aiokafka's rate under concurrent requests (docs/architecture.md).
    gateway_producer: Literal["confluent", "aiokafka"] = "confluent"
    # Browser origins that may send events (comma-separated ``https://shop.example``,
    # or ``*``: a browser write key is public, as Segment's). A write key's own
    # list, when it has one, replaces this for that key.
    ingest_origins: str = "*"
    # Origins of dashboards that may call the read and admin APIs from a browser;
    # empty: none (the dashboard this API serves is same-origin).
    dashboard_origins: str = ""
    # Where the CLI's HTTP commands (keys, dead-letters, import) find the API;
    # empty: http://<api_host>:<api_port>.
    api_url: str = ""

    # Journey worker batching: one event-store transaction and one ClickHouse
    # insert per batch; `batch_within_s` bounds how long an event waits for company.
    batch_max_events: int = Field(default=2000, ge=1)
    batch_within_s: float = Field(default=0.2, gt=0)

    # A trigger rules file (TOML, journeys/outreach_rules.py's format) to carry into the
    # lifecycle flows: read through the migration at a worker's start (stack/flows_switch.py).
    # Empty: the shipped lifecycle flows (journeys/flows.toml) are switched on as they are.
    trigger_rules_file: str = ""
    # A flow's send due further behind the wall clock than this is skipped (expired)
    # instead of sent: replays and backfills never send for carts due long ago.
    trigger_grace_s: float = Field(default=900.0, gt=0)
    # How often due flow states and due deliveries are looked for.
    trigger_tick_s: float = Field(default=0.1, gt=0)
    # How often RFM segments are recomputed over all buyers, for flows that
    # enter on a customer entering one (``rfm:champions``: the high-value welcome).
    rfm_scan_s: float = Field(default=60.0, gt=0)
    # Webhook and e-mail delivery: per-attempt timeout, exponential backoff with
    # jitter (doubling from base, capped), and the horizon after which a
    # delivery is dead-lettered.
    outreach_timeout_s: float = Field(default=10.0, gt=0)
    outreach_backoff_base_s: float = Field(default=1.0, gt=0)
    outreach_backoff_max_s: float = Field(default=300.0, gt=0)
    outreach_retry_horizon_s: float = Field(default=3600.0, gt=0)
    outreach_concurrency: int = Field(default=64, ge=1)
    # The e-mail channel: an SMTP relay; empty host switches the channel off.
    smtp_host: str = ""
    smtp_port: int = Field(default=25, ge=0, le=65535)
    smtp_sender: str = "outreach@localhost"
    # Where customers reach the platform: the signed unsubscribe link in every message
    # (List-Unsubscribe, {{ unsubscribe_url }}) is <public_url>/v1/unsubscribe/<token>.
    # https (RFC 8058), except on this machine; empty: the API's own URL (api_base_url).
    public_url: str = ""
    # The key signing unsubscribe links (any text, 16 bytes at least); empty: the file
    # data_dir/keys/unsubscribe.key, generated on first start. Every process that sends
    # or takes links (node, worker, API) must share it; a new key voids links sent.
    unsubscribe_secret: str = Field(default="", repr=False)

    # People who sign in (api/access.py): how long a session lasts, and unusual access.
    session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    # An alert when one key or user reads more distinct customers' data in a minute (0: never).
    alert_customers_per_min: int = Field(default=200, ge=0)
    # Failed sign-ins of one name from one address within the window: an alert, then 429.
    signin_max_failures: int = Field(default=5, ge=1)
    signin_window_s: float = Field(default=300.0, gt=0)
    # Where alerts are POSTed besides the audit log, signed like outreach webhooks.
    alert_webhook_url: str = ""
    alert_webhook_secret: str = ""

    # Encryption at rest (projections/privacy/): the master key wrapping every
    # customer's data key, base64 of 32 bytes, or a file holding it; neither: the
    # file data_dir/keys/master.key, generated on first start. Losing it loses every
    # personal field (the analytics keep working: they never need the values).
    master_key: str = ""
    master_key_file: Path | None = None
    # The personal fields sealed at the gateway (comma-separated keys of traits,
    # properties and context.traits); empty: the documented defaults
    # (projections/privacy/fields.py).
    personal_fields: str = ""

    # Scheduled backups (stack/backup.py): every this many hours (0: off) the node takes
    # a backup into each of ``backup_dirs`` (comma-separated absolute folders: more than
    # one, so backups exist in more than one place) and keeps the newest
    # ``backup_keep`` in each.
    backup_every_h: float = Field(default=0.0, ge=0)
    backup_dirs: str = ""
    backup_keep: int = Field(default=7, ge=1)

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("public_url")
    @classmethod
    def _public_https(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        local = parts.hostname in ("localhost", "127.0.0.1", "::1")
        if parts.scheme != "https" and not (parts.scheme == "http" and local):
            raise ValueError(
                "must be an https:// URL (one-click unsubscribe links, RFC 8058); "
                "http:// only for localhost"
            )
        return value.rstrip("/")

    @field_validator("unsubscribe_secret")
    @classmethod
    def _long_enough(cls, value: str) -> str:
        if value and len(value.encode()) < 16:
            raise ValueError("must be at least 16 bytes")
        return value

    @field_validator("clickhouse_url")
    @classmethod
    def _known_clickhouse_scheme(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in {"chdb", "http", "https"}:
            raise ValueError("must start with chdb://, http:// or https://")
        return value

    @field_validator("ingest_origins", "dashboard_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for origin in _split(value):
            problem = origin_problem(origin)
            if problem:
                raise ValueError(f"{origin!r}: {problem}")
        return value

    @field_validator("backup_dirs")
    @classmethod
    def _absolute_backup_dirs(cls, value: str) -> str:
        for folder in _split(value):
            if not Path(folder).is_absolute():
                raise ValueError(f"{folder!r}: must be an absolute path")
        return value

    @model_validator(mode="after")
    def _backups_have_a_place(self) -> Settings:
        if self.backup_every_h and not self.backup_dir_list:
            raise ValueError("backup_every_h is set but backup_dirs names no folder")
        return self

    @model_validator(mode="after")
    def _insync_replicas_exist(self) -> Settings:
        if self.topic_min_insync_replicas > self.topic_replication_factor:
            raise ValueError(
                f"topic_min_insync_replicas ({self.topic_min_insync_replicas}) exceeds "
                f"topic_replication_factor ({self.topic_replication_factor}): "
                "every acks=all write would be refused"
            )
        return self

    @field_validator("postgres_dsn")
    @classmethod
    def _postgres_scheme(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in {"postgres", "postgresql"}:
            raise ValueError("must be a postgresql:// URL")
        return value

    # --- derived names -------------------------------------------------------------

    @property
    def events_topic(self) -> str:
        """The ordered log of accepted tracking events, keyed by customer."""
        return f"{self.topic_prefix}.events"

    @property
    def dead_letter_topic(self) -> str:
        """Rejected events with the reason they were rejected."""
        return f"{self.topic_prefix}.events.dlq"

    @property
    def stage_changes_topic(self) -> str:
        """Every stage a customer reaches, for downstream consumers."""
        return f"{self.topic_prefix}.stage-changes"

    @property
    def segments_topic(self) -> str:
        """Every SegmentEntered / SegmentExited, keyed by customer."""
        return f"{self.topic_prefix}.segments"

    @property
    def triggers_topic(self) -> str:
        """Fired outreach triggers, keyed by customer."""
        return f"{self.topic_prefix}.triggers"

    @property
    def triggers_dead_letter_topic(self) -> str:
        """Trigger deliveries that ran out of retries, with the last error."""
        return f"{self.topic_prefix}.triggers.dlq"

    @property
    def projections_topic(self) -> str:
        """Journey workers' ClickHouse writes, for the node that owns chdb (one partition)."""
        return f"{self.topic_prefix}.projections"

    @property
    def trigger_grace(self) -> timedelta:
        """:attr:`trigger_grace_s` as a duration."""
        return timedelta(seconds=self.trigger_grace_s)

    @property
    def all_topics(self) -> list[str]:
        """Topics the platform creates at start-up."""
        return [
            self.events_topic,
            self.dead_letter_topic,
            self.stage_changes_topic,
            self.segments_topic,
            self.triggers_topic,
            self.triggers_dead_letter_topic,
        ]

    @property
    def topic_configs(self) -> dict[str, dict[str, str]]:
        """Each platform topic's broker configuration: durability and retention by role.

        None is compacted: no topic is a changelog (state lives in the event store, and
        Faust's tables and changelogs are unused), and a compacted stage-change or trigger
        topic would drop the earlier records of a customer that its readers need.
        """

        def role(hours: float, mib: int) -> dict[str, str]:
            return {
                "cleanup.policy": "delete",
                "retention.ms": str(int(hours * 3_600_000)),
                "retention.bytes": str(mib * 1024 * 1024),
                "min.insync.replicas": str(self.topic_min_insync_replicas),
            }

        ingest = role(self.topic_events_retention_h, self.topic_events_retention_mib)
        outcomes = role(self.topic_outcomes_retention_h, self.topic_outcomes_retention_mib)
        dead = role(self.topic_dead_letters_retention_h, self.topic_dead_letters_retention_mib)
        return {
            self.events_topic: ingest,
            self.dead_letter_topic: dead,
            self.stage_changes_topic: outcomes,
            self.segments_topic: outcomes,
            self.triggers_topic: outcomes,
            self.triggers_dead_letter_topic: dead,
        }

    @property
    def ingest_origin_list(self) -> frozenset[str]:
        """:attr:`ingest_origins` as a set."""
        return frozenset(_split(self.ingest_origins))

    @property
    def dashboard_origin_list(self) -> frozenset[str]:
        """:attr:`dashboard_origins` as a set."""
        return frozenset(_split(self.dashboard_origins))

    @property
    def backup_dir_list(self) -> list[str]:
        """:attr:`backup_dirs` as a list, in the order given."""
        return _split(self.backup_dirs)

    @property
    def api_base_url(self) -> str:
        """The API's URL for clients (the CLI's HTTP commands)."""
        return self.api_url.rstrip("/") or f"http://{self.api_host}:{self.api_port}"

    @property
    def public_base_url(self) -> str:
        """Where customers reach the platform (the unsubscribe links)."""
        return self.public_url or self.api_base_url

    @property
    def unsubscribe_key_path(self) -> Path:
        """The unsubscribe links' signing key, when not in the environment."""
        return self.keys_dir / "unsubscribe.key"

    @property
    def chdb_path(self) -> Path:
        """Folder of the embedded ClickHouse engine, when no server is configured."""
        if self.clickhouse_url.startswith("chdb://"):
            return Path(urlsplit(self.clickhouse_url).path)
        return self.data_dir / "clickhouse"

    @property
    def uses_embedded_clickhouse(self) -> bool:
        """True when ClickHouse is chdb in this process, not a server."""
        return not self.clickhouse_url or self.clickhouse_url.startswith("chdb://")

    @property
    def uses_journal(self) -> bool:
        """True when the node journals accepted events (the broker forgets: an epoch is set)."""
        return self.journal_enabled and bool(self.kafka_epoch)

    @property
    def journal_path(self) -> Path:
        """The ingest journal's folder."""
        return self.journal_dir or self.data_dir / "journal"

    @property
    def feed_positions_path(self) -> Path:
        """How far the node applied the journey workers' projection records."""
        return self.data_dir / "projection-feed.sqlite"

    @property
    def gateways_path(self) -> Path:
        """Where `journeys up`'s ingest gateways keep their journals, one folder each."""
        return self.data_dir / "gateways"

    def gateway_journal_path(self, index: int) -> Path:
        """Gateway ``index``'s ingest journal: only that gateway replays it."""
        return self.gateways_path / str(index) / "journal"

    def journey_worker_journal_path(self, index: int) -> Path:
        """Journey worker ``index``'s journal of projection records (only it replays it)."""
        return self.data_dir / "journey-workers" / str(index) / "journal"

    def journey_worker_identity_journal_path(self) -> Path:
        """This journey worker's journal of the identity messages it sent (only it replays it)."""
        return self.data_dir / "journey-workers" / str(self.journey_worker_index) / "identities"

    @property
    def journey_worker_metrics_dir(self) -> Path:
        """Where `journeys up`'s journey workers leave their metrics for the node's /metrics."""
        return self.data_dir / "journey-worker-metrics"

    @property
    def journey_worker_metrics_file(self) -> Path:
        """This journey worker's metrics, rewritten every second (stack/metrics.py)."""
        return self.journey_worker_metrics_dir / f"{self.journey_worker_index}.prom"

    def gateway_journal_paths(self) -> dict[int, Path]:
        """The gateways' journals on disk, by gateway index."""
        found = self.gateways_path.glob("*/journal")
        return {int(p.parent.name): p for p in sorted(found) if p.parent.name.isdigit()}

    @property
    def sqlite_path(self) -> Path:
        """The SQLite event store file."""
        return self.data_dir / "events.sqlite"

    @property
    def access_store_path(self) -> Path:
        """Users, sessions and the audit log, in the embedded shape."""
        return self.data_dir / "access.sqlite"

    @property
    def keys_dir(self) -> Path:
        """The folder of the master key file and the erasure ledger (0700)."""
        return self.data_dir / "keys"

    @property
    def master_key_path(self) -> Path:
        """Where the master key is read from (when not in the environment)."""
        return self.master_key_file or self.keys_dir / "master.key"

    @property
    def key_store_path(self) -> Path:
        """The SQLite key store: customers' wrapped data keys and the suppression list."""
        return self.data_dir / "keys.sqlite"

    @property
    def erasure_ledger_path(self) -> Path:
        """The append-only record of erasures (who, when, which ids), re-applied at start."""
        return self.keys_dir / "erasures.jsonl"

    def to_env(self) -> dict[str, str]:
        """These settings as ``JOURNEYS_*`` variables, for child processes."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is not None:  # unset optional settings stay unset in the child
                env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
        return env


def _split(origins: str) -> list[str]:
    return [origin.strip() for origin in origins.split(",") if origin.strip()]
