//! Privacy filters of the scrub stage: zones that are never recorded (an organisation's
//! internal zones; special-use names and private reverse zones by default) and rdata pointing
//! into private networks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;

use hickory_proto::rr::{Name, RData};
use thiserror::Error;

use super::extract::address_of;
use super::wire::{Rd, Response};

/// RFC 6761 / RFC 6762 / RFC 8375 / RFC 9476 special-use names and the reverse zones of
/// private, loopback and link-local space: local by nature, never worth sharing. `test.` and
/// `example.` are left out on purpose: they never occur on the Internet and tests use them.
pub const SPECIAL_USE_ZONES: &[&str] = &[
    "localhost.",
    "invalid.",
    "local.",
    "onion.",
    "home.arpa.",
    "internal.",
    "alt.",
    "0.in-addr.arpa.",
    "10.in-addr.arpa.",
    "127.in-addr.arpa.",
    "254.169.in-addr.arpa.",
    "168.192.in-addr.arpa.",
    "16.172.in-addr.arpa.",
    "17.172.in-addr.arpa.",
    "18.172.in-addr.arpa.",
    "19.172.in-addr.arpa.",
    "20.172.in-addr.arpa.",
    "21.172.in-addr.arpa.",
    "22.172.in-addr.arpa.",
    "23.172.in-addr.arpa.",
    "24.172.in-addr.arpa.",
    "25.172.in-addr.arpa.",
    "26.172.in-addr.arpa.",
    "27.172.in-addr.arpa.",
    "28.172.in-addr.arpa.",
    "29.172.in-addr.arpa.",
    "30.172.in-addr.arpa.",
    "31.172.in-addr.arpa.",
    "d.f.ip6.arpa.",
    "8.e.f.ip6.arpa.",
    "9.e.f.ip6.arpa.",
    "a.e.f.ip6.arpa.",
    "b.e.f.ip6.arpa.",
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.",
];

/// Networks whose addresses are private by default: RFC 1918, shared address space, loopback,
/// link-local, unique local and the IPv6 loopback.
pub const PRIVATE_NETWORKS: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "fc00::/7",
    "fe80::/10",
    "::1/128",
];

/// An address prefix, `addr/len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

#[derive(Debug, Error, PartialEq)]
#[error("`{0}` is not an address prefix like 10.0.0.0/8 or fc00::/7")]
pub struct CidrError(pub String);

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let err = || CidrError(s.to_string());
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a.parse::<IpAddr>().map_err(|_| err())?, l.parse::<u8>().map_err(|_| err())?),
            None => {
                let a = s.parse::<IpAddr>().map_err(|_| err())?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(err());
        }
        Ok(Cidr { addr, len })
    }
}

impl Cidr {
    /// Whether `ip` is in the prefix (an IPv4 prefix holds only IPv4 addresses). Compared as
    /// integers under a mask: comparing the addresses' bytes was 4% of the sensor's stages.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let len = u32::from(self.len);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                (u32::from(net) ^ u32::from(ip)).checked_shr(32 - len).unwrap_or(0) == 0
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                (u128::from(net) ^ u128::from(ip)).checked_shr(128 - len).unwrap_or(0) == 0
            }
            _ => false,
        }
    }

    /// The first and last address of the prefix, as 16-byte keys (IPv4 mapped into IPv6).
    pub fn range(&self) -> ([u8; 16], [u8; 16]) {
        let (bytes, len) = match self.addr {
            IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), self.len as u32 + 96),
            IpAddr::V6(a) => (a.octets(), self.len as u32),
        };
        let mut lo = bytes;
        let mut hi = bytes;
        for bit in len..128 {
            let (byte, mask) = ((bit / 8) as usize, 0x80u8 >> (bit % 8));
            lo[byte] &= !mask;
            hi[byte] |= mask;
        }
        (lo, hi)
    }
}

/// Appends one label, lower-cased, after its length.
fn push_label(key: &mut Vec<u8>, label: &[u8]) {
    key.push(label.len() as u8);
    key.extend(label.iter().map(u8::to_ascii_lowercase));
}

