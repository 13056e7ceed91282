//! Synthetic dnstap for benchmarks and load tests (`dnsledger tap generate`): RESOLVER_RESPONSE
//! frames as a resolver would log them, over a population of names drawn with Zipf-like
//! repetition (a few names very often, most names rarely), deterministic for a seed.
//!
//! Each name `hN.dK.example` (K = N mod zones) lives in zone `dK.example`; frames carry that
//! zone as `query_zone` and the answer is authoritative. The mix: 60% A, 20% AAAA, 10% CNAME
//! (to another generated name), 10% referrals from `example.` (NS plus glue). Rdata addresses
//! are in public space derived from N, so every name has its own RRset.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use bytes::Bytes;
use hickory_proto::rr::Name;

use crate::dnstap::{DnstapEvent, DnstapMessage, MessageType, SocketFamily, SocketProtocol, Timestamp, encode};
use crate::framestream::{DNSTAP_CONTENT_TYPE, FileWriter};

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct GenerateSpec {
    pub frames: u64,
    pub names: u64,
    pub zones: u64,
    pub seed: u64,
    /// Time of the first frame (epoch seconds); frames advance 10 microseconds each.
    pub start: u64,
}

/// xorshift64*: small, fast, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Rank in [0, n): log-uniform, i.e. P(rank) ~ 1/rank (Zipf with s = 1).
fn zipf(rng: &mut Rng, n: u64) -> u64 {
    let r = ((n as f64 + 1.0).powf(rng.unit()) - 1.0) as u64;
    r.min(n - 1)
}

fn ipv4(n: u64) -> Ipv4Addr {
    // 11.0.0.0/8 onwards: public space, never in the default private networks.
    Ipv4Addr::new(11 + ((n >> 24) & 0x3f) as u8, (n >> 16) as u8, (n >> 8) as u8, n as u8)
}

fn ipv6(n: u64) -> Ipv6Addr {
    Ipv6Addr::new(0x2a00, 0x1450, 0, 0, 0, 0, (n >> 16) as u16, n as u16)
}

/// Builds a wire-format response. `answers`, `authority`, `additional`: (owner, type, rdata).
fn response(
    id: u16,
    aa: bool,
    qname: &str,
    qtype: u16,
    answers: &[(&str, u16, Vec<u8>)],
    authority: &[(&str, u16, Vec<u8>)],
    additional: &[(&str, u16, Vec<u8>)],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(256);
    m.extend_from_slice(&id.to_be_bytes());
    m.push(0x80 | if aa { 0x04 } else { 0 });
    m.push(0);
    for n in [1, answers.len(), authority.len(), additional.len()] {
        m.extend_from_slice(&(n as u16).to_be_bytes());
    }
    name_wire(qname, &mut m);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    for (owner, t, rdata) in answers.iter().chain(authority).chain(additional) {
        name_wire(owner, &mut m);
        m.extend_from_slice(&t.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&3600u32.to_be_bytes());
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(rdata);
    }
    m
}

fn name_wire(name: &str, out: &mut Vec<u8>) {
    for label in name.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

fn name_rdata(name: &str) -> Vec<u8> {
    let mut v = Vec::new();
    name_wire(name, &mut v);
    v
}

/// One frame for draw `i`.
fn frame(spec: &GenerateSpec, rng: &mut Rng, i: u64) -> Vec<u8> {
    let n = zipf(rng, spec.names);
    let k = n % spec.zones;
    let zone = format!("d{k}.example.");
    let host = format!("h{n}.{zone}");
    let kind = rng.next() % 10;
    let (query_zone, server, wire) = match kind {
        0..=5 => {
            (zone.clone(), k, response(i as u16, true, &host, 1, &[(&host, 1, ipv4(n).octets().to_vec())], &[], &[]))
        }
        6 | 7 => {
            (zone.clone(), k, response(i as u16, true, &host, 28, &[(&host, 28, ipv6(n).octets().to_vec())], &[], &[]))
        }
        8 => {
            let target = format!("h{}.{zone}", (n * 7 + 1) % spec.names);
            (zone.clone(), k, response(i as u16, true, &host, 5, &[(&host, 5, name_rdata(&target))], &[], &[]))
        }
        _ => {
            let ns = format!("ns.{zone}");
            let wire = response(
                i as u16,
                false,
                &host,
                1,
                &[],
                &[(&zone, 2, name_rdata(&ns))],
                &[(&ns, 1, ipv4(spec.names + k).octets().to_vec())],
            );
            ("example.".to_string(), spec.zones, wire)
        }
    };
    let t = spec.start * 1_000_000 + i * 10;
    let time = Timestamp { sec: t / 1_000_000, nsec: ((t % 1_000_000) * 1000) as u32 };
    let ev = DnstapEvent {
        identity: Some(Bytes::from_static(b"generator")),
        version: None,
        message: DnstapMessage {
            kind: MessageType::ResolverResponse,
            socket_family: Some(SocketFamily::Inet),
            socket_protocol: Some(SocketProtocol::Udp),
            query_address: Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))),
            response_address: Some(IpAddr::V4(ipv4(spec.names * 2 + server))),
            query_port: Some(40_000 + (i % 20_000) as u16),
            response_port: Some(53),
            query_time: Some(time),
            response_time: Some(time),
            query_zone: Some(Name::from_ascii(&query_zone).expect("generated zone")),
            query_message: None,
            response_message: Some(Bytes::from(wire)),
        },
    };
    encode(&ev)
}

/// Writes the frames to an fstrm file; returns the number written.
pub fn generate(spec: &GenerateSpec, path: &Path) -> std::io::Result<u64> {
    assert!(spec.names > 0 && spec.zones > 0, "names and zones must be positive");
    let mut w = FileWriter::create(path, DNSTAP_CONTENT_TYPE)?;
    let mut rng = Rng(spec.seed.max(1));
    for i in 0..spec.frames {
        w.write_frame(&frame(spec, &mut rng, i))?;
    }
    w.finish()?;
    Ok(spec.frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_frames_decode_and_repeat_like_zipf() {
        let spec = GenerateSpec { frames: 20_000, names: 2_000, zones: 50, seed: 7, start: 1_700_000_000 };
        let mut rng = Rng(spec.seed);
        let mut seen = std::collections::HashMap::new();
        for i in 0..spec.frames {
            let f = frame(&spec, &mut rng, i);
            let ev = crate::dnstap::decode(Bytes::from(f)).unwrap();
            let msg = crate::dnstap::parse_dns(ev.message.response_message.as_ref().unwrap()).unwrap();
            *seen.entry(msg.queries[0].name().to_string()).or_insert(0u32) += 1;
        }
        let mut counts: Vec<u32> = seen.values().copied().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        // Heavy head, long tail: the top name is seen far more often than the median one.
        assert!(counts[0] > 20 * counts[counts.len() / 2], "{:?}", &counts[..5]);
        assert!(seen.len() > 1000, "{} distinct names", seen.len());
    }
}
