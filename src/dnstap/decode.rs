//! Decoding a dnstap frame into [`DnstapEvent`]: every field checked (address lengths, port
//! ranges, zone wire format); errors carry a metrics label. DNS messages are parsed on demand
//! with hickory-proto, since most consumers only need some of them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;
use hickory_proto::op::Message;
use hickory_proto::rr::Name;
use hickory_proto::serialize::binary::BinDecodable;
use prost::Message as _;
use thiserror::Error;

use super::pb;
use super::{MessageType, SocketFamily, SocketProtocol};

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    pub sec: u64,
    pub nsec: u32,
}

/// One dnstap payload.
#[derive(Clone, Debug, PartialEq)]
pub struct DnstapEvent {
    pub identity: Option<Bytes>,
    pub version: Option<Bytes>,
    pub message: DnstapMessage,
}

/// A dnstap `Message` with validated fields.
#[derive(Clone, Debug, PartialEq)]
pub struct DnstapMessage {
    pub kind: MessageType,
    pub socket_family: Option<SocketFamily>,
    pub socket_protocol: Option<SocketProtocol>,
    pub query_address: Option<IpAddr>,
    pub response_address: Option<IpAddr>,
    pub query_port: Option<u16>,
    pub response_port: Option<u16>,
    pub query_time: Option<Timestamp>,
    pub response_time: Option<Timestamp>,
    pub query_zone: Option<Name>,
    pub query_message: Option<Bytes>,
    pub response_message: Option<Bytes>,
}

/// Why a frame is not a usable dnstap message.
#[derive(Debug, Error, PartialEq)]
pub enum DecodeError {
    #[error("not a dnstap protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("dnstap payload is not a MESSAGE")]
    NotAMessage,
    #[error("unknown dnstap message type {0}")]
    UnknownMessageType(i32),
    #[error("{field} has {len} bytes, not an IPv4 or IPv6 address")]
    BadAddress { field: &'static str, len: usize },
    #[error("{field} {value} is not a port")]
    BadPort { field: &'static str, value: u32 },
    #[error("{field} nanoseconds {value} out of range")]
    BadTime { field: &'static str, value: u32 },
    #[error("query_zone is not a wire-format name")]
    BadQueryZone,
}

impl DecodeError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Protobuf(_) => "protobuf",
            Self::NotAMessage => "not_message",
            Self::UnknownMessageType(_) => "unknown_message_type",
            Self::BadAddress { .. } => "bad_address",
            Self::BadPort { .. } => "bad_port",
            Self::BadTime { .. } => "bad_time",
            Self::BadQueryZone => "bad_query_zone",
        }
    }
}

/// A DNS message that does not parse.
#[derive(Debug, Error)]
#[error("DNS message does not parse: {0}")]
pub struct DnsParseError(pub String);

impl DnsParseError {
    pub fn label(&self) -> &'static str {
        "dns_malformed"
    }
}

pub(super) fn address(field: &'static str, raw: Option<&[u8]>) -> Result<Option<IpAddr>, DecodeError> {
    let Some(raw) = raw else { return Ok(None) };
    match raw.len() {
        0 => Ok(None),
        4 => Ok(Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])))),
        16 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(raw);
            Ok(Some(IpAddr::V6(Ipv6Addr::from(octets))))
        }
        len => Err(DecodeError::BadAddress { field, len }),
    }
}

pub(super) fn port(field: &'static str, raw: Option<u32>) -> Result<Option<u16>, DecodeError> {
    raw.map(|value| u16::try_from(value).map_err(|_| DecodeError::BadPort { field, value })).transpose()
}

pub(super) fn time(field: &'static str, sec: Option<u64>, nsec: Option<u32>) -> Result<Option<Timestamp>, DecodeError> {
    match (sec, nsec) {
        (None, _) => Ok(None),
        (Some(_), Some(n)) if n >= 1_000_000_000 => Err(DecodeError::BadTime { field, value: n }),
        (Some(sec), nsec) => Ok(Some(Timestamp { sec, nsec: nsec.unwrap_or(0) })),
    }
}

/// Decodes one dnstap frame. The frame's bytes are shared, not copied, by the messages.
pub fn decode(frame: Bytes) -> Result<DnstapEvent, DecodeError> {
    let top = pb::Dnstap::decode(frame)?;
    if top.r#type != pb::dnstap::Type::Message as i32 {
        return Err(DecodeError::NotAMessage);
    }
    let m = top.message.ok_or(DecodeError::NotAMessage)?;
    let kind = MessageType::try_from(m.r#type).map_err(|_| DecodeError::UnknownMessageType(m.r#type))?;
    let query_zone = match m.query_zone {
        Some(z) if !z.is_empty() => Some(Name::from_bytes(&z).map_err(|_| DecodeError::BadQueryZone)?),
        _ => None,
    };
    let message = DnstapMessage {
        kind,
        socket_family: m.socket_family.and_then(|f| SocketFamily::try_from(f).ok()),
        socket_protocol: m.socket_protocol.and_then(|p| SocketProtocol::try_from(p).ok()),
        query_address: address("query_address", m.query_address.as_deref())?,
        response_address: address("response_address", m.response_address.as_deref())?,
        query_port: port("query_port", m.query_port)?,
        response_port: port("response_port", m.response_port)?,
        query_time: time("query_time", m.query_time_sec, m.query_time_nsec)?,
        response_time: time("response_time", m.response_time_sec, m.response_time_nsec)?,
        query_zone,
        query_message: m.query_message,
        response_message: m.response_message,
    };
    Ok(DnstapEvent { identity: top.identity, version: top.version, message })
}

