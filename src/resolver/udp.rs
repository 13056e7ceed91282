//! The UDP front: our own receive loop in place of hickory-server's, so that
//! - every datagram is seen and counted, including those hickory-server drops silently
//!   (shorter than a header, or responses);
//! - a repeated question is answered from a cache of encoded responses: the bytes of the last
//!   answer to the same question (same name, type, class, RD/CD/AD bits and EDNS shape), with
//!   the client's id and question name (its 0x20 case) copied in and every TTL lowered by the
//!   time the answer has been cached. It never outlives the smallest TTL in it. This is what
//!   unbound's message cache does; hickory's own cache hands out owned records that
//!   hickory-server then re-encodes, which cost most of the cached path (docs/BENCHMARKS.md).
//!
//! Everything else (misses, malformed queries, clients outside the access list, EDNS options,
//! answers larger than the client takes, CLIENT_* dnstap) goes through [`super::Frontend`] as
//! before, and its answer is what the cache stores.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioTime;
use hickory_resolver::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Frontend, ResolverStats};

pub(super) const HEADER: usize = 12;
const OPT: u16 = 41;
const SOA: u16 = 6;

/// The cacheable shape of a query: its cache key, where its question name ends, and the
/// largest answer the client takes over UDP.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Shape {
    pub(super) key: Vec<u8>,
    qname_end: usize,
    max_udp: usize,
}

/// Reads a query that the cache may answer: one question with an uncompressed name, no
/// records but an optional OPT without options, nothing after. `None`: anything else (the
/// slow path decides what it is).
pub(super) fn shape(q: &[u8]) -> Option<Shape> {
    if q.len() < HEADER {
        return None;
    }
    let (flags_hi, flags_lo) = (q[2], q[3]);
    // QR=0, opcode QUERY, TC=0.
    if flags_hi & 0xfa != 0 {
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([q[i], q[i + 1]]);
    let additional = count(10);
    if count(4) != 1 || count(6) != 0 || count(8) != 0 || additional > 1 {
        return None;
    }
    let mut at = HEADER;
    loop {
        let len = *q.get(at)? as usize;
        if len == 0 {
            at += 1;
            break;
        }
        if len > 63 {
            return None;
        }
        at += 1 + len;
        if at - HEADER > 255 {
            return None;
        }
    }
    let qname_end = at;
    let question = q.get(qname_end..qname_end + 4)?;
    at = qname_end + 4;
    let mut key = Vec::with_capacity(qname_end - HEADER + 8);
    key.push(flags_hi & 0x01); // RD
    key.push(flags_lo & 0x30); // AD, CD
    let mut max_udp = 512;
    if additional == 1 {
        // OPT: root owner, type 41, class = payload size, ttl = ext-rcode, version, flags.
        let opt = q.get(at..at + 11)?;
        if opt[0] != 0 || u16::from_be_bytes([opt[1], opt[2]]) != OPT || opt[6] != 0 || opt[9..11] != [0, 0] {
            return None;
        }
        max_udp = usize::from(u16::from_be_bytes([opt[3], opt[4]])).max(512);
        key.push(1);
        key.push(opt[7] & 0x80); // DO
        at += 11;
    } else {
        key.extend_from_slice(&[0, 0]);
    }
    if at != q.len() {
        return None;
    }
    key.extend_from_slice(question);
    key.extend(q[HEADER..qname_end].iter().map(u8::to_ascii_lowercase));
    Some(Shape { key, qname_end, max_udp })
}

/// Skips a (possibly compressed) name at `at`; returns where it ends.
fn skip_name(m: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *m.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return Some(at + 2),
            l if l <= 63 => at += 1 + usize::from(l),
            _ => return None,
        }
    }
}

/// The offsets of every TTL in a response (OPT's excepted) and how long it may be served: its
/// smallest TTL, or an SOA's MINIMUM if smaller; `None` if the response does not parse or has
/// nothing to time it by.
fn ttls(m: &[u8]) -> Option<(Vec<usize>, u32)> {
    let count = |i: usize| usize::from(u16::from_be_bytes([m[i], m[i + 1]]));
    if m.len() < HEADER || count(4) != 1 {
        return None;
    }
    let mut at = skip_name(m, HEADER)? + 4;
    let records = count(6) + count(8) + count(10);
    let (mut offsets, mut min) = (Vec::with_capacity(records), u32::MAX);
    for _ in 0..records {
        at = skip_name(m, at)?;
        let fixed = m.get(at..at + 10)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        if rtype != OPT {
            offsets.push(at + 4);
            min = min.min(ttl);
        }
        // A negative answer is good for the SOA's MINIMUM at most (RFC 2308), whatever the
        // SOA record's own TTL says.
        if rtype == SOA && rdlen >= 20 {
            let end = at + 10 + rdlen;
            let minimum = m.get(end - 4..end)?;
            min = min.min(u32::from_be_bytes([minimum[0], minimum[1], minimum[2], minimum[3]]));
        }
        at += 10 + rdlen;
    }
    (at == m.len() && !offsets.is_empty()).then_some((offsets, min))
}

