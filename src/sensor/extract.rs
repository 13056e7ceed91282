//! Stages 1 to 5 of the sensor, over one dnstap event: classify, keep what an authoritative
//! server said, check the bailiwick, scrub, and turn records into canonical RRsets.
//!
//! What leaves this module is an [`Observation`]: owner, type, bailiwick, rdata set and a time
//! in seconds. It has no field that could hold a client or resolver address, a port, a DNS id
//! or an EDNS option, so nothing downstream can leak them. Its owner and bailiwick stay in
//! wire format, lower-cased: the window counts repeats by them as they are, and only the
//! RRsets it hands to the store are written as text (a name in wire format and its
//! presentation text determine each other, so the window counts the same RRsets either way).

use std::collections::HashSet;
use std::net::IpAddr;

use hickory_proto::rr::RData;

use super::filter::PrivacyFilter;
use super::wire::{OPT, Rd, Rec, Response, SIG, Span, TSIG, in_zone, to_name};
use super::zones::ZoneMap;
use crate::dns::push_wire_name;
use crate::dnstap::{MessageType, TapView, parse_dns};
use crate::metrics::Tally;

/// A canonical RRset: owner lower-cased with the trailing dot, type number, bailiwick (the
/// zone whose server said it), rdata in presentation format, sorted, without duplicates.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rrset {
    pub rrname: String,
    pub rrtype: u16,
    pub bailiwick: String,
    pub rdata: Vec<String>,
}

impl Rrset {
    /// The heap memory its strings hold (capacities, not lengths): what keeping it for reuse
    /// costs.
    pub fn heap_bytes(&self) -> usize {
        self.rrname.capacity()
            + self.bailiwick.capacity()
            + self.rdata.capacity() * std::mem::size_of::<String>()
            + self.rdata.iter().map(String::capacity).sum::<usize>()
    }
}

/// An RRset as the stages leave it: [`Rrset`] with its owner and bailiwick in wire format
/// (uncompressed, lower-cased, ending with the root label). Writing names as text was a
/// tenth of the stages' time; the store thread writes those of each distinct RRset of a
/// window instead ([`WireRrset::to_rrset`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WireRrset {
    pub owner: Vec<u8>,
    pub rrtype: u16,
    pub bailiwick: Vec<u8>,
    pub rdata: Vec<String>,
}

impl WireRrset {
    /// The RRset with its names in presentation format.
    pub fn to_rrset(&self) -> Rrset {
        let (mut rrname, mut bailiwick) = (String::new(), String::new());
        push_wire_name(&self.owner, &mut rrname);
        push_wire_name(&self.bailiwick, &mut bailiwick);
        Rrset { rrname, rrtype: self.rrtype, bailiwick, rdata: self.rdata.clone() }
    }

    /// The heap memory it holds (capacities): what keeping it for reuse costs.
    pub fn heap_bytes(&self) -> usize {
        self.owner.capacity()
            + self.bailiwick.capacity()
            + self.rdata.capacity() * std::mem::size_of::<String>()
            + self.rdata.iter().map(String::capacity).sum::<usize>()
    }
}

/// Whether an observation is data or the proof that there is none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Positive,
    /// NXDOMAIN: `rrset` is (qname, qtype, zone, [SOA rdata]).
    NxDomain,
    /// NODATA: the name exists, the type does not; same shape as `NxDomain`.
    NoData,
}

/// One RRset seen once, scrubbed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub kind: Kind,
    pub rrset: WireRrset,
    /// Seconds since the epoch: the response time of the frame.
    pub time: u64,
}

/// Which dnstap messages are turned into RRsets.
#[derive(Clone, Debug, Default)]
pub struct ExtractConfig {
    /// Also take AUTH_RESPONSE (from authoritative servers such as NSD).
    pub auth_responses: bool,
    /// Emit NXDOMAIN / NODATA observations.
    pub negative: bool,
}