/// The scrub stage's filters.
#[derive(Clone, Debug, Default)]
pub struct PrivacyFilter {
    /// The excluded zones and every name above them, each as its labels right to left
    /// (lower case, each label after its length byte); `true` for an excluded zone itself.
    /// A name is looked up one label at a time from the right, and the walk stops at the
    /// first suffix that is neither: for most names after one lookup (`com`), where testing
    /// each of the ~100 default zones cost 13% of the stages (docs/BENCHMARKS.md).
    excluded: HashMap<Vec<u8>, bool>,
    /// The top labels of the excluded zones (`arpa`, `local`, ...), lower case: a name under
    /// any other top-level domain is not excluded, known without hashing anything.
    tops: Vec<Vec<u8>>,
    /// By length (31 for 31 and longer), the first letters of `tops` (a bit each, case
    /// folded): most top labels are ruled out by these two bytes.
    top_first: [u32; 32],
    /// An excluded root: every name is excluded.
    everything: bool,
    private: Vec<Cidr>,
}

impl PrivacyFilter {
    /// `internal` zones are never recorded; with `special_use`, nor are [`SPECIAL_USE_ZONES`].
    /// A/AAAA rdata inside `private` networks drops its RRset.
    pub fn new(internal: &[Name], special_use: bool, private: Vec<Cidr>) -> Self {
        let mut excluded: Vec<Name> = internal.iter().map(|n| n.to_lowercase()).collect();
        if special_use {
            excluded.extend(SPECIAL_USE_ZONES.iter().map(|z| Name::from_ascii(z).expect("valid built-in zone")));
            // Shared address space 100.64.0.0/10 (RFC 6598, RFC 7793).
            excluded
                .extend((64..=127).map(|n| Name::from_ascii(format!("{n}.100.in-addr.arpa.")).expect("valid zone")));
        }
        let mut filter =
            Self { excluded: HashMap::new(), tops: Vec::new(), top_first: [0; 32], everything: false, private };
        for zone in excluded {
            let mut key = Vec::new();
            let labels: Vec<&[u8]> = zone.iter().collect();
            filter.everything |= labels.is_empty();
            if let Some(top) = labels.last().map(|l| l.to_ascii_lowercase())
                && !filter.tops.contains(&top)
            {
                if let Some(&first) = top.first() {
                    filter.top_first[top.len().min(31)] |= 1 << (first & 31);
                }
                filter.tops.push(top);
            }
            for (i, label) in labels.iter().rev().enumerate() {
                push_label(&mut key, label);
                let zone_itself = i + 1 == labels.len();
                let entry = filter.excluded.entry(key.clone()).or_insert(false);
                *entry |= zone_itself;
            }
        }
        filter
    }

    /// Whether a name is in a zone that must not be recorded.
    pub fn excluded_name(&self, name: &Name) -> bool {
        self.excluded_labels(name.iter().rev())
    }

    /// [`Self::excluded_name`] for a name in wire format without compression.
    pub(crate) fn excluded_wire(&self, wire: &[u8]) -> bool {
        if self.everything {
            return true;
        }
        // Most names are known not to be excluded by their top label alone: found first,
        // without keeping where the others start.
        let (mut top, mut p) = (None, 0);
        while let Some(&len) = wire.get(p).filter(|&&len| len != 0) {
            top = Some(p);
            p += 1 + usize::from(len);
        }
        let Some(top) = top.and_then(|at| wire.get(at + 1..at + 1 + usize::from(wire[at]))) else { return false };
        if !self.is_top(top) {
            return false;
        }
        // Where each label starts (a name of at most 255 bytes has at most 127 labels).
        let mut starts = [0u8; 128];
        let mut n = 0;
        let mut p = 0;
        while let Some(&len) = wire.get(p).filter(|&&len| len != 0 && n < starts.len()) {
            starts[n] = p as u8;
            n += 1;
            p += 1 + usize::from(len);
        }
        let label = |i: usize| {
            let at = usize::from(starts[i]);
            wire.get(at + 1..at + 1 + usize::from(wire[at])).unwrap_or_default()
        };
        self.excluded_labels((0..n).rev().map(label))
    }

    /// Whether `label` is the top label of an excluded zone.
    fn is_top(&self, label: &[u8]) -> bool {
        let Some(&first) = label.first() else { return false };
        self.top_first[label.len().min(31)] >> (first & 31) & 1 != 0
            && self.tops.iter().any(|t| t.eq_ignore_ascii_case(label))
    }