struct Cached {
    wire: Vec<u8>,
    ttls: Vec<usize>,
    stored: Instant,
    /// Seconds it may be served (its smallest TTL).
    lifetime: u64,
}

/// Encoded answers by question, bounded in entries.
pub struct AnswerCache {
    entries: Mutex<HashMap<Vec<u8>, Cached>>,
    capacity: usize,
}

impl AnswerCache {
    pub fn new(capacity: usize) -> Self {
        Self { entries: Mutex::new(HashMap::new()), capacity }
    }

    /// The cached answer to `q` (of shape `s`) if it is at most `max` bytes, made the
    /// client's; `None` on a miss.
    fn answer(&self, q: &[u8], s: &Shape, max: usize) -> Option<Vec<u8>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let c = entries.get(&s.key)?;
        let age = c.stored.elapsed().as_secs();
        if age >= c.lifetime {
            entries.remove(&s.key);
            return None;
        }
        if c.wire.len() > max {
            return None;
        }
        let mut out = c.wire.clone();
        out[..2].copy_from_slice(&q[..2]);
        out[HEADER..s.qname_end].copy_from_slice(&q[HEADER..s.qname_end]);
        let age = age as u32;
        for &at in &c.ttls {
            let ttl = u32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
            out[at..at + 4].copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
        }
        Some(out)
    }

    /// Keeps an answer the slow path sent: whole (not truncated), NOERROR or NXDOMAIN, with a
    /// TTL above zero on every record.
    pub(super) fn offer(&self, key: Vec<u8>, wire: &[u8]) {
        let rcode = wire.get(3).map(|f| f & 0x0f);
        let truncated = wire.get(2).is_some_and(|f| f & 0x02 != 0);
        if truncated || !matches!(rcode, Some(0 | 3)) {
            return;
        }
        let Some((offsets, min)) = ttls(wire) else { return };
        if min == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, c| c.stored.elapsed().as_secs() < c.lifetime);
            if entries.len() >= self.capacity {
                // Still full of live answers: make room by dropping one.
                let Some(victim) = entries.keys().next().cloned() else { return };
                entries.remove(&victim);
            }
        }
        entries.insert(
            key,
            Cached { wire: wire.to_vec(), ttls: offsets, stored: Instant::now(), lifetime: u64::from(min) },
        );
    }
}

/// Serves one UDP socket until `shutdown`; `cache` is `None` when CLIENT_* dnstap is on (every
/// answer must pass the tap).
pub async fn serve(
    socket: Arc<UdpSocket>,
    frontend: Arc<Frontend>,
    cache: Option<Arc<AnswerCache>>,
    stats: Arc<ResolverStats>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, src) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "udp receive");
                    continue;
                }
            },
        };
        let q = &buf[..n];
        if n < HEADER {
            stats.dropped.inc("runt");
            continue;
        }
        let shape = cache.as_ref().and_then(|_| shape(q));
        let start = Instant::now();
        if let (Some(cache), Some(s)) = (&cache, &shape)
            && let Some(answer) = from_cache(cache, &frontend, &stats, q, s, src, Protocol::Udp)
        {
            if let Err(e) = socket.send_to(&answer, src).await {
                tracing::debug!(error = %e, "udp send");
            }
            stats.latency.observe(start.elapsed());
            continue;
        }
        let raw = q.to_vec();
        let (socket, frontend, stats) = (socket.clone(), frontend.clone(), stats.clone());
        let offer = cache.clone().zip(shape.map(|s| s.key));
        tasks.spawn(async move { slow(raw, src, socket, frontend, stats, offer).await });
    }
}

/// The cached answer to a query of shape `s` from `src` over `protocol`, counted as answered,
/// if the client may have it (over UDP: if it fits the client's payload size).
pub(super) fn from_cache(
    cache: &AnswerCache,
    frontend: &Frontend,
    stats: &ResolverStats,
    q: &[u8],
    s: &Shape,
    src: SocketAddr,
    protocol: Protocol,
) -> Option<Vec<u8>> {
    if !frontend.allows(src) {
        return None;
    }
    let max = if protocol == Protocol::Udp { s.max_udp } else { usize::MAX };
    let answer = cache.answer(q, s, max)?;
    if protocol == Protocol::Udp {
        stats.queries_udp.inc()
    } else {
        stats.queries_tcp.inc()
    }
    stats.cache_answers.inc();
    stats.answer_cache_hits.inc();
    // Only NOERROR and NXDOMAIN answers are kept.
    stats.responses.inc(if answer[3] & 0x0f == 3 { "NXDOMAIN" } else { "NOERROR" });
    Some(answer)
}

