"""Versioned ClickHouse schema, applied in order and recorded in ``schema_migrations``.

Add a migration by appending to ``MIGRATIONS``; never edit one that has shipped
(version 1 has not shipped yet: it may still change before the first release).

Versions: 1 event log, stage changes, stage projection; 2 dead letters and
write keys; 3 journey projections (orders, profiles); 4 and 6 per-customer
timelines for funnels. 5 was reserved for outreach, which keeps its tables in
the event store's database instead: it stays unused. 7 source, historical and
clamped columns of the event log. 8: identity merges in the event log (cheap
deletes, merged flags). 9: the browser origins each write key accepts.
10: stage_changes revisions. 11: segment membership changes. 12: segment
changes found by a backfill, flagged.
"""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

# Each migration: (version, description, statements). ``{db}`` is the database.
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "event log, stage changes and the customer stage projection",
        [
            # ReplacingMergeTree on (customer, time, id): a re-inserted event (a
            # replayed batch, a re-sent block) collapses into one row; queries that
            # count rows read with FINAL. Plain insert deduplication would not do:
            # it is off for non-replicated tables and only catches byte-identical
            # blocks. Sorted by customer first because every analysis (funnels,
            # paths, retention, RFM) groups by customer and reads one customer's
            # events in time order; partitions by month so date ranges prune.
            # The e-commerce fields the analyses filter on have typed columns
            # (absent string fields read as '', absent numbers as NULL); every
            # other property is kept in ``properties`` as JSON text per key.
            """
            CREATE TABLE IF NOT EXISTS {db}.events (
                event_id String,
                customer_key String,
                user_id String,
                anonymous_id String,
                call_type LowCardinality(String),
                event_type LowCardinality(String),
                event_name LowCardinality(String),
                timestamp DateTime64(3, 'UTC'),
                received_at DateTime64(3, 'UTC'),
                product_id String,
                sku String,
                category LowCardinality(String),
                brand LowCardinality(String),
                price Nullable(Float64),
                quantity Nullable(Int64),
                cart_id String,
                order_id String,
                revenue Nullable(Float64),
                currency LowCardinality(String),
                coupon String,
                properties Map(String, String)
            ) ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(timestamp)
            ORDER BY (customer_key, timestamp, event_id)
            """,
            """
            CREATE TABLE IF NOT EXISTS {db}.stage_changes (
                customer_key String,
                stage LowCardinality(String),
                previous_stage LowCardinality(String),
                reason String,
                event_id String,
                at DateTime64(3, 'UTC')
            ) ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(at)
            ORDER BY (customer_key, at, stage)
            """,
            # Current state per customer; the highest aggregate version wins.
            """
            CREATE TABLE IF NOT EXISTS {db}.customer_stages (
                customer_key String,
                stage LowCardinality(String),
                stage_since DateTime64(3, 'UTC'),
                event_count UInt64,
                orders UInt32,
                first_seen DateTime64(3, 'UTC'),
                last_seen DateTime64(3, 'UTC'),
                version UInt64
            ) ENGINE = ReplacingMergeTree(version)
            ORDER BY customer_key
            """,
        ],
    ),
    (
        2,
        "tracking API: dead letters and write keys",
        [
            # One row per rejected event, keyed by the id the gateway gave it: the
            # dead-letter agent consumes at least once, a re-insert collapses.
            """
            CREATE TABLE IF NOT EXISTS {db}.dead_letters (
                id String,
                rejected_at DateTime64(3, 'UTC'),
                source String,
                reasons String,
                payload String
            ) ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(rejected_at)
            ORDER BY (rejected_at, id)
            """,
            # Write keys: only a sha256 of the secret is kept. Revoking writes a newer
            # version of the row; the highest version wins (queries read FINAL).
            """
            CREATE TABLE IF NOT EXISTS {db}.write_keys (
                key_id String,
                name String,
                secret_sha256 String,
                created_at DateTime64(3, 'UTC'),
                revoked_at Nullable(DateTime64(3, 'UTC')),
                version UInt64
            ) ENGINE = ReplacingMergeTree(version)
            ORDER BY key_id
            """,
        ],
    ),
    (
        3,
        "journeys: lapse and merge columns of customer_stages, customer_orders, customer_profiles",
        [
            # The last order decides when loyalty lapses (read side: "now" and as_of);
            # merged_into names the known customer an anonymous journey merged into,
            # absorbed_keys the anonymous journeys merged into a known one.
            """
            ALTER TABLE {db}.customer_stages
                ADD COLUMN IF NOT EXISTS last_order_at Nullable(DateTime64(3, 'UTC'))
                    AFTER last_seen,
                ADD COLUMN IF NOT EXISTS merged_into String DEFAULT '' AFTER last_order_at,
                ADD COLUMN IF NOT EXISTS absorbed_keys Array(String) AFTER merged_into
            """,
            # Orders per customer, for stages as of a moment (lapse) and RFM.
            """
            CREATE TABLE IF NOT EXISTS {db}.customer_orders (
                customer_key String,
                order_id String,
                at DateTime64(3, 'UTC'),
                revenue Float64
            ) ENGINE = ReplacingMergeTree
            ORDER BY (customer_key, order_id)
            """,
            # One profile per customer; the highest aggregate version wins.
            """
            CREATE TABLE IF NOT EXISTS {db}.customer_profiles (
                customer_key String,
                first_seen DateTime64(3, 'UTC'),
                last_seen DateTime64(3, 'UTC'),
                channels Array(LowCardinality(String)),
                orders UInt32,
                revenue Float64,
                refunded Float64,
                aov Float64,
                last_order_at Nullable(DateTime64(3, 'UTC')),
                ltv_estimate Float64,
                purchase_cycle_days Nullable(Float64),
                interest_tags Array(String),
                average_rating Nullable(Float64),
                open_tickets UInt32,
                version UInt64
            ) ENGINE = ReplacingMergeTree(version)
            ORDER BY customer_key
            """,
        ],
    ),
    (
        4,
        "analysis: per-customer event timelines for funnels",
        [
            # One row per customer (after merges) holding every event as
            # time_ms * 8 + type code, and the names in the same order: a funnel
            # over types or names reads 1 row per customer instead of 10 events
            # and needs no GROUP BY customer. The arrays are unsorted (states
            # merge by appending); queries sort them. A replayed block appends
            # copies, which no funnel answer depends on (see analytics/funnels.py).
            """
            CREATE TABLE IF NOT EXISTS {db}.customer_timelines (
                customer_key String,
                tk AggregateFunction(groupArray, Int64),
                names AggregateFunction(groupArray, LowCardinality(String))
            ) ENGINE = AggregatingMergeTree
            ORDER BY customer_key
            """,
            """
            CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.customer_timelines_mv
            TO {db}.customer_timelines AS
            SELECT customer_key,
                   groupArrayState(toUnixTimestamp64Milli(timestamp) * 8 + indexOf(
                       ['browse', 'cart', 'checkout', 'purchase', 'support', 'identify',
                        'custom'], event_type)) AS tk,
                   groupArrayState(event_name) AS names
            FROM {db}.events
            GROUP BY customer_key
            """,
            # Events logged before this migration. An event inserted between the
            # view's creation and this backfill lands twice: harmless, as above.
            """
            INSERT INTO {db}.customer_timelines
            SELECT customer_key,
                   groupArrayState(toUnixTimestamp64Milli(timestamp) * 8 + indexOf(
                       ['browse', 'cart', 'checkout', 'purchase', 'support', 'identify',
                        'custom'], event_type)),
                   groupArrayState(event_name)
            FROM {db}.events
            GROUP BY customer_key
            """,
        ],
    ),
    (
        6,
        "analysis: per-customer event times by canonical type, for ordered funnels",
        [
            # One row per customer (after merges or FINAL), one array of event
            # times (ms) per canonical type. An ordered funnel over types reads
            # only its steps' columns and finds each step's predecessor by
            # lookups in those short arrays: no sort of the whole timeline, no
            # mapping of every event to a step. Plain arrays
            # (SimpleAggregateFunction) read faster than groupArray states, which
            # must be deserialised. Merges append, so the arrays are unsorted and
            # a re-sent block appends copies; queries sort, and no ordered
            # funnel answer depends on copies (see analytics/funnels.py).
            """
            CREATE TABLE IF NOT EXISTS {db}.customer_type_times (
                customer_key String,
                browse SimpleAggregateFunction(groupArrayArray, Array(Int64)),
                cart SimpleAggregateFunction(groupArrayArray, Array(Int64)),
                checkout SimpleAggregateFunction(groupArrayArray, Array(Int64)),
                purchase SimpleAggregateFunction(groupArrayArray, Array(Int64)),
                support SimpleAggregateFunction(groupArrayArray, Array(Int64)),
                identify SimpleAggregateFunction(groupArrayArray, Array(Int64)),
                custom SimpleAggregateFunction(groupArrayArray, Array(Int64))
            ) ENGINE = AggregatingMergeTree
            ORDER BY customer_key
            """,
            """
            CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.customer_type_times_mv
            TO {db}.customer_type_times AS
            SELECT customer_key,
                   groupArrayIf(toUnixTimestamp64Milli(timestamp), event_type = 'browse') AS browse,
                   groupArrayIf(toUnixTimestamp64Milli(timestamp), event_type = 'cart') AS cart,
                   groupArrayIf(toUnixTimestamp64Milli(timestamp), event_type = 'checkout')
                       AS checkout,
                   groupArrayIf(toUnixTimestamp64Milli(timestamp), event_type = 'purchase')
                       AS purchase,
                   groupArrayIf(toUnixTimestamp64Milli(timestamp), event_type = 'support')
                       AS support,
                   groupArrayIf(toUnixTimestamp64Milli(timestamp), event_type = 'identify')
                       AS identify,
                   groupArrayIf(toUnixTimestamp64Milli(timestamp), event_type = 'custom') AS custom
            FROM {db}.events
            GROUP BY customer_key
            """,
            # Events logged before this migration; one inserted in between lands
            # twice, which is harmless as above.
            """
            INSERT INTO {db}.customer_type_times
            SELECT customer_key,
                   groupArrayIf(toUnixTimestamp64Milli(timestamp), event_type = 'browse'),
                   groupArrayIf(toUnixTimestamp64Milli(timestamp), event_type = 'cart'),
                   groupArrayIf(toUnixTimestamp64Milli(timestamp), event_type = 'checkout'),
                   groupArrayIf(toUnixTimestamp64Milli(timestamp), event_type = 'purchase'),
                   groupArrayIf(toUnixTimestamp64Milli(timestamp), event_type = 'support'),
                   groupArrayIf(toUnixTimestamp64Milli(timestamp), event_type = 'identify'),
                   groupArrayIf(toUnixTimestamp64Milli(timestamp), event_type = 'custom')
            FROM {db}.events
            GROUP BY customer_key
            """,
        ],
    ),
    (
        7,
        "event log: source, historical and clamped columns; the source in the dedup key",
        [
            # Which write key sent the event, whether it is imported history, and
            # whether its claimed time was clamped: marketers filter on them. A
            # messageId is unique per source, so two sources' events with one id
            # must not collapse: the source joins the sorting (deduplication) key.
            # ClickHouse allows adding to the end of the key only a column added
            # in the same ALTER, without a default. Rows logged before read '' and
            # false (their source was not kept).
            """
            ALTER TABLE {db}.events
                ADD COLUMN source LowCardinality(String),
                ADD COLUMN historical Bool,
                ADD COLUMN clamped Bool,
                MODIFY ORDER BY (customer_key, timestamp, event_id, source)
            """,
        ],
    ),
    (
        8,
        "analysis: identity merges move anonymous rows to their customer cheaply",
        [
            # Block number and offset columns let DELETE write a small patch part
            # (lightweight_delete_mode='lightweight_update') instead of a mutation
            # over every part: measured on 10M events, 0.02-0.06 s against 2-3 s
            # per delete. Patch parts mask rows of parts written before this too
            # (checked on the benchmark's data).
            """
            ALTER TABLE {db}.events MODIFY SETTING
                enable_block_number_column = 1, enable_block_offset_column = 1
            """,
            # AggregatingMergeTree has no patch-part deletes (a mutation over 1M rows
            # took 0.4-0.9 s), and its arrays cannot be taken apart: an anonymous
            # key merged into a customer gets a row with merged = 1 instead, which
            # max() keeps, and the funnels skip such keys (its events are the
            # customer's now).
            """
            ALTER TABLE {db}.customer_timelines
                ADD COLUMN IF NOT EXISTS merged SimpleAggregateFunction(max, UInt8) DEFAULT 0
            """,
            """
            ALTER TABLE {db}.customer_type_times
                ADD COLUMN IF NOT EXISTS merged SimpleAggregateFunction(max, UInt8) DEFAULT 0
            """,
            # Written into the existing parts: a column computed from its default on
            # every read made the 10M funnel 0.15 s slower until the parts merged.
            "ALTER TABLE {db}.customer_timelines MATERIALIZE COLUMN merged",
            "ALTER TABLE {db}.customer_type_times MATERIALIZE COLUMN merged",
        ],
    ),
    (
        9,
        "tracking API: the browser origins a write key accepts",
        [
            # Empty: the settings' default (JOURNEYS_INGEST_ORIGINS, "*"). Rows of
            # keys created before read empty, so they keep the default.
            """
            ALTER TABLE {db}.write_keys
                ADD COLUMN IF NOT EXISTS allowed_origins Array(String) AFTER revoked_at
            """,
        ],
    ),
    (
        10,
        "journeys: stage_changes rows carry the revision of the stage history",
        [
            # A journey's stage history is re-derived when a late fact or a merge
            # changes its past (StagesRevised): the new history is written whole
            # under the next revision, and reads keep each customer's newest
            # revision, so rows that are no longer true drop out of every answer.
            """
            ALTER TABLE {db}.stage_changes
                ADD COLUMN IF NOT EXISTS revision UInt32 DEFAULT 0
            """,
        ],
    ),
    (
        11,
        "segments: every entry into and exit from a segment",
        [
            # One row per change of membership (SegmentEntered: entered = 1,
            # SegmentExited: 0) at the event time that caused it; ``event_id`` is
            # the causing event, '' when a rolling window sliding past an event did.
            # A replayed batch writes identical rows, which the key collapses (FINAL),
            # as for stage_changes. Sorted by segment first: members and sizes are
            # read per segment.
            """
            CREATE TABLE IF NOT EXISTS {db}.segment_changes (
                segment LowCardinality(String),
                customer_key String,
                at DateTime64(3, 'UTC'),
                entered UInt8,
                event_id String
            ) ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(at)
            ORDER BY (segment, customer_key, at, entered, event_id)
            """,
        ],
    ),
    (
        12,
        "segments: changes found by a backfill over history are flagged",
        [
            # 1: recorded by the backfill of a new or changed definition, not as it
            # happened; outreach never treats such an entry as live. Not in the key:
            # a change is written by the backfill or live, never both.
            """
            ALTER TABLE {db}.segment_changes
                ADD COLUMN IF NOT EXISTS backfill UInt8 DEFAULT 0
            """,
        ],
    ),
]


def migrate(client: Client, database: str) -> int:
    """Create ``database`` and apply every migration it lacks; returns its version."""
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(
        f"""
        CREATE TABLE IF NOT EXISTS {database}.schema_migrations (
            version UInt32, description String, applied_at DateTime DEFAULT now()
        ) ENGINE = ReplacingMergeTree ORDER BY version
        """
    )
    applied = {
        row[0]
        for row in client.query(f"SELECT version FROM {database}.schema_migrations").result_rows
    }
    for version, description, statements in MIGRATIONS:
        if version in applied:
            continue
        for statement in statements:
            client.command(statement.format(db=database))
        client.insert(
            f"{database}.schema_migrations",
            [[version, description]],
            column_names=["version", "description"],
        )
    return max(version for version, _, _ in MIGRATIONS)
