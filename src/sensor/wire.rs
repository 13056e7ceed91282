//! The sensor's view of a DNS response: header flags, the question, and every record with its
//! owner lower-cased and its rdata in a form the stages can test and print.
//!
//! Two ways fill it. [`Response::parse`] reads the common case straight from the wire into
//! reused buffers: no allocation per record, owners lower-cased as they are copied out of the
//! compression. Anything it is not sure of (another opcode, a class other than IN, SIG or TSIG,
//! EDNS with an extended RCODE, a name or rdata hickory would refuse, ...) makes it give up,
//! and [`Response::load`] fills the same view from hickory-proto's `Message`. The fast read
//! accepts nothing hickory refuses and gives the same view of what both accept; the tests
//! check that on the captures, on generated traffic and on mutated messages. Rdata of types it
//! does not read itself is read by hickory's own `RData::read`, in place.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, Restrict};

use crate::dns::{push_ipv4, push_ipv6, push_wire_name, quoted, rdata_text};

/// Bytes in [`Response`]'s arena: a name in wire format without compression (ending with the
/// root label), or TXT rdata as on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    start: u32,
    len: u32,
}

/// Rdata as the stages use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rd {
    A([u8; 4]),
    Aaaa([u8; 16]),
    /// NS, CNAME, PTR: a name, letter case as sent.
    Name(Span),
    Mx(u16, Span),
    /// Priority, weight, port, target.
    Srv([u16; 3], Span),
    /// MNAME, RNAME, then serial, refresh, retry, expire, minimum.
    Soa(Span, Span, [u32; 5]),
    /// The character-strings as on the wire, each after its length byte.
    Txt(Span),
    /// Any other type, read by hickory: an index into [`Response::other`].
    Other(u32),
}

/// One record of the answer, authority or additional section. OPT is never kept; SIG(0)
/// and TSIG make the fast read give up, and hickory keeps SIG records in the additional
/// section (the stages leave them out when grouping RRsets).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rec {
    /// Lower-cased.
    pub owner: Span,
    pub rtype: u16,
    pub class: u16,
    pub rdata: Rd,
}

/// What the reused buffers may keep from one message to the next.
const KEEP_BYTES: usize = 1 << 20;
const KEEP_RECORDS: usize = 4_096;

pub(crate) const OPT: u16 = 41;
pub(crate) const SIG: u16 = 24;
pub(crate) const TSIG: u16 = 250;

/// A DNS response in the sensor's terms; the buffers are kept from one message to the next.
#[derive(Debug, Default)]
pub(crate) struct Response {
    pub response: bool,
    pub opcode: u8,
    pub authoritative: bool,
    pub truncated: bool,
    /// With EDNS's upper bits.
    pub rcode: u16,
    /// The first question's name (lower-cased) and type.
    pub question: Option<(Span, u16)>,
    records: Vec<Rec>,
    answers: usize,
    authorities: usize,
    bytes: Vec<u8>,
    other: Vec<RData>,
}

impl Response {
    fn clear(&mut self) {
        self.question = None;
        self.answers = 0;
        self.authorities = 0;
        // A hostile message (65,535 records, each name a pointer to 255 bytes) can grow the
        // buffers to tens of MB: they are kept for the next message only up to a bound.
        let records = self.records.capacity().max(self.other.capacity());
        if self.bytes.capacity() > KEEP_BYTES || records > KEEP_RECORDS {
            *self = Self::default();
        }
        self.records.clear();
        self.bytes.clear();
        self.other.clear();
    }

    pub fn answers(&self) -> &[Rec] {
        &self.records[..self.answers]
    }

    pub fn authorities(&self) -> &[Rec] {
        &self.records[self.answers..self.answers + self.authorities]
    }

    pub fn additionals(&self) -> &[Rec] {
        &self.records[self.answers + self.authorities..]
    }

    /// The bytes of a name or TXT rdata.
    pub fn bytes(&self, span: Span) -> &[u8] {
        &self.bytes[span.start as usize..(span.start + span.len) as usize]
    }

    /// Rdata that hickory read.
    pub fn other(&self, index: u32) -> &RData {
        &self.other[index as usize]
    }

