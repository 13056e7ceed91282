//! The fields of a dnstap frame that the sensor's stages read, borrowed from the frame: no
//! `Bytes` per field, no hickory `Name` for `query_zone` (together a quarter of the stages'
//! instructions went into building and dropping them).
//!
//! [`view`] reads frames as senders write them (one `message`, no `policy`, no groups; a
//! field given twice keeps its last value, as in prost) with a protobuf
//! reader of its own and checks every field as [`super::decode`] does, with the same errors
//! in the same order; anything unusual (a second `message`, a `policy`, groups, a field of an
//! unexpected wire type, a bad varint or length) it leaves to `decode`, and
//! [`TapView::of`] views what that gives. The tests compare the two on mutated frames.

use std::borrow::Cow;
use std::net::IpAddr;

use hickory_proto::serialize::binary::BinEncodable;

use super::MessageType;
use super::decode::{DecodeError, DnstapEvent, Timestamp, address, port, time};
use super::pb;

/// What the sensor reads of a dnstap message.
#[derive(Clone, Debug, PartialEq)]
pub struct TapView<'a> {
    pub kind: MessageType,
    pub response_address: Option<IpAddr>,
    pub query_time: Option<Timestamp>,
    pub response_time: Option<Timestamp>,
    /// The bailiwick in wire format, up to and including its root label (checked).
    pub query_zone: Option<Cow<'a, [u8]>>,
    pub response_message: Option<&'a [u8]>,
}

impl<'a> TapView<'a> {
    /// The view of a decoded event.
    pub fn of(ev: &'a DnstapEvent) -> Self {
        let m = &ev.message;
        TapView {
            kind: m.kind,
            response_address: m.response_address,
            query_time: m.query_time,
            response_time: m.response_time,
            query_zone: m.query_zone.as_ref().and_then(|z| z.to_bytes().ok()).map(Cow::Owned),
            response_message: m.response_message.as_deref(),
        }
    }
}

/// Reads protobuf fields off a frame.
struct Fields<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn more(&self) -> bool {
        self.at < self.buf.len()
    }

    /// Keys, lengths and types: nearly all varints of a frame are one byte, read in place; the
    /// others out of line.
    #[inline(always)]
    fn varint(&mut self) -> Option<u64> {
        let first = *self.buf.get(self.at)?;
        if first < 0x80 {
            self.at += 1;
            return Some(u64::from(first));
        }
        self.long_varint()
    }

    #[inline(never)]
    fn long_varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = *self.buf.get(self.at)?;
            self.at += 1;
            // The tenth byte may only hold the 64th bit, as prost requires.
            if i == 9 && b > 1 {
                return None;
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Some(value);
            }
        }
        None
    }

    /// The next field's number and wire type.
    fn key(&mut self) -> Option<(u64, u8)> {
        let key = self.varint()?;
        let field = key >> 3;
        (key <= u64::from(u32::MAX) && field != 0).then_some((field, (key & 7) as u8))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        let b = self.buf.get(self.at..self.at.checked_add(len)?)?;
        self.at += len;
        Some(b)
    }

    fn fixed32(&mut self) -> Option<u32> {
        let b = self.buf.get(self.at..self.at + 4)?;
        self.at += 4;
        Some(u32::from_le_bytes(b.try_into().ok()?))
    }

    /// Skips a field not read here; groups and unknown wire types are left to prost.
    fn skip(&mut self, wire_type: u8) -> Option<()> {
        match wire_type {
            0 => self.varint().map(drop),
            1 => (self.buf.len() - self.at >= 8).then(|| self.at += 8),
            2 => self.bytes().map(drop),
            5 => self.fixed32().map(drop),
            _ => None,
        }
    }
}

/// The message fields as prost would hold them, borrowed.
#[derive(Default)]
struct Message<'a> {
    kind: i32,
    query_address: Option<&'a [u8]>,
    response_address: Option<&'a [u8]>,
    query_port: Option<u32>,
    response_port: Option<u32>,
    query_time_sec: Option<u64>,
    query_time_nsec: Option<u32>,
    query_zone: Option<&'a [u8]>,
    response_time_sec: Option<u64>,
    response_time_nsec: Option<u32>,
    response_message: Option<&'a [u8]>,
}

fn read(frame: &[u8]) -> Option<(i32, Option<Message<'_>>)> {
    // prost's defaults where a field is missing (for proto2 enums, the first value).
    let mut top_type = pb::Dnstap::default().r#type;
    let mut message = None;
    let mut f = Fields { buf: frame, at: 0 };
    while f.more() {
        match f.key()? {
            (1..=3, 2) => f.skip(2)?,
            (15, 0) => top_type = f.varint()? as i32,
            (14, 2) if message.is_none() => message = Some(read_message(f.bytes()?)?),
            (1..=3 | 14 | 15, _) => return None,
            (_, wire_type) => f.skip(wire_type)?,
        }
    }
    Some((top_type, message))
}