fn address_bytes(a: Option<IpAddr>) -> Option<Bytes> {
    a.map(|a| match a {
        IpAddr::V4(v4) => Bytes::copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => Bytes::copy_from_slice(&v6.octets()),
    })
}

/// Encodes an event as a dnstap protobuf payload.
pub fn encode(event: &DnstapEvent) -> Vec<u8> {
    let m = &event.message;
    let message = pb::Message {
        r#type: m.kind as i32,
        socket_family: m.socket_family.map(|f| f as i32),
        socket_protocol: m.socket_protocol.map(|p| p as i32),
        query_address: address_bytes(m.query_address),
        response_address: address_bytes(m.response_address),
        query_port: m.query_port.map(u32::from),
        response_port: m.response_port.map(u32::from),
        query_time_sec: m.query_time.map(|t| t.sec),
        query_time_nsec: m.query_time.map(|t| t.nsec),
        query_message: m.query_message.clone(),
        query_zone: m.query_zone.as_ref().and_then(|z| {
            use hickory_proto::serialize::binary::BinEncodable;
            z.to_bytes().ok().map(Bytes::from)
        }),
        response_time_sec: m.response_time.map(|t| t.sec),
        response_time_nsec: m.response_time.map(|t| t.nsec),
        response_message: m.response_message.clone(),
        policy: None,
        http_protocol: None,
    };
    pb::Dnstap {
        identity: event.identity.clone(),
        version: event.version.clone(),
        extra: None,
        r#type: pb::dnstap::Type::Message as i32,
        message: Some(message),
    }
    .encode_to_vec()
}

/// Parses a wire-format DNS message (header, question, all sections, rdata).
pub fn parse_dns(wire: &[u8]) -> Result<Message, DnsParseError> {
    Message::from_vec(wire).map_err(|e| DnsParseError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DnstapEvent {
        DnstapEvent {
            identity: Some(Bytes::from_static(b"ns")),
            version: None,
            message: DnstapMessage {
                kind: MessageType::ResolverResponse,
                socket_family: Some(SocketFamily::Inet6),
                socket_protocol: Some(SocketProtocol::Udp),
                query_address: Some("2001:db8::1".parse().unwrap()),
                response_address: Some("192.0.2.53".parse().unwrap()),
                query_port: Some(40000),
                response_port: Some(53),
                query_time: Some(Timestamp { sec: 1_700_000_000, nsec: 1 }),
                response_time: Some(Timestamp { sec: 1_700_000_000, nsec: 999_999_999 }),
                query_zone: Some(Name::from_ascii("example.com.").unwrap()),
                query_message: None,
                response_message: Some(Bytes::from_static(b"\x12\x34")),
            },
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let ev = sample();
        assert_eq!(decode(Bytes::from(encode(&ev))).unwrap(), ev);
    }

    #[test]
    fn bad_fields_are_typed_errors() {
        assert_eq!(decode(Bytes::from_static(b"\xff\xff\xff")).unwrap_err().label(), "protobuf");
        let mut bad = pb::Dnstap::decode(Bytes::from(encode(&sample()))).unwrap();
        bad.message.as_mut().unwrap().query_address = Some(Bytes::from_static(b"\x01\x02\x03"));
        assert_eq!(decode(Bytes::from(bad.encode_to_vec())).unwrap_err().label(), "bad_address");
        let mut bad = pb::Dnstap::decode(Bytes::from(encode(&sample()))).unwrap();
        bad.message.as_mut().unwrap().query_port = Some(70000);
        assert_eq!(decode(Bytes::from(bad.encode_to_vec())).unwrap_err().label(), "bad_port");
        let mut bad = pb::Dnstap::decode(Bytes::from(encode(&sample()))).unwrap();
        bad.message.as_mut().unwrap().query_zone = Some(Bytes::from_static(b"\x40abc"));
        assert_eq!(decode(Bytes::from(bad.encode_to_vec())).unwrap_err().label(), "bad_query_zone");
        let mut bad = pb::Dnstap::decode(Bytes::from(encode(&sample()))).unwrap();
        bad.message = None;
        assert_eq!(decode(Bytes::from(bad.encode_to_vec())).unwrap_err().label(), "not_message");
    }
}