    /// Reads `msg` without hickory; `false` if anything in it is outside the common case, and
    /// then the view is to be filled by [`Response::load`].
    pub fn parse(&mut self, msg: &[u8]) -> bool {
        self.clear();
        self.parse_inner(msg).is_some()
    }

    fn parse_inner(&mut self, msg: &[u8]) -> Option<()> {
        let header = msg.get(..12)?;
        let flags = u16::from_be_bytes([header[2], header[3]]);
        self.response = flags & 0x8000 != 0;
        self.opcode = ((flags >> 11) & 0xf) as u8;
        self.authoritative = flags & 0x0400 != 0;
        self.truncated = flags & 0x0200 != 0;
        self.rcode = flags & 0xf;
        if !self.response || self.opcode != 0 {
            return None;
        }
        let count = |i: usize| usize::from(u16::from_be_bytes([header[4 + 2 * i], header[5 + 2 * i]]));
        let mut pos = 12;
        for i in 0..count(0) {
            let (name, next) = self.name(msg, pos, true)?;
            let qtype = u16::from_be_bytes(msg.get(next..next + 2)?.try_into().ok()?);
            msg.get(next + 2..next + 4)?;
            if i == 0 {
                self.question = Some((name, qtype));
            }
            pos = next + 4;
        }
        let mut edns = false;
        for section in 0..3 {
            for _ in 0..count(section + 1) {
                pos = self.record(msg, pos, section, &mut edns)?;
            }
            match section {
                0 => self.answers = self.records.len(),
                1 => self.authorities = self.records.len() - self.answers,
                _ => {}
            }
        }
        Some(())
    }

