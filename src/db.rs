//! The database behind the query API and the collector: the embedded sled store, or a
//! ClickHouse cluster. Lookups are the same code on both ([`crate::store::walk`] over
//! [`crate::store::Ordered`]); what only sled has (the live feed log, per-day rows, daily
//! exports) is asked for through [`Db::sled`].

use std::sync::Arc;

use crate::clickhouse::Cluster;
use crate::sensor::Rrset;
use crate::store::{DayRow, Ended, Entry, FeedItem, FeedRead, Fences, Lookup, Store, StoreError};

#[derive(Clone)]
pub enum Db {
    Sled(Store),
    ClickHouse(Arc<Cluster>),
}

impl Db {
    /// Walks a lookup (see [`crate::store::walk`]). Blocking: call from a blocking thread.
    pub fn walk(
        &self,
        lookup: &Lookup,
        fences: &Fences,
        after: Option<&[u8]>,
        budget: u64,
        visit: impl FnMut(&[u8], Entry) -> bool,
    ) -> Result<Ended, StoreError> {
        match self {
            Db::Sled(s) => s.walk(lookup, fences, after, budget, visit),
            Db::ClickHouse(c) => crate::store::walk(&**c, lookup, fences, after, budget, visit),
        }
    }

    /// See [`crate::store::count_entries`]. Blocking.
    pub fn count_entries(&self, lookup: &Lookup, cap: u64) -> Result<(u64, bool), StoreError> {
        match self {
            Db::Sled(s) => s.count_entries(lookup, cap),
            Db::ClickHouse(c) => crate::store::count_entries(&**c, lookup, cap),
        }
    }

    /// The sensors behind an RRset. Blocking.
    pub fn contributors(&self, e: &Entry) -> Vec<String> {
        match self {
            _ if !e.sensors.is_empty() => e.sensors.clone(),
            Db::Sled(s) => s.contributors(&e.rrset).unwrap_or_default(),
            Db::ClickHouse(_) => Vec::new(),
        }
    }

    /// Shards that do not answer (1-based; always empty for sled): results read while any
    /// is down are partial. Blocking.
    pub fn unavailable(&self) -> Vec<usize> {
        match self {
            Db::Sled(_) => Vec::new(),
            Db::ClickHouse(c) => c.unavailable_blocking(),
        }
    }

    /// Whether there is a live feed to serve: sled stores keep a feed log; a cluster has one
    /// when its batches go through NATS (the writer publishes it).
    pub fn has_feed(&self) -> bool {
        match self {
            Db::Sled(_) => true,
            Db::ClickHouse(c) => c.has_feed(),
        }
    }

    /// The newest feed token. Blocking.
    pub fn feed_durable(&self) -> Result<u64, StoreError> {
        match self {
            Db::Sled(s) => Ok(s.feed_durable()),
            Db::ClickHouse(c) => c.feed_durable(),
        }
    }

    /// Feed entries after `after`. Blocking.
    pub fn feed_read(&self, after: u64, max: usize, keep: impl Fn(&FeedItem) -> bool) -> Result<FeedRead, StoreError> {
        match self {
            Db::Sled(s) => s.feed_read(after, max, keep),
            Db::ClickHouse(c) => c.feed_read(after, max, keep),
        }
    }

    /// Whether per-day rows (`aggr=false`) can be answered: a sled store that keeps them, or
    /// a cluster (which computes them from its landing table).
    pub fn keeps_days(&self) -> bool {
        match self {
            Db::Sled(s) => s.keeps_days(),
            Db::ClickHouse(_) => true,
        }
    }

    /// An RRset's per-day rows, oldest first. Blocking.
    pub fn days_of(&self, rrset: &Rrset) -> Result<Vec<DayRow>, StoreError> {
        match self {
            Db::Sled(s) => s.days_of(rrset),
            Db::ClickHouse(c) => c.days_of(rrset),
        }
    }

    pub fn sled(&self) -> Option<&Store> {
        match self {
            Db::Sled(s) => Some(s),
            Db::ClickHouse(_) => None,
        }
    }
}
