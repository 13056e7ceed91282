//! Reading the cluster as the ordered key space the store's lookups walk: RRset keys (tag `R`)
//! from `rrsets_all` (re-aggregated: merges are eventual), index keys (`F`, `I`, `T`, `G`, `V`) from
//! `rdata_index_all`, in pages that grow from 64 to 4,096 keys.

use std::collections::VecDeque;
use std::ops::Bound;

use serde::Deserialize;

use super::{Cluster, literal};
use crate::sensor::Rrset;
use crate::store::keys::encode_entry;
use crate::store::{Entry, Ordered, Scanned, StoreError};

const TAG_RRSET: u8 = b'R';
const FIRST_PAGE: usize = 64;
const MAX_PAGE: usize = 4096;

#[derive(clickhouse::Row, Deserialize)]
struct Aggregated {
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
    rrname: String,
    rrtype: u16,
    bailiwick: String,
    rdata: Vec<String>,
    first: u64,
    last: u64,
    count: u64,
    sensors: Vec<String>,
}

#[derive(clickhouse::Row, Deserialize)]
struct Key {
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
}

impl Aggregated {
    fn value(self) -> (Vec<u8>, Vec<u8>) {
        let mut sensors = self.sensors;
        sensors.sort();
        let e = Entry {
            rrset: Rrset { rrname: self.rrname, rrtype: self.rrtype, bailiwick: self.bailiwick, rdata: self.rdata },
            first: self.first,
            last: self.last,
            count: self.count,
            sensors,
        };
        (self.key, encode_entry(&e))
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl Cluster {
    /// Runs a read query on the first shard that answers (any shard can read the
    /// `Distributed` tables); shards that are down are skipped, and the caller learns of them
    /// from [`Cluster::unavailable`].
    fn read<T>(&self, sql: &str) -> Result<Vec<T>, StoreError>
    where
        T: clickhouse::Row + for<'b> Deserialize<'b>,
    {
        self.handle.block_on(self.read_async(sql, true))
    }

    /// [`Cluster::read`] from async code; with `partial` false, a shard that does not answer
    /// fails the query instead of being skipped.
    pub(super) async fn read_async<T>(&self, sql: &str, partial: bool) -> Result<Vec<T>, StoreError>
    where
        T: clickhouse::Row + for<'b> Deserialize<'b>,
    {
        let mut last = None;
        let skip = if partial { "1" } else { "0" };
        let limit = std::time::Duration::from_secs(self.config.timeout_secs);
        for (i, c) in self.shards.iter().enumerate() {
            let query = c.query(sql).with_option("skip_unavailable_shards", skip).fetch_all::<T>();
            match tokio::time::timeout(limit, query).await {
                Ok(Ok(rows)) => return Ok(rows),
                Ok(Err(e)) => last = Some(self.err(i, e).to_string()),
                Err(_) => last = Some(format!("clickhouse shard {}: no answer in {limit:?}", i + 1)),
            }
            tracing::debug!(shard = i + 1, error = last.as_deref(), "read failed; trying the next shard");
        }
        Err(backend(last.unwrap_or_else(|| "no shards".into())))
    }

    /// An RRset's per-day rows (first, last, count per UTC day of its deltas' first
    /// observation, as the sled store keeps them), from the landing table, which holds every
    /// batch exactly once. Blocking.
    pub fn days_of(&self, rrset: &Rrset) -> Result<Vec<crate::store::DayRow>, StoreError> {
        #[derive(clickhouse::Row, Deserialize)]
        struct Day {
            day: u64,
            first: u64,
            last: u64,
            count: u64,
        }
        let db = &self.config.database;
        let key = literal(&crate::store::keys::rrset_key(rrset));
        let rows: Vec<Day> = self.read(&format!(
            "SELECT intDiv(time_first, 86400) AS day, min(time_first) AS first, max(time_last) AS last, \
             sum(count) AS count FROM {db}.landing_all WHERE key = {key} AND negative = 0 GROUP BY day ORDER BY day"
        ))?;
        Ok(rows
            .into_iter()
            .map(|d| crate::store::DayRow { day: d.day as u32, first: d.first, last: d.last, count: d.count })
            .collect())
    }

    /// Which of these RRset keys (untagged) the cluster holds (every shard must answer: a key
    /// on a shard that is down is not new).
    pub async fn existing_keys(&self, keys: &[Vec<u8>]) -> Result<std::collections::HashSet<Vec<u8>>, StoreError> {
        if keys.is_empty() {
            return Ok(Default::default());
        }
        let db = &self.config.database;
        let list = keys.iter().map(|k| literal(k)).collect::<Vec<_>>().join(",");
        let rows: Vec<Key> =
            self.read_async(&format!("SELECT DISTINCT key FROM {db}.rrsets_all WHERE key IN ({list})"), false).await?;
        Ok(rows.into_iter().map(|k| k.key).collect())
    }

    /// Which of these registrable domains the cluster has seen (every shard must answer).
    pub async fn existing_domains(&self, domains: &[String]) -> Result<std::collections::HashSet<String>, StoreError> {
        if domains.is_empty() {
            return Ok(Default::default());
        }
        let db = &self.config.database;
        let list = domains.iter().map(|d| literal(d.as_bytes())).collect::<Vec<_>>().join(",");
        let rows: Vec<Key> = self
            .read_async(&format!("SELECT DISTINCT domain AS key FROM {db}.domains_all WHERE domain IN ({list})"), false)
            .await?;
        Ok(rows.into_iter().map(|k| String::from_utf8_lossy(&k.key).into_owned()).collect())
    }

    fn aggregated(&self, filter: &str) -> Result<Vec<Aggregated>, StoreError> {
        let db = &self.config.database;
        self.read(&format!(
            "SELECT key, any(rrname) AS rrname, any(rrtype) AS rrtype, any(bailiwick) AS bailiwick, \
             any(rdata) AS rdata, minMerge(time_first) AS first, maxMerge(time_last) AS last, \
             sumMerge(count) AS count, groupUniqArrayMerge(sensors) AS sensors \
             FROM {db}.rrsets_all WHERE {filter} GROUP BY key ORDER BY key"
        ))
    }
}

/// A page-by-page scan of one table.
struct Scan<'a> {
    cluster: &'a Cluster,
    rrsets: bool,
    /// Exclusive lower bound (after the first page); `None` with `from` inclusive.
    after: Option<Vec<u8>>,
    from: Option<Vec<u8>>,
    end: Option<Vec<u8>>,
    page: usize,
    buffered: VecDeque<(Vec<u8>, Vec<u8>)>,
    done: bool,
}

impl Scan<'_> {
    fn fetch(&mut self) -> Result<(), StoreError> {
        let (column, table) = if self.rrsets { ("key", "rrsets_all") } else { ("pos", "rdata_index_all") };
        let db = &self.cluster.config.database;
        let mut filter = Vec::new();
        if let Some(a) = &self.after {
            filter.push(format!("{column} > {}", literal(a)));
        } else if let Some(f) = &self.from {
            filter.push(format!("{column} >= {}", literal(f)));
        }
        // Keys from 0xFF on are batch markers.
        let marker = vec![0xff];
        let end = match &self.end {
            Some(e) if !self.rrsets || e[..] < marker[..] => e.clone(),
            _ if self.rrsets => marker,
            _ => vec![0xff; 2],
        };
        filter.push(format!("{column} < {}", literal(&end)));
        let filter = filter.join(" AND ");
        // Rows, not keys: parts not merged yet hold a key more than once; the distinct keys
        // of the first rows in key order are still the first keys.
        let keys: Vec<Key> = self.cluster.read(&format!(
            "SELECT {column} AS key FROM {db}.{table} WHERE {filter} ORDER BY {column} LIMIT {}",
            self.page
        ))?;
        if keys.len() < self.page {
            self.done = true;
        }
        let mut distinct: Vec<Vec<u8>> = keys.into_iter().map(|k| k.key).collect();
        distinct.dedup();
        let Some(last) = distinct.last().cloned() else {
            self.done = true;
            return Ok(());
        };
        if self.rrsets {
            let list = distinct.iter().map(|k| literal(k)).collect::<Vec<_>>().join(",");
            for row in self.cluster.aggregated(&format!("key IN ({list})"))? {
                let (k, v) = row.value();
                self.buffered.push_back(([&[TAG_RRSET][..], &k].concat(), v));
            }
        } else {
            self.buffered.extend(distinct.into_iter().map(|k| (k, Vec::new())));
        }
        self.after = Some(last);
        self.page = (self.page * 4).min(MAX_PAGE);
        Ok(())
    }
}