fn read_message(buf: &[u8]) -> Option<Message<'_>> {
    let mut m = Message { kind: pb::Message::default().r#type, ..Message::default() };
    let mut f = Fields { buf, at: 0 };
    while f.more() {
        match f.key()? {
            (1, 0) => m.kind = f.varint()? as i32,
            (2 | 3 | 16, 0) => f.skip(0)?,
            (4, 2) => m.query_address = Some(f.bytes()?),
            (5, 2) => m.response_address = Some(f.bytes()?),
            (6, 0) => m.query_port = Some(f.varint()? as u32),
            (7, 0) => m.response_port = Some(f.varint()? as u32),
            (8, 0) => m.query_time_sec = Some(f.varint()?),
            (9, 5) => m.query_time_nsec = Some(f.fixed32()?),
            (10, 2) => f.skip(2)?,
            (11, 2) => m.query_zone = Some(f.bytes()?),
            (12, 0) => m.response_time_sec = Some(f.varint()?),
            (13, 5) => m.response_time_nsec = Some(f.fixed32()?),
            (14, 2) => m.response_message = Some(f.bytes()?),
            (1..=16, _) => return None,
            (_, wire_type) => f.skip(wire_type)?,
        }
    }
    Some(m)
}

/// The length of the wire-format name at the start of `z` (hickory's rules for a name read
/// from the start of a buffer: no compression pointer can point before it, labels of at most
/// 63 bytes, 255 bytes in all; what follows the root label is ignored, as hickory does).
fn zone_len(z: &[u8]) -> Option<usize> {
    let mut p = 0;
    loop {
        let b = *z.get(p)?;
        if b == 0 {
            return Some(p + 1);
        }
        if b & 0xc0 != 0 {
            return None;
        }
        p += 1 + usize::from(b);
        if p + 1 > 255 || p >= z.len() {
            return None;
        }
    }
}

/// Reads one frame: `None` if it is to be left to [`super::decode`] (and [`TapView::of`]).
pub fn view(frame: &[u8]) -> Option<Result<TapView<'_>, DecodeError>> {
    let (top_type, message) = read(frame)?;
    Some(check(top_type, message))
}