/// The FORMERR answer to a malformed query whose header is there (its first four bytes):
/// the client's id, opcode and RD, as hickory-server answers.
pub(super) fn formerr(header: [u8; 4]) -> [u8; HEADER] {
    [header[0], header[1], 0x80 | (header[2] & 0x79), 0x01, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// What hickory-server would do with the datagram, through the frontend.
async fn slow(
    raw: Vec<u8>,
    src: SocketAddr,
    socket: Arc<UdpSocket>,
    frontend: Arc<Frontend>,
    stats: Arc<ResolverStats>,
    offer: Option<(Arc<AnswerCache>, Vec<u8>)>,
) {
    let header = [raw[0], raw[1], raw[2], raw[3]];
    let request = match Request::from_bytes(raw, src, Protocol::Udp) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "malformed query");
            stats.dropped.inc("malformed");
            stats.responses.inc("FORMERR");
            let _ = socket.send_to(&formerr(header), src).await;
            return;
        }
    };
    if request.metadata.message_type == MessageType::Response {
        stats.dropped.inc("response");
        return;
    }
    let reply = Reply { socket, dst: src, offer };
    frontend.handle_request::<_, TokioTime>(&request, reply).await;
}

/// Encodes a response as hickory-server does (its own encoder is private to it): over UDP at
/// most the client's EDNS payload (512 without EDNS), truncated past it; a response that
/// cannot be encoded becomes a bare SERVFAIL.
pub(super) fn encode<'a>(
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    protocol: Protocol,
) -> Result<(ResponseInfo, Vec<u8>), NetError> {
    let max = match protocol {
        Protocol::Udp => response.edns().map_or(512, |e| e.max_payload()),
        _ => u16::MAX,
    };
    let id = response.metadata().id;
    let mut wire = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut wire);
    encoder.set_max_size(max);
    match response.destructive_emit(&mut encoder) {
        Ok(info) => Ok((info, wire)),
        Err(e) => {
            tracing::warn!(error = %e, "could not encode a response; SERVFAIL");
            wire.clear();
            let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
            metadata.response_code = ResponseCode::ServFail;
            let header = Header { metadata, counts: HeaderCounts::default() };
            header.emit(&mut BinEncoder::new(&mut wire))?;
            Ok((ResponseInfo::from(header), wire))
        }
    }
}

/// Sends an answer of the slow path and offers it to the cache.
#[derive(Clone)]
struct Reply {
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
    offer: Option<(Arc<AnswerCache>, Vec<u8>)>,
}