    /// Reads the record at `pos` of section `section` (0 answer, 1 authority, 2 additional);
    /// the position after it.
    fn record(&mut self, msg: &[u8], pos: usize, section: usize, edns: &mut bool) -> Option<usize> {
        let (owner, p) = self.name(msg, pos, true)?;
        let fixed = msg.get(p..p + 10)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let class = u16::from_be_bytes([fixed[2], fixed[3]]);
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let (start, end) = (p + 10, p + 10 + len);
        let rdata = msg.get(start..end)?;
        if rtype == OPT {
            // One EDNS record, owned by the root, in the additional section; its options are
            // checked as hickory checks them. An extended RCODE is left to hickory.
            if section != 2 || *edns || owner.len != 1 || ttl >> 24 != 0 {
                return None;
            }
            *edns = true;
            if len > 0 {
                let mut d = BinDecoder::new(msg);
                d.read_slice(start).ok()?;
                RData::read(&mut d, RecordType::OPT, Restrict::new(len as u16)).ok()?;
            }
            return Some(end);
        }
        // Empty rdata (an UPDATE form) and classes other than IN are hickory's to judge.
        if rtype == SIG || rtype == TSIG || class != 1 || len == 0 {
            return None;
        }
        let be16 = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]);
        let rd = match rtype {
            1 => Rd::A(rdata.try_into().ok()?),
            28 => Rd::Aaaa(rdata.try_into().ok()?),
            2 | 5 | 12 => Rd::Name(self.name_in(msg, start, end)?),
            15 if len > 2 => Rd::Mx(be16(start), self.name_in(msg, start + 2, end)?),
            33 if len > 6 => {
                Rd::Srv([be16(start), be16(start + 2), be16(start + 4)], self.name_in(msg, start + 6, end)?)
            }
            6 => {
                let (mname, p) = self.name(msg, start, false)?;
                let (rname, p) = self.name(msg, p, false)?;
                if p + 20 != end {
                    return None;
                }
                let n = |i: usize| u32::from_be_bytes(msg[p + 4 * i..p + 4 * i + 4].try_into().expect("4 bytes"));
                Rd::Soa(mname, rname, [n(0), n(1), n(2), n(3), n(4)])
            }
            16 => {
                // Character-strings that fill the rdata exactly.
                let mut q = 0;
                while q < len {
                    q += 1 + usize::from(rdata[q]);
                }
                if q != len {
                    return None;
                }
                Rd::Txt(self.copy(rdata))
            }
            _ => {
                let mut d = BinDecoder::new(msg);
                d.read_slice(start).ok()?;
                let data = RData::read(&mut d, RecordType::from(rtype), Restrict::new(len as u16)).ok()?;
                self.other.push(data);
                Rd::Other(self.other.len() as u32 - 1)
            }
        };
        self.records.push(Rec { owner, rtype, class, rdata: rd });
        Some(end)
    }

    /// A name that must fill `msg[start..end]` exactly (compression allowed).
    fn name_in(&mut self, msg: &[u8], start: usize, end: usize) -> Option<Span> {
        let (name, next) = self.name(msg, start, false)?;
        (next == end).then_some(name)
    }

    fn copy(&mut self, bytes: &[u8]) -> Span {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(bytes);
        Span { start, len: bytes.len() as u32 }
    }

    /// Reads the name at `pos` into the arena, lower-cased if `lower`; the position after it.
    /// Hickory's rules: labels of at most 63 bytes, at most 255 bytes in all, and every
    /// compression pointer to a place before the labels that led to it (so no loops), the
    /// labels it reaches lying before them too.
    fn name(&mut self, msg: &[u8], pos: usize, lower: bool) -> Option<(Span, usize)> {
        // An owner name is nearly always a pointer to the question's name, read already
        // (lower-cased, at 12): its span again. Read through the pointer, it would be the same
        // name under the same rules (the question lies before any record).
        if lower
            && let Some((question, _)) = self.question
            && msg.get(pos..pos + 2) == Some(&[0xc0, 12])
        {
            return Some((question, pos + 2));
        }
        let start = self.bytes.len();
        let (mut p, mut labels_start, mut limit, mut after) = (pos, pos, usize::MAX, None);
        let mut total = 1;
        let ok = loop {
            if p >= limit {
                break false;
            }
            let Some(&b) = msg.get(p) else { break false };
            match b & 0xc0 {
                0 if b == 0 => {
                    p += 1;
                    break true;
                }
                0 => {
                    let len = usize::from(b);
                    let Some(label) = msg.get(p + 1..p + 1 + len) else { break false };
                    total += len + 1;
                    if total > 255 {
                        break false;
                    }
                    self.bytes.push(b);
                    if lower {
                        self.bytes.extend(label.iter().map(u8::to_ascii_lowercase));
                    } else {
                        self.bytes.extend_from_slice(label);
                    }
                    p += 1 + len;
                }
                0xc0 => {
                    let Some(&low) = msg.get(p + 1) else { break false };
                    let target = usize::from(u16::from_be_bytes([b & 0x3f, low]));
                    if target >= labels_start {
                        break false;
                    }
                    after.get_or_insert(p + 2);
                    limit = labels_start;
                    labels_start = target;
                    p = target;
                }
                _ => break false,
            }
        };
        if !ok {
            self.bytes.truncate(start);
            return None;
        }
        self.bytes.push(0);
        Some((Span { start: start as u32, len: (self.bytes.len() - start) as u32 }, after.unwrap_or(p)))
    }

    /// Fills the view from a message hickory parsed (what [`Response::parse`] gave up on).
    pub fn load(&mut self, msg: &Message) {
        self.clear();
        let h = &msg.metadata;
        self.response = h.message_type == MessageType::Response;
        self.opcode = u8::from(h.op_code);
        self.authoritative = h.authoritative;
        self.truncated = h.truncation;
        self.rcode = u16::from(h.response_code);
        if let Some(q) = msg.queries.first() {
            let name = self.push_name(q.name(), true);
            self.question = Some((name, u16::from(q.query_type())));
        }
        for r in msg.answers.iter().chain(&msg.authorities).chain(&msg.additionals) {
            let owner = self.push_name(&r.name, true);
            let rdata = match &r.data {
                RData::A(a) => Rd::A(a.0.octets()),
                RData::AAAA(a) => Rd::Aaaa(a.0.octets()),
                RData::NS(n) => Rd::Name(self.push_name(&n.0, false)),
                RData::CNAME(n) => Rd::Name(self.push_name(&n.0, false)),
                RData::PTR(n) => Rd::Name(self.push_name(&n.0, false)),
                RData::MX(mx) => Rd::Mx(mx.preference, self.push_name(&mx.exchange, false)),
                RData::SRV(s) => Rd::Srv([s.priority, s.weight, s.port], self.push_name(&s.target, false)),
                RData::SOA(s) => {
                    let (mname, rname) = (self.push_name(&s.mname, false), self.push_name(&s.rname, false));
                    Rd::Soa(mname, rname, [s.serial, s.refresh as u32, s.retry as u32, s.expire as u32, s.minimum])
                }
                RData::TXT(txt) => {
                    let start = self.bytes.len();
                    for part in txt.txt_data.iter() {
                        self.bytes.push(part.len() as u8);
                        self.bytes.extend_from_slice(part);
                    }
                    Rd::Txt(Span { start: start as u32, len: (self.bytes.len() - start) as u32 })
                }
                other => {
                    self.other.push(other.clone());
                    Rd::Other(self.other.len() as u32 - 1)
                }
            };
            let rec = Rec { owner, rtype: u16::from(r.record_type()), class: u16::from(r.dns_class), rdata };
            self.records.push(rec);
        }
        self.answers = msg.answers.len();
        self.authorities = msg.authorities.len();
    }

    /// Appends a name in wire format (checked: a dnstap `query_zone`), lower-cased.
    pub fn push_wire(&mut self, wire: &[u8]) -> Span {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(wire);
        self.bytes[start..].make_ascii_lowercase();
        Span { start: start as u32, len: wire.len() as u32 }
    }

    /// Appends a hickory name in wire format.
    pub fn push_name(&mut self, name: &Name, lower: bool) -> Span {
        let start = self.bytes.len();
        for label in name.iter() {
            self.bytes.push(label.len() as u8);
            if lower {
                self.bytes.extend(label.iter().map(u8::to_ascii_lowercase));
            } else {
                self.bytes.extend_from_slice(label);
            }
        }
        self.bytes.push(0);
        Span { start: start as u32, len: (self.bytes.len() - start) as u32 }
    }

    /// [`Self::rdata_text_into`], as a new string.
    #[cfg(test)]
    pub fn rdata_text(&self, rd: &Rd) -> String {
        let mut s = String::new();
        self.rdata_text_into(rd, &mut s);
        s
    }

    /// Rdata in presentation format, byte for byte what [`crate::dns::rdata_text`] gives for
    /// hickory's reading of it, appended to `s`.
    pub fn rdata_text_into(&self, rd: &Rd, s: &mut String) {
        use std::fmt::Write as _;
        match *rd {
            Rd::A(a) => push_ipv4(a, s),
            Rd::Aaaa(a) => push_ipv6(a, s),
            Rd::Name(n) => push_wire_name(self.bytes(n), s),
            Rd::Mx(preference, n) => {
                let _ = write!(s, "{preference} ");
                push_wire_name(self.bytes(n), s);
            }
            Rd::Srv([priority, weight, port], n) => {
                let _ = write!(s, "{priority} {weight} {port} ");
                push_wire_name(self.bytes(n), s);
            }
            Rd::Soa(mname, rname, [serial, refresh, retry, expire, minimum]) => {
                push_wire_name(self.bytes(mname), s);
                s.push(' ');
                push_wire_name(self.bytes(rname), s);
                // hickory reads refresh, retry and expire as signed.
                let (refresh, retry, expire) = (refresh as i32, retry as i32, expire as i32);
                let _ = write!(s, " {serial} {refresh} {retry} {expire} {minimum}");
            }
            Rd::Txt(t) => {
                let (bytes, mut p) = (self.bytes(t), 0);
                while p < bytes.len() {
                    let len = usize::from(bytes[p]);
                    if p > 0 {
                        s.push(' ');
                    }
                    quoted(&bytes[p + 1..p + 1 + len], s);
                    p += 1 + len;
                }
            }
            Rd::Other(i) => s.push_str(&rdata_text(self.other(i))),
        }
    }
}