fn check(top_type: i32, message: Option<Message<'_>>) -> Result<TapView<'_>, DecodeError> {
    if top_type != pb::dnstap::Type::Message as i32 {
        return Err(DecodeError::NotAMessage);
    }
    let m = message.ok_or(DecodeError::NotAMessage)?;
    let kind = MessageType::try_from(m.kind).map_err(|_| DecodeError::UnknownMessageType(m.kind))?;
    let query_zone = match m.query_zone {
        Some(z) if !z.is_empty() => Some(Cow::Borrowed(&z[..zone_len(z).ok_or(DecodeError::BadQueryZone)?])),
        _ => None,
    };
    address("query_address", m.query_address)?;
    let response_address = address("response_address", m.response_address)?;
    port("query_port", m.query_port)?;
    port("response_port", m.response_port)?;
    let query_time = time("query_time", m.query_time_sec, m.query_time_nsec)?;
    let response_time = time("response_time", m.response_time_sec, m.response_time_nsec)?;
    Ok(TapView { kind, response_address, query_time, response_time, query_zone, response_message: m.response_message })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::dnstap::decode;
    use crate::framestream::{DNSTAP_CONTENT_TYPE, FileReader};

    proptest::proptest! {
        /// A varint reads as prost reads it (value and bytes taken, or an error): any bytes,
        /// and prost's encoding of any value (of any length: shifted right), with anything
        /// after it.
        #[test]
        fn varints_read_as_prost_reads_them(
            raw in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..16),
            v in proptest::arbitrary::any::<u64>(),
            shift in 0u32..64,
            tail in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..9),
        ) {
            let mut encoded = Vec::new();
            prost::encoding::encode_varint(v, &mut encoded);
            encoded.extend_from_slice(&tail);
            let mut shorter = Vec::new();
            prost::encoding::encode_varint(v >> shift, &mut shorter);
            shorter.extend_from_slice(&tail);
            for bytes in [&raw, &encoded, &shorter] {
                let mut f = Fields { buf: bytes, at: 0 };
                let ours = f.varint().map(|x| (x, f.at));
                let mut b = &bytes[..];
                let theirs = prost::encoding::decode_varint(&mut b).ok().map(|x| (x, bytes.len() - b.len()));
                proptest::prop_assert_eq!(ours, theirs, "{:x?}", bytes);
            }
        }
    }

    /// The view gives what `decode` gives, the same error first, or leaves the frame to it: on
    /// the captures and generated frames, unusual hand-made ones, and 30 mutations of each.
    #[test]
    fn the_view_is_what_decode_gives() {
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let mut frames = Vec::new();
        for capture in ["unbound-resolver.dnstap", "bind-resolver.dnstap"] {
            let mut reader = FileReader::open(&data.join(capture), DNSTAP_CONTENT_TYPE).unwrap();
            frames.extend(std::iter::from_fn(|| reader.next_frame().unwrap()));
        }
        let dir = tempfile::tempdir().unwrap();
        let generated = dir.path().join("g.dnstap");
        let spec = crate::generate::GenerateSpec { frames: 300, names: 100, zones: 7, seed: 5, start: 1_800_000_000 };
        crate::generate::generate(&spec, &generated).unwrap();
        let mut reader = FileReader::open(&generated, DNSTAP_CONTENT_TYPE).unwrap();
        frames.extend(std::iter::from_fn(|| reader.next_frame().unwrap()));
        let plain = frames[0].to_vec();
        // An unknown field of each wire type, a group, a field twice, `message` twice, a
        // policy, a port too large for a u32, varints of 11 bytes and of 10 bytes beyond 64
        // bits, a wire type that does not fit its field.
        let unusual: [&[u8]; 9] = [
            b"\x98\x06\x07\xa1\x06\x01\x02\x03\x04\x05\x06\x07\x08\xa2\x06\x01x\xad\x06\x01\x02\x03\x04",
            b"\xa3\x06\x08\x01\xa4\x06",
            b"\x0a\x01a\x0a\x01b",
            b"\x72\x02\x08\x04\x72\x02\x30\x35",
            b"\x72\x04\x7a\x02\x0a\x00",
            b"\x72\x07\x30\xff\xff\xff\xff\x1f",
            b"\x78\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
            b"\x78\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02",
            b"\x72\x02\x09\x01",
        ];
        for u in unusual {
            frames.push(Bytes::from([&plain[..], u].concat()));
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut rand = || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545F4914F6CDD1D)
        };
        let (mut same, mut same_error, mut left) = (0, 0, 0);
        for frame in &frames {
            for i in 0..=30 {
                let mut f = frame.to_vec();
                if i > 0 && !f.is_empty() {
                    let at = (rand() % f.len() as u64) as usize;
                    let r = rand();
                    match r % 6 {
                        0 => f[at] ^= 1 << ((r >> 8) % 8),
                        1 => f.truncate(at),
                        2 => f[at] = f[at].wrapping_add(1),
                        3 => f[at] = f[at].wrapping_sub(1),
                        4 => f.insert(at, (r >> 8) as u8),
                        _ => f[at] = (r >> 8) as u8,
                    }
                }
                let decoded = decode(Bytes::from(f.clone()));
                match (view(&f), &decoded) {
                    (Some(Ok(v)), Ok(ev)) => {
                        assert_eq!(v, TapView::of(ev), "{f:?}");
                        same += 1;
                    }
                    (Some(Err(e)), Err(d)) => {
                        assert_eq!(e.label(), d.label(), "{f:?}");
                        same_error += 1;
                    }
                    (None, _) => left += 1,
                    (v, d) => panic!("view {v:?}, decode {d:?}: {f:?}"),
                }
            }
        }
        assert!(same > 5_000 && same_error > 500 && left > 100, "{same} {same_error} {left}");
        // Frames as senders write them are all read by the view.
        assert!(frames[..frames.len() - unusual.len()].iter().all(|f| matches!(view(f), Some(Ok(_)))));
    }

    /// With several bad fields, the view reports the one `decode` reports.
    #[test]
    fn errors_come_in_decodes_order() {
        use prost::Message as _;
        for bad in 1..128u32 {
            let mut m = pb::Message { r#type: MessageType::ResolverResponse as i32, ..Default::default() };
            let flag = |i: u32| bad & (1 << i) != 0;
            if flag(0) {
                m.query_zone = Some(Bytes::from_static(b"\x40abc"));
            }
            if flag(1) {
                m.query_address = Some(Bytes::from_static(b"\x01\x02\x03"));
            }
            if flag(2) {
                m.response_address = Some(Bytes::from_static(b"\x01"));
            }
            if flag(3) {
                m.query_port = Some(70_000);
            }
            if flag(4) {
                m.response_port = Some(65_536);
            }
            if flag(5) {
                (m.query_time_sec, m.query_time_nsec) = (Some(1), Some(1_000_000_000));
            }
            if flag(6) {
                (m.response_time_sec, m.response_time_nsec) = (Some(1), Some(2_000_000_000));
            }
            let top = pb::Dnstap { r#type: 1, message: Some(m), ..Default::default() };
            let frame = top.encode_to_vec();
            let decoded = decode(Bytes::from(frame.clone())).unwrap_err();
            let viewed = view(&frame).unwrap().unwrap_err();
            assert_eq!(viewed, decoded, "{bad:07b}");
        }
    }

    #[test]
    fn zones_follow_hickorys_rules() {
        use hickory_proto::rr::Name;
        use hickory_proto::serialize::binary::BinDecodable;
        let mut long = Vec::new();
        for len in [63, 63, 63, 61] {
            long.push(len as u8);
            long.extend(std::iter::repeat_n(b'a', len));
        }
        long.push(0);
        let mut longer = long.clone();
        longer[3 * 64] = 62;
        longer.insert(3 * 64 + 1, b'a');
        let cases: [&[u8]; 8] =
            [b"\x00", b"\x03com\x00", b"\x03com\x00trailing", b"\x03com", b"\xc0\x00", b"\x40a\x00", &long, &longer];
        for z in cases {
            let hickory = Name::from_bytes(z).ok().map(|n| n.to_bytes().unwrap());
            assert_eq!(zone_len(z).map(|n| z[..n].to_vec()), hickory, "{z:?}");
        }
    }
}