#[async_trait::async_trait]
impl ResponseHandler for Reply {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        // A SERVFAIL in place of an answer that could not be encoded is not kept (`offer`).
        let (info, wire) = encode(response, Protocol::Udp)?;
        self.socket.send_to(&wire, self.dst).await?;
        if let Some((cache, key)) = self.offer.take() {
            cache.offer(key, &wire);
        }
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` (labels), type A, with or without an OPT record.
    fn query(id: u16, name: &[&str], opt: Option<(u16, bool)>) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, u8::from(opt.is_some())]);
        for l in name {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        if let Some((size, dnssec)) = opt {
            q.extend_from_slice(&[0, 0, 41]);
            q.extend_from_slice(&size.to_be_bytes());
            q.extend_from_slice(&[0, 0, if dnssec { 0x80 } else { 0 }, 0, 0, 0]);
        }
        q
    }

    /// The answer to `q`: its question, an A record (name compressed to the question), an
    /// OPT if asked.
    fn answer_to(q: &[u8], ttl: u32, opt: bool) -> Vec<u8> {
        let end = skip_name(q, HEADER).unwrap() + 4;
        let mut a = q[..end].to_vec();
        a[2] |= 0x80;
        a[3] = 0x80;
        a[6..12].copy_from_slice(&[0, 1, 0, 0, 0, u8::from(opt)]);
        a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        a.extend_from_slice(&ttl.to_be_bytes());
        a.extend_from_slice(&[0, 4, 192, 0, 2, 1]);
        if opt {
            a.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
        }
        a
    }

    #[test]
    fn shapes_only_plain_queries() {
        let q = query(7, &["www", "Example", "com"], None);
        let s = shape(&q).unwrap();
        assert_eq!(s.max_udp, 512);
        // Case is not part of the key; the id is not either; EDNS and DO are.
        assert_eq!(shape(&query(9, &["WWW", "example", "COM"], None)).unwrap().key, s.key);
        let edns = shape(&query(7, &["www", "example", "com"], Some((1232, false)))).unwrap();
        assert_eq!(edns.max_udp, 1232);
        assert_ne!(edns.key, s.key);
        assert_ne!(shape(&query(7, &["www", "example", "com"], Some((1232, true)))).unwrap().key, edns.key);
        // Not for the cache: a response, trailing bytes, an EDNS option, a compressed name.
        let mut response = q.clone();
        response[2] |= 0x80;
        assert!(shape(&response).is_none());
        let mut trailing = q.clone();
        trailing.push(0);
        assert!(shape(&trailing).is_none());
        let mut option = query(7, &["a"], Some((1232, false)));
        let n = option.len();
        option[n - 1] = 4;
        option.extend_from_slice(&[0, 10, 0, 0]);
        assert!(shape(&option).is_none());
        let mut compressed = q[..HEADER].to_vec();
        compressed.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(shape(&compressed).is_none());
        assert!(shape(&q[..11]).is_none());
    }

    #[test]
    fn a_cached_answer_is_the_clients_and_ages() {
        let cache = AnswerCache::new(10);
        let first = query(1, &["www", "example", "com"], Some((1232, false)));
        let s = shape(&first).unwrap();
        assert!(cache.answer(&first, &s, s.max_udp).is_none());
        cache.offer(s.key.clone(), &answer_to(&first, 300, true));
        let second = query(0xbeef, &["wWw", "EXAMPLE", "com"], Some((1232, false)));
        let got = cache.answer(&second, &shape(&second).unwrap(), usize::from(u16::MAX)).unwrap();
        // The client's id and spelling, the rest as stored.
        assert_eq!(got, answer_to(&second, 300, true));
        // Aged: TTLs lowered by the time in the cache, gone after the smallest TTL.
        cache.entries.lock().unwrap().get_mut(&s.key).unwrap().stored -= std::time::Duration::from_secs(100);
        let got = cache.answer(&second, &shape(&second).unwrap(), usize::from(u16::MAX)).unwrap();
        assert_eq!(got, answer_to(&second, 200, true));
        cache.entries.lock().unwrap().get_mut(&s.key).unwrap().stored -= std::time::Duration::from_secs(200);
        assert!(cache.answer(&second, &shape(&second).unwrap(), usize::from(u16::MAX)).is_none());
        // Too large for a client without EDNS: not from the cache.
        let plain = query(2, &["big"], None);
        let ps = shape(&plain).unwrap();
        let mut big = answer_to(&plain, 60, false);
        for _ in 0..40 {
            big.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 2]);
        }
        let records = 41u16.to_be_bytes();
        big[6..8].copy_from_slice(&records);
        cache.offer(ps.key.clone(), &big);
        assert!(big.len() > 512 && cache.answer(&plain, &ps, ps.max_udp).is_none());
        // Over TCP it is.
        assert_eq!(cache.answer(&plain, &ps, usize::MAX).map(|a| a.len()), Some(big.len()));
        // Not kept: truncated, SERVFAIL, TTL 0.
        for (flag_byte, value) in [(2, 0x82u8), (3, 0x82)] {
            let mut a = answer_to(&plain, 60, false);
            a[flag_byte] = value;
            let c = AnswerCache::new(10);
            c.offer(ps.key.clone(), &a);
            assert!(c.answer(&plain, &ps, ps.max_udp).is_none());
        }
        let c = AnswerCache::new(10);
        c.offer(ps.key.clone(), &answer_to(&plain, 0, false));
        assert!(c.answer(&plain, &ps, ps.max_udp).is_none());
    }

    #[test]
    fn a_negative_answer_lives_no_longer_than_its_soa_minimum() {
        let q = query(1, &["nx", "example"], None);
        let end = skip_name(&q, HEADER).unwrap() + 4;
        let mut a = q[..end].to_vec();
        a[2] |= 0x80;
        a[3] = 0x83;
        a[6..12].copy_from_slice(&[0, 0, 0, 1, 0, 0]);
        // example. SOA (TTL 3600) ns. host. serial refresh retry expire minimum=60
        a.extend_from_slice(&[7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0, 0, 6, 0, 1, 0, 0, 0x0e, 0x10, 0, 25]);
        a.extend_from_slice(&[2, b'n', b's', 0, 0]);
        for v in [1u32, 7200, 900, 86400, 60] {
            a.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(ttls(&a).map(|(o, min)| (o.len(), min)), Some((1, 60)));
    }

    #[test]
    fn the_cache_stays_within_its_bound() {
        let cache = AnswerCache::new(3);
        for i in 0..10 {
            let name = format!("n{i}");
            let q = query(1, &[&name], None);
            cache.offer(shape(&q).unwrap().key, &answer_to(&q, 60, false));
        }
        assert_eq!(cache.entries.lock().unwrap().len(), 3);
    }
}
