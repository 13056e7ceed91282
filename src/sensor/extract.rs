//! Stages 1 to 5 of the sensor, over one dnstap event: classify, keep what an authoritative
//! server said, check the bailiwick, scrub, and turn records into canonical RRsets.
//!
//! What leaves this module is an [`Observation`]: owner, type, bailiwick, rdata set and a time
//! in seconds. It has no field that could hold a client or resolver address, a port, a DNS id
//! or an EDNS option, so nothing downstream can leak them.

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType as DnsMessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::filter::PrivacyFilter;
use super::zones::ZoneMap;
use crate::dns::{name_text, rdata_text};
use crate::dnstap::{DnstapEvent, MessageType, parse_dns};
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
    pub rrset: Rrset,
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
}

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
        Self { config, filter, zones }
    }

    /// Classifies one event and appends its RRsets to `out`. `Err` names why the whole frame
    /// was dropped; RRsets dropped individually are counted in `drops`.
    pub fn extract(
        &mut self,
        ev: &DnstapEvent,
        out: &mut Vec<Observation>,
        drops: &mut Tally,
    ) -> Result<(), FrameDrop> {
        let m = &ev.message;
        // 1. Classify.
        let wanted = match m.kind {
            MessageType::ResolverResponse => true,
            MessageType::AuthResponse => self.config.auth_responses,
            _ => false,
        };
        if !wanted {
            return Err(type_label(m.kind));
        }
        let wire = m.response_message.as_ref().ok_or("no_response_message")?;
        let msg = parse_dns(wire).map_err(|_| "dns_malformed")?;
        let time = m.response_time.or(m.query_time).map(|t| t.sec).ok_or("no_time")?;

        // 2. Authoritative data only.
        let h = &msg.metadata;
        if h.message_type != DnsMessageType::Response {
            return Err("not_a_response");
        }
        if h.op_code != OpCode::Query {
            return Err("opcode");
        }
        if h.truncation {
            return Err("truncated");
        }
        let rcode = h.response_code;
        match rcode {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            ResponseCode::Refused => return Err("rcode_refused"),
            ResponseCode::ServFail => return Err("rcode_servfail"),
            ResponseCode::FormErr => return Err("rcode_formerr"),
            _ => return Err("rcode_other"),
        }
        let question = msg.queries.first();
        let referral = !h.authoritative
            && rcode == ResponseCode::NoError
            && msg.answers.is_empty()
            && msg.authorities.iter().any(|r| r.record_type() == RecordType::NS);
        if !h.authoritative && !referral {
            return Err("not_authoritative");
        }

        // 3. Bailiwick: the zone the server answered for.
        let bailiwick = match &m.query_zone {
            Some(zone) => zone.to_lowercase(),
            None => {
                let server = m.response_address.ok_or("no_bailiwick")?;
                let qname = question.map(|q| q.name()).ok_or("no_bailiwick")?;
                self.zones.enclosing_zone(server, qname).ok_or("no_bailiwick")?
            }
        };
        if self.filter.excluded_name(&bailiwick) {
            return Err("excluded_zone");
        }
        let bailiwick_text = name_text(&bailiwick);

        let before = out.len();
        if referral {
            // Delegation data: NS (and DS, signatures) for a child zone from the authority
            // section; from the additional section only glue: addresses of the name servers
            // this referral names, inside the bailiwick.
            let mut targets: Vec<Name> = Vec::new();
            for ((owner, rtype), records) in group(msg.authorities.iter()) {
                if owner == bailiwick || !bailiwick.zone_of(&owner) {
                    drops.add("out_of_bailiwick");
                    continue;
                }
                if rtype == RecordType::NS {
                    targets.extend(records.iter().filter_map(|r| match &r.data {
                        RData::NS(t) => Some(t.0.to_lowercase()),
                        _ => None,
                    }));
                }
                self.push(Kind::Positive, &owner, rtype, &bailiwick_text, &records, time, out, drops);
            }
            for ((owner, rtype), records) in group(msg.additionals.iter()) {
                if !matches!(rtype, RecordType::A | RecordType::AAAA) || !targets.contains(&owner) {
                    drops.add("referral_additional");
                    continue;
                }
                if owner == bailiwick || !bailiwick.zone_of(&owner) {
                    drops.add("out_of_bailiwick");
                    continue;
                }
                self.push(Kind::Positive, &owner, rtype, &bailiwick_text, &records, time, out, drops);
            }
            self.learn_delegations(&msg, &bailiwick);
            return Ok(());
        }

        // AA=1: every section, each RRset at or below the bailiwick.
        let negative = msg.answers.is_empty() || rcode == ResponseCode::NXDomain;
        let sections: Vec<&Record> = if negative {
            // The authority SOA belongs to the negative answer, not to the positive data.
            msg.answers.iter().chain(msg.additionals.iter()).collect()
        } else {
            msg.answers.iter().chain(msg.authorities.iter()).chain(msg.additionals.iter()).collect()
        };
        for ((owner, rtype), records) in group(sections.into_iter()) {
            if !bailiwick.zone_of(&owner) {
                drops.add("out_of_bailiwick");
                continue;
            }
            self.push(Kind::Positive, &owner, rtype, &bailiwick_text, &records, time, out, drops);
        }
        if negative
            && msg.answers.is_empty()
            && let Some(q) = question
        {
            let owner = q.name().to_lowercase();
            let soa: Vec<&Record> = msg
                .authorities
                .iter()
                .filter(|r| r.record_type() == RecordType::SOA && bailiwick.zone_of(&r.name.to_lowercase()))
                .collect();
            if !bailiwick.zone_of(&owner) {
                drops.add("out_of_bailiwick");
            } else if self.config.negative {
                let kind = if rcode == ResponseCode::NXDomain { Kind::NxDomain } else { Kind::NoData };
                self.push(kind, &owner, q.query_type(), &bailiwick_text, &soa, time, out, drops);
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
    fn push(
        &self,
        kind: Kind,
        owner: &Name,
        rtype: RecordType,
        bailiwick: &str,
        records: &[&Record],
        time: u64,
        out: &mut Vec<Observation>,
        drops: &mut Tally,
    ) {
        let rrname = name_text(owner);
        if self.filter.excluded_name(owner) {
            drops.add("excluded_zone");
            return;
        }
        let mut rdata = Vec::with_capacity(records.len());
        for r in records {
            if r.dns_class != DNSClass::IN {
                drops.add("class_not_in");
                return;
            }
            if self.filter.private_rdata(&r.data) {
                drops.add("private_rdata");
                return;
            }
            rdata.push(rdata_text(&r.data));
        }
        rdata.sort_unstable();
        rdata.dedup();
        let rrset = Rrset { rrname, rrtype: u16::from(rtype), bailiwick: bailiwick.to_string(), rdata };
        out.push(Observation { kind, rrset, time });
    }

    /// From an accepted referral: child zone -> its name servers, and glue addresses -> zone.
    fn learn_delegations(&mut self, msg: &Message, bailiwick: &Name) {
        for ns in msg.authorities.iter().filter(|r| r.record_type() == RecordType::NS) {
            let zone = ns.name.to_lowercase();
            if zone == *bailiwick || !bailiwick.zone_of(&zone) {
                continue;
            }
            let RData::NS(target) = &ns.data else { continue };
            let target = target.0.to_lowercase();
            self.zones.add_server_name(&target, &zone);
            // Only glue inside the bailiwick, as stored.
            if !bailiwick.zone_of(&target) {
                continue;
            }
            // `Name`'s equality ignores case: no lower-cased copy per additional record.
            for glue in msg.additionals.iter().filter(|r| r.name == target) {
                if let Some(addr) = address_of(&glue.data) {
                    self.zones.add(addr, zone.clone());
                }
            }
        }
    }
}

/// Groups records into RRsets by (lower-cased owner, type), keeping first-seen order. OPT,
/// TSIG and SIG(0) are transport, not data, and are left out. A message holds a handful of
/// RRsets, so a linear search beats building a hash map for every frame.
fn group<'a>(records: impl Iterator<Item = &'a Record>) -> Vec<((Name, RecordType), Vec<&'a Record>)> {
    let mut sets: Vec<((Name, RecordType), Vec<&'a Record>)> = Vec::new();
    for r in records {
        let rtype = r.record_type();
        if matches!(rtype, RecordType::OPT | RecordType::TSIG | RecordType::SIG) {
            continue;
        }
        // `Name`'s equality ignores case: the lower-cased copy is made once per RRset.
        match sets.iter_mut().find(|((name, t), _)| *t == rtype && *name == r.name) {
            Some((_, set)) => set.push(r),
            None => sets.push(((r.name.to_lowercase(), rtype), vec![r])),
        }
    }
    sets
}

pub(crate) fn address_of(data: &RData) -> Option<IpAddr> {
    match data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}