/// Why a whole frame contributed nothing; a metrics label.
pub type FrameDrop = &'static str;

/// The stage state: the delegation map used when frames carry no `query_zone`.
pub struct Extractor {
    pub config: ExtractConfig,
    pub filter: PrivacyFilter,
    pub zones: ZoneMap,
    /// Reused from frame to frame: the parsed response, name server names of a referral,
    /// the RRsets of a message.
    response: Response,
    targets: Vec<Span>,
    groups: Vec<Rec>,
    /// Observations handed back ([`Extractor::recycle`]) whose strings are written over
    /// instead of allocated: making each RRset's strings afresh was a tenth of the stages'
    /// instructions (malloc and free). A `Cell` because the stages read the message through
    /// `&self`.
    spare: std::cell::Cell<Vec<Observation>>,
    /// Delegations learned from referrals (zone, server name and the glue taken, in wire
    /// form): a referral seen again teaches nothing, and building its names to find that out
    /// was a tenth of the stages' instructions. Bounded in entries and bytes: emptied when
    /// full.
    learned: HashSet<Box<[u8]>, foldhash::quality::SeedableRandomState>,
    learned_bytes: usize,
    learned_key: Vec<u8>,
}

/// At most this many delegations are remembered as learned ...
const LEARNED_MAX: usize = 16_384;
/// ... in at most this many bytes of keys ...
const LEARNED_BYTES: usize = 2 << 20;
/// ... each at most this long (a referral with more glue for one server, as a hostile one may
/// send, is learned every time instead).
const LEARNED_KEY_MAX: usize = 1024;

/// At most this many spare observations are kept, each of at most `KEEP_RRSET_BYTES` of
/// strings (also the bound on the store thread's reused deltas).
const SPARES: usize = 64;
pub(crate) const KEEP_RRSET_BYTES: usize = 4096;

pub(crate) fn type_label(t: MessageType) -> &'static str {
    match t {
        MessageType::AuthQuery => "auth_query",
        MessageType::AuthResponse => "auth_response",
        MessageType::ResolverQuery => "resolver_query",
        MessageType::ResolverResponse => "resolver_response",
        MessageType::ClientQuery => "client_query",
        MessageType::ClientResponse => "client_response",
        MessageType::ForwarderQuery => "forwarder_query",
        MessageType::ForwarderResponse => "forwarder_response",
        MessageType::StubQuery => "stub_query",
        MessageType::StubResponse => "stub_response",
        MessageType::ToolQuery => "tool_query",
        MessageType::ToolResponse => "tool_response",
        MessageType::UpdateQuery => "update_query",
        MessageType::UpdateResponse => "update_response",
    }
}

impl Extractor {
    pub fn new(config: ExtractConfig, filter: PrivacyFilter, zones: ZoneMap) -> Self {
        Self {
            config,
            filter,
            zones,
            response: Response::default(),
            targets: Vec::new(),
            groups: Vec::new(),
            spare: Default::default(),
            learned: HashSet::with_hasher(super::window::seeded()),
            learned_bytes: 0,
            learned_key: Vec::new(),
        }
    }

    /// Takes back the observations of `used` (emptied) for later frames to write over.
    pub fn recycle(&mut self, used: &mut Vec<Observation>) {
        let spare = self.spare.get_mut();
        for o in used.drain(..) {
            let r = &o.rrset;
            if spare.len() < SPARES && r.heap_bytes() <= KEEP_RRSET_BYTES {
                spare.push(o);
            }
        }
    }

    /// Classifies one event and appends its RRsets to `out`. `Err` names why the whole frame
    /// was dropped; RRsets dropped individually are counted in `drops`.
    pub fn extract(
        &mut self,
        tap: &TapView<'_>,
        out: &mut Vec<Observation>,
        drops: &mut Tally,
    ) -> Result<(), FrameDrop> {
        self.extract_with(tap, out, drops, true)
    }

