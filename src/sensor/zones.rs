//! Bailiwick reconstruction for frames without `query_zone`: which zones each server address
//! is known to serve, learned from accepted delegations and seeded by the root hints.

use std::collections::HashMap;
use std::net::IpAddr;

use hickory_proto::rr::{Name, RecordType};

use super::extract::{Kind, Observation};

/// The IANA root servers' addresses (root hints, as of 2024).
pub const IANA_ROOT_SERVERS: &[&str] = &[
    "198.41.0.4",
    "2001:503:ba3e::2:30",
    "170.247.170.2",
    "2801:1b8:10::b",
    "192.33.4.12",
    "2001:500:2::c",
    "199.7.91.13",
    "2001:500:2d::d",
    "192.203.230.10",
    "2001:500:a8::e",
    "192.5.5.241",
    "2001:500:2f::f",
    "192.112.36.4",
    "2001:500:12::d0d",
    "198.97.190.53",
    "2001:500:1::53",
    "192.36.148.17",
    "2001:7fe::53",
    "192.58.128.30",
    "2001:503:c27::2:30",
    "193.0.14.129",
    "2001:7fd::1",
    "199.7.83.42",
    "2001:500:9f::42",
    "202.12.27.33",
    "2001:dc3::35",
];

/// Zones remembered per server address or name server name.
const ZONES_PER_NAME: usize = 256;
/// Answered addresses remembered per generation (two are kept): enough for resolvers that log
/// a glueless server's address shortly before the referral naming it, small beside a window
/// (every A/AAAA answer passes through here).
const RECENT_PER_GENERATION: usize = 32_768;

/// Server address -> zones, bounded. Lookups take the closest enclosing zone of a name.
#[derive(Debug)]
pub struct ZoneMap {
    servers: HashMap<IpAddr, Vec<Name>>,
    /// Name server names of delegations whose addresses were not in the referral (glueless).
    pending: HashMap<Name, Vec<Name>>,
    /// Addresses recently answered, by name: the answer for a glueless server's address may
    /// be logged before the referral that names it (BIND logs out of order). When full, it
    /// becomes `older` and a new one starts.
    recent: HashMap<Name, Vec<IpAddr>>,
    older: HashMap<Name, Vec<IpAddr>>,
    limit: usize,
    /// Entries not added because the map was full.
    pub full: u64,
    /// Bumped whenever a server gains a zone: frames waiting for a bailiwick may now place.
    pub generation: u64,
}

impl ZoneMap {
    /// An empty map holding at most `limit` servers and as many pending names.
    pub fn new(limit: usize) -> Self {
        Self {
            servers: HashMap::new(),
            pending: HashMap::new(),
            recent: HashMap::new(),
            older: HashMap::new(),
            limit,
            full: 0,
            generation: 0,
        }
    }

    /// Seeds the root zone's servers.
    pub fn with_roots(limit: usize, roots: &[IpAddr]) -> Self {
        let mut m = Self::new(limit);
        for r in roots {
            m.add(*r, Name::root());
        }
        m
    }

    pub fn add(&mut self, server: IpAddr, zone: Name) {
        if !self.servers.contains_key(&server) && self.servers.len() >= self.limit {
            self.full += 1;
            return;
        }
        let zones = self.servers.entry(server).or_default();
        if !zones.contains(&zone) {
            // One server may host many zones, but a list that keeps growing is someone
            // delegating random names to it: bounded, the rest counted.
            if zones.len() >= ZONES_PER_NAME {
                self.full += 1;
                return;
            }
            zones.push(zone);
            self.generation += 1;
        }
    }

    /// Remembers that `target` serves `zone`, until an answer gives its address (or maps the
    /// addresses already answered for it).
    pub fn add_server_name(&mut self, target: &Name, zone: &Name) {
        if let Some(addrs) = self.recent.get(target).or_else(|| self.older.get(target)).cloned() {
            for a in addrs {
                self.add(a, zone.clone());
            }
        }
        if !self.pending.contains_key(target) && self.pending.len() >= self.limit {
            self.full += 1;
            return;
        }
        let zones = self.pending.entry(target.clone()).or_default();
        if !zones.contains(zone) {
            if zones.len() >= ZONES_PER_NAME {
                self.full += 1;
                return;
            }
            zones.push(zone.clone());
        }
    }

    /// Accepted A/AAAA answers: addresses of name server names map to their zones, and are
    /// remembered for delegations logged later.
    pub fn learn_addresses(&mut self, accepted: &[Observation]) {
        for o in accepted {
            let rtype = RecordType::from(o.rrset.rrtype);
            if o.kind != Kind::Positive || !matches!(rtype, RecordType::A | RecordType::AAAA) {
                continue;
            }
            let Some(owner) = super::wire::to_name(&o.rrset.owner) else { continue };
            let addrs: Vec<IpAddr> = o.rrset.rdata.iter().filter_map(|r| r.parse().ok()).collect();
            self.learn_address(owner, addrs);
        }
    }

    /// Addresses of `owner` (an accepted A/AAAA RRset or glue): if it is a name server name,
    /// they serve its zones; remembered for delegations seen later.
    pub fn learn_address(&mut self, owner: Name, addrs: Vec<IpAddr>) {
        if let Some(zones) = self.pending.get(&owner).cloned() {
            for addr in &addrs {
                for z in &zones {
                    self.add(*addr, z.clone());
                }
            }
        }
        if self.recent.len() >= RECENT_PER_GENERATION.min(self.limit) {
            self.older = std::mem::take(&mut self.recent);
        }
        self.recent.insert(owner, addrs);
    }

    /// The zones `server` is known to serve.
    pub fn zones_of(&self, server: IpAddr) -> &[Name] {
        self.servers.get(&server).map(Vec::as_slice).unwrap_or_default()
    }

    /// The deepest zone served by `server` that contains `name`.
    pub fn enclosing_zone(&self, server: IpAddr, name: &Name) -> Option<Name> {
        self.servers.get(&server)?.iter().filter(|z| z.zone_of(name)).max_by_key(|z| z.num_labels()).cloned()
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learn_others(m: &mut ZoneMap, n: usize, tag: &str) {
        for i in 0..n {
            m.learn_address(Name::from_ascii(format!("h{i}.{tag}.")).unwrap(), vec!["192.0.2.1".parse().unwrap()]);
        }
    }

    #[test]
    fn answered_addresses_are_remembered_for_a_while_in_bounded_memory() {
        let ns = Name::from_ascii("ns.example.com.").unwrap();
        let zone = Name::from_ascii("glueless.test.").unwrap();
        let addr: IpAddr = "192.0.2.53".parse().unwrap();
        // The address answered, then a generation's worth of other answers, then the
        // referral naming the server: still placed.
        let mut m = ZoneMap::new(1_000_000);
        m.learn_address(ns.clone(), vec![addr]);
        learn_others(&mut m, RECENT_PER_GENERATION, "a");
        m.add_server_name(&ns, &zone);
        assert_eq!(m.zones_of(addr), std::slice::from_ref(&zone));
        // Two generations later it is forgotten, and the memory stays bounded.
        let mut m = ZoneMap::new(1_000_000);
        m.learn_address(ns.clone(), vec![addr]);
        learn_others(&mut m, 2 * RECENT_PER_GENERATION, "b");
        m.add_server_name(&ns, &zone);
        assert!(m.zones_of(addr).is_empty());
        assert!(m.recent.len() + m.older.len() <= 2 * RECENT_PER_GENERATION);
    }
}