    /// The walk of [`Self::excluded_name`], over the labels right to left.
    fn excluded_labels<'a>(&self, mut right_to_left: impl Iterator<Item = &'a [u8]>) -> bool {
        if self.everything {
            return true;
        }
        let Some(top) = right_to_left.next() else { return false };
        if !self.is_top(top) {
            return false;
        }
        let mut key = Vec::with_capacity(256);
        for label in std::iter::once(top).chain(right_to_left) {
            push_label(&mut key, label);
            match self.excluded.get(&key) {
                Some(true) => return true,
                Some(false) => {}
                None => return false,
            }
        }
        false
    }

    /// [`Self::private_rdata`] for the sensor's view of rdata.
    pub(crate) fn private_rd(&self, response: &Response, rd: &Rd) -> bool {
        let excluded = |span| self.excluded_wire(response.bytes(span));
        match *rd {
            Rd::A(_) | Rd::Aaaa(_) => rd.address().is_some_and(|ip| self.private_address(ip)),
            Rd::Name(n) | Rd::Mx(_, n) | Rd::Srv(_, n) => excluded(n),
            Rd::Soa(mname, rname, _) => excluded(mname) || excluded(rname),
            Rd::Txt(_) => false,
            Rd::Other(i) => self.private_rdata(response.other(i)),
        }
    }

    /// Whether an address is in a private network. An IPv4-mapped IPv6 address is the IPv4
    /// address it maps.
    fn private_address(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.private.iter().any(|c| c.contains(ip))
    }

    /// Whether rdata reveals something private: an address in a private network, or a name
    /// (CNAME, NS, PTR, MX, SRV target) inside an excluded zone.
    pub fn private_rdata(&self, data: &RData) -> bool {
        if let Some(ip) = address_of(data) {
            return self.private_address(ip);
        }
        let target = match data {
            RData::CNAME(n) => &n.0,
            RData::NS(n) => &n.0,
            RData::PTR(n) => &n.0,
            RData::MX(mx) => &mx.exchange,
            RData::SRV(srv) => &srv.target,
            RData::SOA(soa) => return self.excluded_name(&soa.mname) || self.excluded_name(&soa.rname),
            _ => return false,
        };
        self.excluded_name(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_contains_and_ranges() {
        let c: Cidr = "172.16.0.0/12".parse().unwrap();
        assert!(c.contains(ip("172.31.255.255")) && !c.contains(ip("172.32.0.0")) && !c.contains(ip("::1")));
        let c: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(c.contains(ip("2001:db8:ffff::1")) && !c.contains(ip("2001:db9::")));
        let (lo, hi) = "192.0.2.0/24".parse::<Cidr>().unwrap().range();
        assert_eq!(IpAddr::from(lo).to_string(), "::ffff:192.0.2.0");
        assert_eq!(IpAddr::from(hi).to_string(), "::ffff:192.0.2.255");
        assert_eq!("192.0.2.7".parse::<Cidr>().unwrap().len, 32);
        for bad in ["10.0.0.0/33", "fc00::/129", "nonsense", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn special_use_and_internal_zones_are_excluded() {
        let f = PrivacyFilter::new(&[Name::from_ascii("Corp.Example.com.").unwrap()], true, vec![]);
        for name in ["printer.corp.example.com.", "1.0.168.192.in-addr.arpa.", "x.localhost.", "mac.local."] {
            assert!(f.excluded_name(&Name::from_ascii(name).unwrap()), "{name}");
        }
        for name in ["www.example.com.", "1.2.0.192.in-addr.arpa.", "www.test.", "1.0.0.100.in-addr.arpa."] {
            assert!(!f.excluded_name(&Name::from_ascii(name).unwrap()), "{name}");
        }
        assert!(f.excluded_name(&Name::from_ascii("1.0.64.100.in-addr.arpa.").unwrap()));
        // Zones themselves, names above them, other names sharing a suffix, upper case.
        for name in ["corp.example.com.", "LOCAL.", "HOME.ARPA.", "x.D.F.ip6.arpa."] {
            assert!(f.excluded_name(&Name::from_ascii(name).unwrap()), "{name}");
        }
        for name in
            ["example.com.", "arpa.", "in-addr.arpa.", "100.in-addr.arpa.", "ip6.arpa.", "xcorp.example.com.", "."]
        {
            assert!(!f.excluded_name(&Name::from_ascii(name).unwrap()), "{name}");
        }
        // The same answers for names in wire format.
        let names =
            ["printer.corp.example.com.", "1.0.168.192.in-addr.arpa.", "x.localhost.", "MAC.Local.", "www.test."];
        let others = ["corp.example.com.", "xcorp.example.com.", "100.in-addr.arpa.", "1.0.64.100.in-addr.arpa.", "."];
        for name in names.into_iter().chain(others) {
            let name = Name::from_ascii(name).unwrap();
            let mut wire = Vec::new();
            for label in name.iter() {
                wire.push(label.len() as u8);
                wire.extend_from_slice(label);
            }
            wire.push(0);
            assert_eq!(f.excluded_wire(&wire), f.excluded_name(&name), "{name}");
        }
        let all = PrivacyFilter::new(&[Name::root()], false, vec![]);
        assert!(all.excluded_name(&Name::from_ascii("www.example.com.").unwrap()) && all.excluded_name(&Name::root()));
        let none = PrivacyFilter::new(&[], false, vec![]);
        assert!(!none.excluded_name(&Name::from_ascii("x.localhost.").unwrap()));
        // Top labels are told apart by more than their length and first letter, and long ones
        // (sharing a slot of the first-letter filter) too.
        let long = "a".repeat(40);
        let f = PrivacyFilter::new(&[Name::from_ascii(format!("corp.{long}.")).unwrap()], true, vec![]);
        for (name, excluded) in [
            ("x.Local.".to_string(), true),
            ("x.locax.".to_string(), false),
            ("x.lOCAX.".to_string(), false),
            (format!("x.corp.{}.", long.to_uppercase()), true),
            (format!("x.corp.{}b.", &long[1..]), false),
            (format!("x.corp.{long}a."), false),
        ] {
            let name = Name::from_ascii(&name).unwrap();
            let mut wire = Vec::new();
            for label in name.iter() {
                wire.push(label.len() as u8);
                wire.extend_from_slice(label);
            }
            wire.push(0);
            assert_eq!((f.excluded_name(&name), f.excluded_wire(&wire)), (excluded, excluded), "{name}");
        }
    }

    #[test]
    fn mapped_addresses_are_checked_as_ipv4() {
        use hickory_proto::rr::rdata::AAAA;
        let f = PrivacyFilter::new(&[], false, vec!["10.0.0.0/8".parse().unwrap()]);
        assert!(f.private_rdata(&RData::AAAA(AAAA("::ffff:10.1.2.3".parse().unwrap()))));
        assert!(!f.private_rdata(&RData::AAAA(AAAA("2001:db8::1".parse().unwrap()))));
    }

    /// `contains` gives what the prefix says bit by bit, at every prefix length, on both sides
    /// of each network's edges.
    #[test]
    fn prefixes_hold_the_addresses_that_share_their_bits() {
        let nets = ["0.0.0.0/0", "10.0.0.0/8", "172.16.0.0/12", "192.168.1.128/25", "10.1.2.3/32", "::/0", "fc00::/7"];
        let nets = nets.iter().map(|n| n.parse::<Cidr>().unwrap());
        let lengths = (0..=32).map(|len| Cidr { addr: "203.0.113.77".parse().unwrap(), len });
        let lengths = lengths.chain((0..=128).map(|len| Cidr { addr: "2001:db8:0:ff::1".parse().unwrap(), len }));
        let probes: Vec<IpAddr> = [
            "10.0.0.0",
            "9.255.255.255",
            "11.0.0.0",
            "172.31.255.255",
            "172.32.0.0",
            "192.168.1.127",
            "192.168.1.200",
            "203.0.113.77",
            "203.0.113.76",
            "203.0.112.77",
            "::",
            "fbff::1",
            "fc00::1",
            "fdff:ffff::",
            "fe00::",
            "2001:db8:0:ff::1",
            "2001:db8:0:ff::",
            "2001:db8:0:fe::1",
            "2001:db8:1:ff::1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let bytes = |a: IpAddr| match a {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let bit = |b: &[u8], i: usize| b[i / 8] >> (7 - i % 8) & 1;
        for cidr in nets.chain(lengths) {
            for &ip in &probes {
                let (net, addr) = (bytes(cidr.addr), bytes(ip));
                let shares =
                    net.len() == addr.len() && (0..usize::from(cidr.len)).all(|i| bit(&net, i) == bit(&addr, i));
                assert_eq!(cidr.contains(ip), shares, "{cidr:?} {ip}");
            }
        }
    }
}