    /// [`Self::extract`], reading the DNS message with hickory alone unless `fast` (the
    /// tests compare the two).
    pub(crate) fn extract_with(
        &mut self,
        tap: &TapView<'_>,
        out: &mut Vec<Observation>,
        drops: &mut Tally,
        fast: bool,
    ) -> Result<(), FrameDrop> {
        // The view's buffers are reused from frame to frame.
        let mut response = std::mem::take(&mut self.response);
        let result = self.extract_into(&mut response, tap, out, drops, fast);
        self.response = response;
        result
    }

    fn extract_into(
        &mut self,
        msg: &mut Response,
        m: &TapView<'_>,
        out: &mut Vec<Observation>,
        drops: &mut Tally,
        fast: bool,
    ) -> Result<(), FrameDrop> {
        // 1. Classify.
        let wanted = match m.kind {
            MessageType::ResolverResponse => true,
            MessageType::AuthResponse => self.config.auth_responses,
            _ => false,
        };
        if !wanted {
            return Err(type_label(m.kind));
        }
        let wire = m.response_message.ok_or("no_response_message")?;
        if !(fast && msg.parse(wire)) {
            msg.load(&parse_dns(wire).map_err(|_| "dns_malformed")?);
        }
        let time = m.response_time.or(m.query_time).map(|t| t.sec).ok_or("no_time")?;

        // 2. Authoritative data only.
        if !msg.response {
            return Err("not_a_response");
        }
        if msg.opcode != 0 {
            return Err("opcode");
        }
        if msg.truncated {
            return Err("truncated");
        }
        let rcode = msg.rcode;
        match rcode {
            NOERROR | NXDOMAIN => {}
            5 => return Err("rcode_refused"),
            2 => return Err("rcode_servfail"),
            1 => return Err("rcode_formerr"),
            _ => return Err("rcode_other"),
        }
        let referral = !msg.authoritative
            && rcode == NOERROR
            && msg.answers().is_empty()
            && msg.authorities().iter().any(|r| r.rtype == NS);
        if !msg.authoritative && !referral {
            return Err("not_authoritative");
        }

        // 3. Bailiwick: the zone the server answered for.
        let bailiwick = match &m.query_zone {
            Some(zone) => msg.push_wire(zone),
            None => {
                let server = m.response_address.ok_or("no_bailiwick")?;
                let (qname, _) = msg.question.ok_or("no_bailiwick")?;
                let qname = to_name(msg.bytes(qname)).ok_or("no_bailiwick")?;
                let zone = self.zones.enclosing_zone(server, &qname).ok_or("no_bailiwick")?;
                msg.push_name(&zone, true)
            }
        };
        let zone = msg.bytes(bailiwick);
        if self.filter.excluded_wire(zone) {
            return Err("excluded_zone");
        }

        let before = out.len();
        if referral {
            // Delegation data: NS (and DS, signatures) for a child zone from the authority
            // section; from the additional section only glue: addresses of the name servers
            // this referral names, inside the bailiwick.
            self.targets.clear();
            group(msg.authorities().iter(), msg, &mut self.groups);
            for g in 0..self.groups.len() {
                let first = self.groups[g];
                let rtype = first.rtype;
                let owner = msg.bytes(first.owner);
                if owner == zone || !in_zone(zone, owner) {
                    drops.add("out_of_bailiwick");
                    continue;
                }
                let members = || msg.authorities().iter().filter(|r| r.rtype == rtype && msg.bytes(r.owner) == owner);
                if rtype == NS {
                    self.targets.extend(members().filter_map(|r| match r.rdata {
                        Rd::Name(target) => Some(target),
                        _ => None,
                    }));
                }
                self.push(msg, Kind::Positive, first.owner, rtype, zone, members(), time, out, drops);
            }
            group(msg.additionals().iter(), msg, &mut self.groups);
            for g in 0..self.groups.len() {
                let first = self.groups[g];
                let rtype = first.rtype;
                let owner = msg.bytes(first.owner);
                let glue = rtype == A || rtype == AAAA;
                if !glue || !self.targets.iter().any(|t| msg.bytes(*t).eq_ignore_ascii_case(owner)) {
                    drops.add("referral_additional");
                    continue;
                }
                if owner == zone || !in_zone(zone, owner) {
                    drops.add("out_of_bailiwick");
                    continue;
                }
                let members = msg.additionals().iter().filter(|r| r.rtype == rtype && msg.bytes(r.owner) == owner);
                self.push(msg, Kind::Positive, first.owner, rtype, zone, members, time, out, drops);
            }
            self.learn_delegations(msg, zone);
            return Ok(());
        }

        // AA=1: every section, each RRset at or below the bailiwick.
        let answers = msg.answers().len();
        let negative = answers == 0 || rcode == NXDOMAIN;
        // The authority SOA belongs to the negative answer, not to the positive data.
        let sections: [&[Rec]; 3] = if negative {
            [msg.answers(), &[], msg.additionals()]
        } else {
            [msg.answers(), msg.authorities(), msg.additionals()]
        };
        let records = || sections.iter().flat_map(|s| s.iter());
        group(records(), msg, &mut self.groups);
        for g in 0..self.groups.len() {
            let first = self.groups[g];
            let rtype = first.rtype;
            let owner = msg.bytes(first.owner);
            if !in_zone(zone, owner) {
                drops.add("out_of_bailiwick");
                continue;
            }
            let members = records().filter(|r| r.rtype == rtype && msg.bytes(r.owner) == owner);
            self.push(msg, Kind::Positive, first.owner, rtype, zone, members, time, out, drops);
        }
        if negative
            && answers == 0
            && let Some((qname, qtype)) = msg.question
        {
            let soa = msg.authorities().iter().filter(|r| r.rtype == SOA && in_zone(zone, msg.bytes(r.owner)));
            if !in_zone(zone, msg.bytes(qname)) {
                drops.add("out_of_bailiwick");
            } else if self.config.negative {
                let kind = if rcode == NXDOMAIN { Kind::NxDomain } else { Kind::NoData };
                self.push(msg, kind, qname, qtype, zone, soa, time, out, drops);
            } else {
                drops.add("negative");
            }
        }
        if m.query_zone.is_none() && out.len() > before {
            // Only needed where bailiwicks are reconstructed: accepted answers for name server
            // names complete glueless delegations.
            self.zones.learn_addresses(&out[before..]);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn push<'r>(
        &self,
        msg: &Response,
        kind: Kind,
        owner: Span,
        rtype: u16,
        bailiwick: &[u8],
        records: impl Iterator<Item = &'r Rec>,
        time: u64,
        out: &mut Vec<Observation>,
        drops: &mut Tally,
    ) {
        let owner = msg.bytes(owner);
        if self.filter.excluded_wire(owner) {
            drops.add("excluded_zone");
            return;
        }
        let mut spare = self.spare.take();
        let mut o = spare.pop().unwrap_or_else(|| Observation {
            kind,
            rrset: WireRrset { owner: Vec::new(), rrtype: 0, bailiwick: Vec::new(), rdata: Vec::new() },
            time,
        });
        let r = &mut o.rrset;
        let mut n = 0;
        for rec in records {
            let dropped = if rec.class != IN {
                Some("class_not_in")
            } else if self.filter.private_rd(msg, &rec.rdata) {
                Some("private_rdata")
            } else {
                None
            };
            if let Some(reason) = dropped {
                drops.add(reason);
                spare.push(o);
                self.spare.set(spare);
                return;
            }
            match r.rdata.get_mut(n) {
                Some(text) => text.clear(),
                None => r.rdata.push(String::new()),
            }
            msg.rdata_text_into(&rec.rdata, &mut r.rdata[n]);
            n += 1;
        }
        self.spare.set(spare);
        r.rdata.truncate(n);
        r.rdata.sort_unstable();
        r.rdata.dedup();
        r.owner.clear();
        r.owner.extend_from_slice(owner);
        r.bailiwick.clear();
        r.bailiwick.extend_from_slice(bailiwick);
        r.rrtype = rtype;
        (o.kind, o.time) = (kind, time);
        out.push(o);
    }

    /// From an accepted referral: child zone -> its name servers, and glue addresses -> zone.
    /// A delegation already learned in full is skipped: learning it again changes nothing
    /// (the maps only grow, and addresses answered for a server name since are mapped by
    /// `ZoneMap::learn_address`), so one that hit a bound (`zones.full`) is not remembered.
    /// The one difference: `zones.full` (not exported) no longer counts again an address that
    /// `learn_address` could not map for a delegation learned before.
    fn learn_delegations(&mut self, msg: &Response, bailiwick: &[u8]) {
        for ns in msg.authorities().iter().filter(|r| r.rtype == NS) {
            let zone = msg.bytes(ns.owner);
            if zone == bailiwick || !in_zone(bailiwick, zone) {
                continue;
            }
            let Rd::Name(target) = ns.rdata else { continue };
            let target = msg.bytes(target);
            // Only glue inside the bailiwick, as stored.
            let glue = in_zone(bailiwick, target);
            let key = &mut self.learned_key;
            key.clear();
            key.extend_from_slice(zone);
            key.extend(target.iter().map(u8::to_ascii_lowercase));
            if glue {
                for g in msg.additionals().iter().filter(|r| msg.bytes(r.owner).eq_ignore_ascii_case(target)) {
                    // Tagged with their family: four IPv4 addresses are not one IPv6 address.
                    match g.rdata.address() {
                        Some(IpAddr::V4(a)) => key.extend([4].iter().chain(&a.octets())),
                        Some(IpAddr::V6(a)) => key.extend([6].iter().chain(&a.octets())),
                        None => {}
                    }
                }
            }
            if self.learned.contains(key.as_slice()) {
                continue;
            }
            let (Some(zone_name), Some(target_name)) = (to_name(zone), to_name(target)) else { continue };
            let full = self.zones.full;
            let target_name = target_name.to_lowercase();
            self.zones.add_server_name(&target_name, &zone_name);
            if glue {
                for g in msg.additionals().iter().filter(|r| msg.bytes(r.owner).eq_ignore_ascii_case(target)) {
                    if let Some(addr) = g.rdata.address() {
                        self.zones.add(addr, zone_name.clone());
                    }
                }
            }
            let n = self.learned_key.len();
            if self.zones.full == full && n <= LEARNED_KEY_MAX {
                if self.learned.len() >= LEARNED_MAX || self.learned_bytes + n > LEARNED_BYTES {
                    self.learned.clear();
                    self.learned_bytes = 0;
                }
                self.learned.insert(self.learned_key.as_slice().into());
                self.learned_bytes += n;
            }
        }
    }
}

const A: u16 = 1;
const NS: u16 = 2;
const SOA: u16 = 6;
const AAAA: u16 = 28;
const IN: u16 = 1;
const NOERROR: u16 = 0;
const NXDOMAIN: u16 = 3;

/// The RRsets among `records`: the first record of each distinct (owner, type), in
/// first-seen order, into `groups`. OPT, TSIG and SIG(0) are transport, not data, and are left
/// out. A message holds a handful of RRsets, so a linear search beats building a hash map for
/// every frame. Owners are lower-cased already.
fn group<'a>(records: impl Iterator<Item = &'a Rec>, msg: &Response, groups: &mut Vec<Rec>) {
    groups.clear();
    for r in records {
        if matches!(r.rtype, OPT | TSIG | SIG) {
            continue;
        }
        let owner = msg.bytes(r.owner);
        if !groups.iter().any(|g| g.rtype == r.rtype && msg.bytes(g.owner) == owner) {
            groups.push(*r);
        }
    }
}