impl Rd {
    /// The address of A and AAAA rdata.
    pub fn address(&self) -> Option<IpAddr> {
        match *self {
            Rd::A(a) => Some(IpAddr::V4(Ipv4Addr::from(a))),
            Rd::Aaaa(a) => Some(IpAddr::V6(Ipv6Addr::from(a))),
            _ => None,
        }
    }
}

/// The labels of a wire-format name, left to right (the root label not included).
pub(crate) fn labels(wire: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut p = 0;
    std::iter::from_fn(move || {
        let len = usize::from(*wire.get(p)?);
        if len == 0 {
            return None;
        }
        let label = wire.get(p + 1..p + 1 + len)?;
        p += 1 + len;
        Some(label)
    })
}

/// Whether `name` is `zone` or below it; both in wire format, letter case ignored.
pub(crate) fn in_zone(zone: &[u8], name: &[u8]) -> bool {
    let mut p = 0;
    while name.len() - p >= zone.len() {
        if name.len() - p == zone.len() {
            // Names are mostly lower-cased already: compared whole first.
            let tail = &name[p..];
            return tail == zone || tail.eq_ignore_ascii_case(zone);
        }
        p += 1 + usize::from(name[p]);
    }
    false
}

/// A wire-format name as hickory's `Name` (for the delegation map).
pub(crate) fn to_name(wire: &[u8]) -> Option<Name> {
    Name::read(&mut BinDecoder::new(wire)).ok()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use bytes::Bytes;

    use super::*;
    use crate::dnstap::{DnstapEvent, decode};
    use crate::framestream::{DNSTAP_CONTENT_TYPE, FileReader};
    use crate::metrics::Tally;
    use crate::sensor::extract::{ExtractConfig, Extractor};
    use crate::sensor::filter::PrivacyFilter;
    use crate::sensor::zones::ZoneMap;

    /// Everything the stages read from a view, in text.
    fn view(r: &Response) -> Vec<String> {
        let mut v = vec![format!("{} {} {} {} {}", r.response, r.opcode, r.authoritative, r.truncated, r.rcode)];
        if let Some((name, qtype)) = r.question {
            v.push(format!("question {:?} {qtype}", r.bytes(name)));
        }
        let sections = [("an", r.answers()), ("ns", r.authorities()), ("ar", r.additionals())];
        for (section, records) in sections {
            for rec in records {
                let owner = r.bytes(rec.owner);
                let text = r.rdata_text(&rec.rdata);
                v.push(format!("{section} {owner:?} {} {} {text} {:?}", rec.rtype, rec.class, rec.rdata.address()));
            }
        }
        v
    }

    fn events(path: &Path) -> Vec<DnstapEvent> {
        let mut reader = FileReader::open(path, DNSTAP_CONTENT_TYPE).unwrap();
        std::iter::from_fn(|| reader.next_frame().unwrap()).map(|f| decode(f).unwrap()).collect()
    }

    /// xorshift64*, for reproducible mutations.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545F4914F6CDD1D)
    }

    /// A message changed the ways broken and hostile ones are: a byte flipped, set to a
    /// compression pointer or to a length, one more or one less, cut short, a byte inserted,
    /// a count changed, letter case changed.
    fn mutate(wire: &[u8], state: &mut u64) -> Vec<u8> {
        let mut m = wire.to_vec();
        if m.is_empty() {
            return m;
        }
        for _ in 0..1 + next(state) % 3 {
            let at = (next(state) % m.len() as u64) as usize;
            let r = next(state);
            match r % 10 {
                0 => m[at] ^= 1 << ((r >> 8) % 8),
                1 => m[at] = 0xc0,
                2 => m[at] = (r >> 8) as u8 % 64,
                3 => m.truncate(at),
                4 if m.len() >= 12 => m[4 + (r >> 8) as usize % 8] = (r >> 16) as u8 % 4,
                5 => m[at] = (r >> 8) as u8,
                // Lengths one more or one less, a byte more or less (everything after shifts).
                6 => m[at] = m[at].wrapping_add(1),
                7 => m[at] = m[at].wrapping_sub(1),
                8 => m.insert(at, (r >> 8) as u8),
                _ => m[at] = m[at].to_ascii_uppercase(),
            }
            if m.is_empty() {
                break;
            }
        }
        m
    }

    fn extractor(negative: bool) -> Extractor {
        let config = ExtractConfig { auth_responses: true, negative };
        let roots = ["127.0.0.1".parse().unwrap(), "198.41.0.4".parse().unwrap()];
        // The default filters, with a private network, so that every drop reason can occur.
        let filter = PrivacyFilter::new(&[], true, vec!["10.0.0.0/8".parse().unwrap()]);
        Extractor::new(config, filter, ZoneMap::with_roots(10_000, &roots))
    }

    /// The fast read gives the view hickory's parse gives, and the stages the same RRsets,
    /// drops and delegations, on real captures (unbound with `query_zone`, BIND without),
    /// generated traffic, and 40 mutations of each message.
    #[test]
    fn the_fast_read_gives_what_hickory_gives() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let mut evs = events(&data.join("unbound-resolver.dnstap"));
        evs.extend(events(&data.join("bind-resolver.dnstap")));
        let dir = tempfile::tempdir().unwrap();
        let generated = dir.path().join("g.dnstap");
        let spec = crate::generate::GenerateSpec { frames: 2_000, names: 500, zones: 7, seed: 3, start: 1_800_000_000 };
        crate::generate::generate(&spec, &generated).unwrap();
        evs.extend(events(&generated));

        let (mut fast, mut slow) = (Response::default(), Response::default());
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let (mut messages, mut read_fast, mut mutants_fast, mut mutants_malformed) = (0, 0, 0, 0);
        let mut mutated = Vec::new();
        for ev in &evs {
            let Some(wire) = &ev.message.response_message else { continue };
            messages += 1;
            for i in 0..=40 {
                let m = if i == 0 { wire.to_vec() } else { mutate(wire, &mut state) };
                let hickory = Message::from_vec(&m);
                if fast.parse(&m) {
                    let hickory =
                        hickory.unwrap_or_else(|e| panic!("fast read accepted what hickory refuses ({e}): {m:?}"));
                    slow.load(&hickory);
                    assert_eq!(view(&fast), view(&slow), "{m:?}");
                    if i == 0 {
                        read_fast += 1;
                    } else {
                        mutants_fast += 1;
                    }
                } else if hickory.is_err() {
                    mutants_malformed += 1;
                }
                if i > 0 {
                    let mut ev = ev.clone();
                    ev.message.response_message = Some(Bytes::from(m));
                    mutated.push(ev);
                }
            }
        }
        // The common case really takes the fast read, and mutants exercise both outcomes.
        assert!(read_fast * 10 >= messages * 9, "{read_fast} of {messages} read fast");
        assert!(mutants_fast > 1_000 && mutants_malformed > 1_000, "{mutants_fast} {mutants_malformed}");

        // The stages, frame by frame, with the delegation map learning as it goes. `a` writes
        // over the observations of earlier frames (as the pipeline does), `b` makes new ones.
        for negative in [false, true] {
            let (mut a, mut b) = (extractor(negative), extractor(negative));
            let (mut kept, mut dropped) = (0, 0);
            let mut out_a = Vec::new();
            for ev in evs.iter().chain(&mutated) {
                let (mut out_b, mut drops_a, mut drops_b) = (vec![], Tally::default(), Tally::default());
                a.recycle(&mut out_a);
                let tap = crate::dnstap::TapView::of(ev);
                let ra = a.extract_with(&tap, &mut out_a, &mut drops_a, true);
                let rb = b.extract_with(&tap, &mut out_b, &mut drops_b, false);
                assert_eq!((&ra, &out_a), (&rb, &out_b));
                assert_eq!(format!("{drops_a:?}"), format!("{drops_b:?}"));
                kept += out_a.len();
                dropped += usize::from(ra.is_err());
            }
            assert_eq!(a.zones.len(), b.zones.len());
            assert!(kept > 10_000 && dropped > 10_000, "{kept} {dropped}");
        }
    }

    /// Rdata of each type read fast must fill its length exactly, as hickory requires.
    #[test]
    fn rdata_fills_its_length_exactly() {
        let name = b"\x02ns\x07example\x00".to_vec();
        let cases: [(u16, Vec<u8>); 7] = [
            (1, vec![192, 0, 2, 1]),
            (28, vec![0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            (2, name.clone()),
            (15, [&[0, 10][..], &name].concat()),
            (33, [&[0, 1, 0, 2, 0x13, 0xc4][..], &name].concat()),
            (6, [&name[..], &name, &[0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 5]].concat()),
            (16, b"\x05hello\x00\x02\"\\".to_vec()),
        ];
        let message = |rtype: u16, rdata: &[u8], len: usize| {
            let mut m = vec![0, 1, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0];
            m.extend_from_slice(b"\x01x\x07example\x00");
            m.extend_from_slice(&rtype.to_be_bytes());
            m.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
            m.extend_from_slice(&(len as u16).to_be_bytes());
            m.extend_from_slice(rdata);
            m
        };
        let mut r = Response::default();
        for (rtype, rdata) in cases {
            let exact = message(rtype, &rdata, rdata.len());
            assert!(r.parse(&exact), "{rtype}");
            let mut hickory = Response::default();
            hickory.load(&Message::from_vec(&exact).unwrap());
            assert_eq!(view(&r), view(&hickory));
            // One byte more than the rdata holds (a byte follows, a TXT string it cannot hold);
            // one byte less.
            let longer = [message(rtype, &rdata, rdata.len() + 1), vec![5]].concat();
            let shorter = message(rtype, &rdata, rdata.len() - 1);
            for m in [longer, shorter] {
                assert!(!r.parse(&m), "{rtype} {m:?}");
                assert!(Message::from_vec(&m).is_err(), "{rtype} {m:?}");
            }
        }
        assert_eq!(r.rdata_text(&Rd::Soa(Span::default(), Span::default(), [1, 2, 3, u32::MAX, 5])), ". . 1 2 3 -1 5");
    }

    /// One OPT record, in the additional section; an extended RCODE is left to hickory.
    #[test]
    fn edns_is_read_as_hickory_reads_it() {
        let opt = |ttl: [u8; 4]| [&[0, 0, 41, 0x10, 0][..], &ttl, &[0, 0]].concat();
        let message = |an: u8, ar: u8, records: &[Vec<u8>]| {
            let mut m = vec![0, 1, 0x84, 0, 0, 0, 0, an, 0, 0, 0, ar];
            m.extend(records.concat());
            m
        };
        let a = [&b"\x01x\x00"[..], &[0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]].concat();
        let mut r = Response::default();
        let good = message(1, 1, &[a.clone(), opt([0; 4])]);
        assert!(r.parse(&good) && Message::from_vec(&good).is_ok());
        assert_eq!((r.answers().len(), r.additionals().len()), (1, 0));
        for bad in [message(1, 2, &[a.clone(), opt([0; 4]), opt([0; 4])]), message(2, 0, &[a.clone(), opt([0; 4])])] {
            assert!(!r.parse(&bad) && Message::from_vec(&bad).is_err());
        }
        // BADVERS (16): the view from hickory has it.
        let badvers = message(1, 1, &[a, opt([1, 0, 0, 0])]);
        assert!(!r.parse(&badvers));
        r.load(&Message::from_vec(&badvers).unwrap());
        assert_eq!(r.rcode, 16);
    }

    /// The view's rdata text is what `dns::rdata_text` (the sensor's text before the view,
    /// and the `tap` tool's) gives, byte for byte: stores keep their keys.
    #[test]
    fn rdata_text_is_the_text_stores_already_hold() {
        use hickory_proto::rr::Record;
        use hickory_proto::rr::rdata::{A, AAAA, CAA, CNAME, MX, NS, PTR, SOA, SRV, TXT};
        let n = |s: &str| Name::from_ascii(s).unwrap();
        let odd = Name::from_labels(vec![&b"a b"[..], b"x.y", b"\x00\xff", b"Com"]).unwrap();
        let cases = [
            RData::A(A::new(192, 0, 2, 1)),
            RData::A(A::new(0, 10, 100, 255)),
            RData::AAAA(AAAA("2001:db8::1".parse().unwrap())),
            RData::AAAA(AAAA("::ffff:192.0.2.1".parse().unwrap())),
            RData::NS(NS(n("Ns1.Example.com."))),
            RData::CNAME(CNAME(odd.clone())),
            RData::PTR(PTR(n("xn--bcher-kva.example."))),
            RData::MX(MX::new(10, odd.clone())),
            RData::SRV(SRV::new(0, 5, 5060, n("sip.example."))),
            RData::SOA(SOA::new(n("ns."), n("h.example."), 2026112901, -1, 3600, i32::MAX, u32::MAX)),
            RData::TXT(TXT::from_bytes(vec![b"v=spf1 -all", b"say \"hi\"\\", b"\x00\xff", b""])),
            RData::CAA(CAA::new_issue(true, Some(n("ca.example.")), vec![])),
        ];
        let mut msg = Message::response(1, hickory_proto::op::OpCode::Query);
        for rd in &cases {
            msg.add_answer(Record::from_rdata(n("x.example."), 60, rd.clone()));
        }
        let mut r = Response::default();
        r.load(&msg);
        let wire = msg.to_vec().unwrap();
        let mut fast = Response::default();
        assert!(fast.parse(&wire));
        for (i, rd) in cases.iter().enumerate() {
            assert_eq!(r.rdata_text(&r.answers()[i].rdata), rdata_text(rd), "{rd:?}");
            assert_eq!(fast.rdata_text(&fast.answers()[i].rdata), rdata_text(rd), "{rd:?}");
        }
    }

    /// A huge message is read, and the buffers it grew are not kept for the next one.
    #[test]
    fn buffers_are_bounded_between_messages() {
        let n: u16 = 10_000;
        let mut m = vec![0, 1, 0x84, 0, 0, 1];
        m.extend_from_slice(&n.to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        m.extend_from_slice(b"\x01x\x07example\x00\x00\x02\x00\x01");
        for _ in 0..n {
            m.extend_from_slice(&[0xc0, 12, 0, 2, 0, 1, 0, 0, 0, 60, 0, 2, 0xc0, 12]);
        }
        let mut r = Response::default();
        assert!(r.parse(&m));
        assert_eq!(r.answers().len(), usize::from(n));
        assert!(r.records.capacity() > KEEP_RECORDS);
        let mut small = m[..12 + 15 + 14].to_vec();
        small[6..8].copy_from_slice(&[0, 1]);
        assert!(r.parse(&small));
        assert_eq!(r.answers().len(), 1);
        assert!(r.records.capacity() <= KEEP_RECORDS && r.bytes.capacity() <= KEEP_BYTES);
    }

    #[test]
    fn names_follow_hickorys_rules() {
        let mut r = Response::default();
        // www.example.com at 12, then a pointer to it, to its tail, and forward.
        let mut m = vec![0; 12];
        m.extend_from_slice(b"\x03www\x07example\x03com\x00");
        m.extend_from_slice(&[0xc0, 12, 0xc0, 16]);
        let (name, next) = r.name(&m, 12, true).unwrap();
        assert_eq!((r.bytes(name), next), (&b"\x03www\x07example\x03com\x00"[..], 29));
        let (name, next) = r.name(&m, 29, false).unwrap();
        assert_eq!((r.bytes(name).len(), next), (17, 31));
        assert_eq!(r.name(&m, 31, false).map(|(n, _)| r.bytes(n).to_vec()), Some(b"\x07example\x03com\x00".to_vec()));
        // A pointer to itself or forward, a reserved label type, a name cut short.
        assert!(r.name(&[0xc0, 0], 0, true).is_none());
        assert!(r.name(&[0xc0, 2, 0], 0, true).is_none());
        assert!(r.name(&[0x40, 0], 0, true).is_none());
        assert!(r.name(&[3, b'w', b'w'], 0, true).is_none());
        // 255 bytes in all is the most: three labels of 63 bytes and one of 61 or 62.
        let long = |last: usize| {
            let mut n = Vec::new();
            for len in [63, 63, 63, last] {
                n.push(len as u8);
                n.extend(std::iter::repeat_n(b'a', len));
            }
            n.push(0);
            n
        };
        assert_eq!((long(61).len(), long(62).len()), (255, 256));
        assert!(r.name(&long(61), 0, true).is_some());
        assert!(r.name(&long(62), 0, true).is_none());
        assert!(Name::from_bytes(&long(61)).is_ok() && Name::from_bytes(&long(62)).is_err());
        assert!(in_zone(b"\x07example\x00", b"\x03WWW\x07Example\x00"));
        assert!(in_zone(b"\x00", b"\x03www\x00") && in_zone(b"\x03www\x00", b"\x03www\x00"));
        assert!(!in_zone(b"\x07example\x00", b"\x08xexample\x00") && !in_zone(b"\x03www\x00", b"\x00"));
    }
}