impl Iterator for Scan<'_> {
    type Item = Scanned;

    fn next(&mut self) -> Option<Scanned> {
        loop {
            if let Some((k, v)) = self.buffered.pop_front() {
                return Some(Ok((k.into(), v.into())));
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.fetch() {
                self.done = true;
                return Some(Err(e));
            }
        }
    }
}

/// Strips the `R` tag from a bound on the tagged key space, for the `rrsets` table.
fn untag(b: &[u8]) -> Vec<u8> {
    b.get(1..).unwrap_or_default().to_vec()
}

impl Ordered for Cluster {
    fn scan(&self, start: Bound<Vec<u8>>, end: Option<Vec<u8>>) -> Box<dyn Iterator<Item = Scanned> + '_> {
        let tag = match &start {
            Bound::Included(k) | Bound::Excluded(k) => k.first().copied(),
            Bound::Unbounded => None,
        };
        let rrsets = tag == Some(TAG_RRSET);
        let map = |k: &Vec<u8>| if rrsets { untag(k) } else { k.clone() };
        let (from, after) = match &start {
            Bound::Included(k) => (Some(map(k)), None),
            Bound::Excluded(k) => (None, Some(map(k))),
            Bound::Unbounded => (None, None),
        };
        // An end past the RRset tag (a walk of everything) is the end of the rrsets table.
        let end = end.filter(|e| !rrsets || e.first() == Some(&TAG_RRSET)).map(|e| map(&e));
        Box::new(Scan {
            cluster: self,
            rrsets,
            after,
            from,
            end,
            page: FIRST_PAGE,
            buffered: VecDeque::new(),
            done: tag.is_none(),
        })
    }

    fn get_sorted(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<sled::IVec>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let list = keys.iter().map(|k| literal(&untag(k))).collect::<Vec<_>>().join(",");
        let mut found: std::collections::HashMap<Vec<u8>, Vec<u8>> =
            self.aggregated(&format!("key IN ({list})"))?.into_iter().map(Aggregated::value).collect();
        Ok(keys.iter().map(|k| found.remove(&untag(k)).map(sled::IVec::from)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape_everything_clickhouse_or_the_client_would_read() {
        assert_eq!(literal(b"com.example.\0\x00\x01x"), "'com.example.\\x00\\x00\\x01x'");
        assert_eq!(literal(b"a'b\\c?d"), "'a\\'b\\\\c\\x3Fd'");
        assert_eq!(literal(&[0xff, 0x80]), "'\\xFF\\x80'");
    }
}