pub(crate) fn address_of(data: &RData) -> Option<IpAddr> {
    match data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use bytes::Bytes;
    use hickory_proto::rr::Name;

    use super::*;
    use crate::dnstap::{DnstapEvent, DnstapMessage, MessageType, SocketFamily, SocketProtocol, Timestamp, encode};

    fn wire_name(labels: &[&str]) -> Vec<u8> {
        let mut v = Vec::new();
        for l in labels {
            v.push(l.len() as u8);
            v.extend_from_slice(l.as_bytes());
        }
        v.push(0);
        v
    }

    fn rr(owner: &[u8], rtype: u16, rdata: &[u8]) -> Vec<u8> {
        let mut m = owner.to_vec();
        m.extend_from_slice(&rtype.to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 0, 0x0e, 0x10]);
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(rdata);
        m
    }

    /// A referral from a `test.` server: `zones` child zones `zN.test.`, all at `NS.test.`,
    /// with `copies` copies of `glue` for it.
    fn referral(first_zone: usize, zones: usize, ns: &str, glue: [u8; 4], copies: usize) -> Bytes {
        referral_padded(first_zone, zones, ns, glue, copies, 0)
    }

    /// [`referral`] with `pad` more labels of 60 bytes in each child zone's name.
    fn referral_padded(first_zone: usize, zones: usize, ns: &str, glue: [u8; 4], copies: usize, pad: usize) -> Bytes {
        let ns = wire_name(&[ns, "test"]);
        let mut m = vec![0x12, 0x34, 0x80, 0x00, 0, 1, 0, 0];
        m.extend_from_slice(&(zones as u16).to_be_bytes());
        m.extend_from_slice(&(copies as u16).to_be_bytes());
        m.extend(wire_name(&["www", "z0", "test"]));
        m.extend_from_slice(&[0, 1, 0, 1]);
        for z in first_zone..first_zone + zones {
            let (first, filler) = (format!("z{z}"), "x".repeat(60));
            let labels: Vec<&str> = std::iter::once(first.as_str())
                .chain(std::iter::repeat_n(filler.as_str(), pad))
                .chain(["test"])
                .collect();
            m.extend(rr(&wire_name(&labels), 2, &ns));
        }
        for _ in 0..copies {
            m.extend(rr(&ns, 1, &glue));
        }
        resolver_response(m, "test.")
    }

    /// A RESOLVER_RESPONSE frame of DNS message `m` from the `test.` server 192.0.2.53, with
    /// `zone` as its `query_zone`.
    fn resolver_response(m: Vec<u8>, zone: &str) -> Bytes {
        let t = Timestamp { sec: 1_767_225_600, nsec: 0 };
        let message = DnstapMessage {
            kind: MessageType::ResolverResponse,
            socket_family: Some(SocketFamily::Inet),
            socket_protocol: Some(SocketProtocol::Udp),
            query_address: None,
            response_address: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53))),
            query_port: None,
            response_port: Some(53),
            query_time: Some(t),
            response_time: Some(t),
            query_zone: Some(Name::from_ascii(zone).unwrap()),
            query_message: None,
            response_message: Some(Bytes::from(m)),
        };
        Bytes::from(encode(&DnstapEvent { identity: None, version: None, message }))
    }

    /// An extractor with no privacy filter and a zone map of at most `servers`.
    fn extractor(servers: usize) -> Extractor {
        Extractor::new(
            ExtractConfig { auth_responses: false, negative: false },
            PrivacyFilter::new(&[], false, Vec::new()),
            ZoneMap::new(servers),
        )
    }

    /// An authoritative answer for `www.zN.test.` from `zN.Test.` (its `query_zone`).
    fn answer(zone: usize) -> Bytes {
        let owner = wire_name(&["wWw", &format!("Z{zone}"), "tEst"]);
        let mut m = vec![0x12, 0x34, 0x84, 0x00, 0, 1, 0, 1, 0, 0, 0, 0];
        m.extend_from_slice(&owner);
        m.extend_from_slice(&[0, 1, 0, 1]);
        m.extend(rr(&owner, 1, &[192, 0, 2, 1]));
        resolver_response(m, &format!("z{zone}.Test."))
    }

    /// Each frame's RRsets get its own bailiwick and owner, lower-cased, in wire format, also
    /// when the observations they are written into held other (longer, shorter) names.
    #[test]
    fn owners_and_bailiwicks_are_each_frames_own_and_lower_cased() {
        let mut x = extractor(1_000);
        let mut out = Vec::new();
        for zone in (0..600).chain([5, 100_000, 7, 12_345_678, 3]) {
            let frame = answer(zone);
            let tap = crate::dnstap::view(&frame).unwrap().unwrap();
            x.recycle(&mut out);
            x.extract(&tap, &mut out, &mut Tally::default()).unwrap();
            let text = format!("z{zone}");
            let (owner, bailiwick) = (wire_name(&["www", &text, "test"]), wire_name(&[&text, "test"]));
            let got: Vec<(&[u8], &[u8])> = out.iter().map(|o| (&o.rrset.owner[..], &o.rrset.bailiwick[..])).collect();
            assert_eq!(got, [(&owner[..], &bailiwick[..])]);
            let r = out[0].rrset.to_rrset();
            assert_eq!((r.rrname, r.bailiwick), (format!("www.z{zone}.test."), format!("z{zone}.test.")));
        }
    }

    fn learn(x: &mut Extractor, frame: &Bytes) {
        let tap = crate::dnstap::view(frame).unwrap().unwrap();
        x.extract(&tap, &mut Vec::new(), &mut Tally::default()).unwrap();
    }

    /// What is remembered of learned referrals stays within its bounds: a referral whose
    /// glue makes a long key (as a hostile server may send) is not remembered, and many small
    /// ones are forgotten in bulk once the entries or bytes run out. Each is still learned.
    #[test]
    fn learned_referrals_stay_within_their_bounds() {
        let mut x = extractor(1_000_000);
        // 250 copies of the glue: keys of about 1,270 bytes each, past LEARNED_KEY_MAX.
        for i in 0..20u8 {
            learn(&mut x, &referral(0, 2, "ns", [198, 51, 100, i], 250));
        }
        assert!(x.learned.is_empty(), "{} remembered", x.learned.len());
        assert_eq!(x.zones.zones_of(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 19))).len(), 2);
        // 40,000 small delegations, 20 per server (within the zone map's bounds): the set
        // fills to its entries' bound, is emptied and fills again; then 40,000 with long zone
        // names: to its bytes' bound.
        for pad in [0, 2] {
            x.learned.clear();
            x.learned_bytes = 0;
            let (mut most, mut most_bytes) = (0, 0);
            for i in 0..2_000 {
                let glue = [203, pad as u8, (i >> 8) as u8, i as u8];
                learn(&mut x, &referral_padded(i * 20, 20, &format!("ns{i}-{pad}"), glue, 1, pad));
                assert!(x.learned.len() <= LEARNED_MAX && x.learned_bytes <= LEARNED_BYTES);
                assert_eq!(x.learned_bytes, x.learned.iter().map(|k| k.len()).sum::<usize>());
                (most, most_bytes) = (most.max(x.learned.len()), most_bytes.max(x.learned_bytes));
            }
            if pad == 0 {
                assert!(most > LEARNED_MAX - 20, "{most}");
            } else {
                assert!(most_bytes > LEARNED_BYTES - 20 * 200 && most < LEARNED_MAX, "{most} {most_bytes}");
            }
            assert!(x.learned.len() < most, "emptied when full");
            // Every delegation learned, remembered or not.
            assert_eq!(x.zones.zones_of(IpAddr::V4(Ipv4Addr::new(203, pad as u8, 7, 207))).len(), 20);
        }
    }
}
