//! The ClickHouse schema, created on every shard by `dnsledger clickhouse init` (and by a
//! collector on start). Only features that ClickHouse 18.16 and current releases share:
//! `Replicated*MergeTree` with explicit paths, `AggregateFunction` columns written with
//! `-State` and read with `-Merge`, `Null` tables feeding materialized views, `Distributed`.
//!
//! Per shard (`{zk}` is `zookeeper_path/database/s<shard number>`):
//!
//! ```text
//! landing        ReplicatedMergeTree             every row of every batch, and its marker row
//! rrsets_in      Null  --rrsets_mv-->  rrsets    ReplicatedAggregatingMergeTree, ORDER BY key:
//!                                                any rrname/rrtype/bailiwick/rdata, min first,
//!                                                max last, sum count, groupUniqArray sensors
//! index_in       Null  --index_mv-->   rdata_index  ReplicatedReplacingMergeTree, ORDER BY pos
//! domains_in     Null  --domains_mv--> domains  ReplicatedAggregatingMergeTree, ORDER BY domain:
//!                                                min first seen of each registrable domain
//! rrsets_all, rdata_index_all, landing_all, domains_all   Distributed over the cluster
//! ```
//!
//! `key` is the sled store's RRset key (reversed owner, type, bailiwick, rdata-set digest) and
//! `pos` its index key (forward owner, rdata address, rdata name, each ending with the RRset
//! key), so both backends walk the same key space in the same order. Rows whose key starts
//! with 0xFF are batch markers (see the module above), never RRsets: presentation-format names
//! are ASCII.

/// Statements creating the schema on one shard (idempotent: `IF NOT EXISTS`).
pub fn statements(db: &str, cluster: &str, zk: &str, window: u64) -> Vec<String> {
    let settings = format!("SETTINGS index_granularity = 8192, replicated_deduplication_window = {window}");
    let batch_columns = "sensor String, stream UInt64, first_seq UInt64, seq UInt64, key String, \
                         rrname String, rrtype UInt16, bailiwick String, rdata Array(String), negative UInt8, \
                         time_first UInt64, time_last UInt64, count UInt64, sensors Array(String)";
    vec![
        format!("CREATE DATABASE IF NOT EXISTS {db}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.landing ({batch_columns}) \
             ENGINE = ReplicatedMergeTree('{zk}/landing', '{{replica}}') \
             PARTITION BY toYYYYMM(toDate(time_last)) ORDER BY (sensor, stream, seq, key) {settings}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.rrsets (key String, rrname String, rrtype UInt16, bailiwick String, \
             rdata Array(String), time_first AggregateFunction(min, UInt64), \
             time_last AggregateFunction(max, UInt64), count AggregateFunction(sum, UInt64), \
             sensors AggregateFunction(groupUniqArray, String)) \
             ENGINE = ReplicatedAggregatingMergeTree('{zk}/rrsets', '{{replica}}') ORDER BY key {settings}"
        ),
        format!("CREATE TABLE IF NOT EXISTS {db}.rrsets_in ({batch_columns}) ENGINE = Null"),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.rrsets_mv TO {db}.rrsets AS SELECT key, rrname, rrtype, \
             bailiwick, rdata, arrayReduce('minState', [time_first]) AS time_first, \
             arrayReduce('maxState', [time_last]) AS time_last, arrayReduce('sumState', [count]) AS count, \
             arrayReduce('groupUniqArrayState', sensors) AS sensors FROM {db}.rrsets_in"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.rdata_index (pos String) \
             ENGINE = ReplicatedReplacingMergeTree('{zk}/rdata_index', '{{replica}}') ORDER BY pos {settings}"
        ),
        format!("CREATE TABLE IF NOT EXISTS {db}.index_in (idx Array(String)) ENGINE = Null"),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.index_mv TO {db}.rdata_index AS \
             SELECT arrayJoin(idx) AS pos FROM {db}.index_in"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.rrsets_all AS {db}.rrsets ENGINE = Distributed({cluster}, {db}, rrsets)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.rdata_index_all AS {db}.rdata_index \
             ENGINE = Distributed({cluster}, {db}, rdata_index)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.landing_all AS {db}.landing ENGINE = Distributed({cluster}, {db}, landing)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.domains (domain String, first AggregateFunction(min, UInt64)) \
             ENGINE = ReplicatedAggregatingMergeTree('{zk}/domains', '{{replica}}') ORDER BY domain {settings}"
        ),
        format!("CREATE TABLE IF NOT EXISTS {db}.domains_in (domain String, first UInt64) ENGINE = Null"),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.domains_mv TO {db}.domains AS \
             SELECT domain, arrayReduce('minState', [first]) AS first FROM {db}.domains_in"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.domains_all AS {db}.domains ENGINE = Distributed({cluster}, {db}, domains)"
        ),
    ]
}
