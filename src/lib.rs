//! dnsledger: a passive DNS system.
//!
//! Data flows from resolvers to the central database:
//!
//! ```text
//! unbound / BIND / Knot / dnsledger resolver
//!     | dnstap over Frame Streams (unix, TCP, TLS)
//!     v
//! framestream::listener -> dnstap::decode -> (sensor pipeline: classify -> bailiwick -> scrub
//!     -> RRsets -> aggregate -> sled) -> forward -> relay -> collector -> API
//! ```
//!
//! Modules, in the order data passes through them:
//! - [`framestream`]: the Frame Streams codec, handshake, listener, writer and file format.
//! - [`dnstap`]: dnstap protobuf types, decoding to our own types, rendering.
//! - [`dns`]: presentation-format helpers (mnemonics, rdata text).
//! - [`resolver`]: hickory recursion with an upstream dnstap tap (`dnsledger resolver`).
//! - [`forward`]: the outbox to the next hop over mutual TLS; [`collector`]: exactly-once
//!   merge of senders' batches.
//! - [`store`]: the sled store (RRsets, indexes, outbox, feed log) and its lookups.
//! - [`api`]: the query API (DNSDB v2, COF, CIRCL), web portal and live feed;
//!   [`query`]: `dnsledger query` (local or remote); [`import`], [`export`]: COF in and out;
//!   [`psl`]: the Public Suffix List for new domains.
//! - [`tap`]: the `dnsledger tap` debugging tool built on the two above.
//! - [`metrics`]: Prometheus counters and the `/metrics` endpoint.
//! - [`tls`]: rustls configuration from PEM files.
//! - [`alloc`]: the global allocator (mimalloc with `--features mimalloc`).

pub mod alloc;
pub mod api;
pub mod clickhouse;
pub mod collector;
pub mod db;
pub mod dns;
pub mod dnstap;
pub mod export;
pub mod forward;
pub mod framestream;
pub mod generate;
pub mod import;
pub mod metrics;
pub mod pki;
pub mod psl;
pub mod query;
pub mod resolver;
pub mod sensor;
pub mod store;
pub mod tap;
pub mod tls;
