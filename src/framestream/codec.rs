//! Frame Streams codec: pure `Decoder`/`Encoder` for data and control frames, no I/O.
//!
//! Wire format: a data frame is a non-zero 4-byte big-endian length and the payload. A control
//! frame is an escape (4 zero bytes), a 4-byte length, a 4-byte control type and fields (type 1 =
//! content type, each `u32 type, u32 len, bytes`). Every length is checked against its limit
//! before any memory is reserved. An oversized data frame is skipped without buffering it and
//! reported as [`Frame::Oversized`], so one bad frame never costs the connection or the memory.
//!
//! Used by the listener and the file reader (decode) and by the writers (encode); the
//! handshake rules live next door in `handshake.rs`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::error::FrameError;

/// fstrm caps control frames at 512 bytes; so do we.
pub const CONTROL_FRAME_MAX: usize = 512;
/// Default data frame limit: 1 MiB, far above the largest DNS message plus dnstap overhead.
pub const DATA_FRAME_DEFAULT: usize = 1 << 20;
/// The data frame limit may never be configured below 128 KiB: large DNS responses over TCP
/// (up to 64 KiB each, two per dnstap message) must always fit.
pub const DATA_FRAME_MIN_LIMIT: usize = 128 * 1024;
/// ... nor above 64 MiB, hundreds of times what a dnstap message needs (the sensor's window
/// keeps an RRset's text with a `u32` length; src/sensor/window.rs).
pub const DATA_FRAME_MAX_LIMIT: usize = 64 << 20;
/// The content type of dnstap payloads.
pub const DNSTAP_CONTENT_TYPE: &[u8] = b"protobuf:dnstap.Dnstap";

const FIELD_CONTENT_TYPE: u32 = 1;

/// Frame Streams control frame types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ControlType {
    Accept = 1,
    Start = 2,
    Stop = 3,
    Ready = 4,
    Finish = 5,
}

impl ControlType {
    fn from_u32(value: u32) -> Option<Self> {
        Some(match value {
            1 => Self::Accept,
            2 => Self::Start,
            3 => Self::Stop,
            4 => Self::Ready,
            5 => Self::Finish,
            _ => return None,
        })
    }

    /// The name fstrm uses in its logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Accept => "ACCEPT",
            Self::Start => "START",
            Self::Stop => "STOP",
            Self::Ready => "READY",
            Self::Finish => "FINISH",
        }
    }
}

/// A control frame and its content-type fields (other field types are skipped on decode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlFrame {
    pub kind: ControlType,
    pub content_types: Vec<Bytes>,
}

impl ControlFrame {
    pub fn new(kind: ControlType) -> Self {
        Self { kind, content_types: Vec::new() }
    }

    pub fn with_content_type(kind: ControlType, content_type: &[u8]) -> Self {
        Self { kind, content_types: vec![Bytes::copy_from_slice(content_type)] }
    }

    /// Length of the frame after the escape and length words.
    fn body_len(&self) -> usize {
        4 + self.content_types.iter().map(|ct| 8 + ct.len()).sum::<usize>()
    }

    /// Whether `content_type` is among the frame's content types.
    pub fn offers(&self, content_type: &[u8]) -> bool {
        self.content_types.iter().any(|ct| ct.as_ref() == content_type)
    }
}

/// One decoded unit of a Frame Streams byte stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Data(Bytes),
    Control(ControlFrame),
    /// A data frame longer than the limit; its bytes are being discarded as they arrive.
    Oversized {
        len: u32,
    },
}

/// Frame Streams codec with a data frame limit.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_data: usize,
    /// Bytes of an oversized frame still to be discarded.
    skipping: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self { max_data: DATA_FRAME_DEFAULT, skipping: 0 }
    }
}

impl FrameCodec {
    /// A codec accepting data frames up to `max_data` bytes (raised to 128 KiB if lower).
    pub fn new(max_data: usize) -> Self {
        Self { max_data: max_data.max(DATA_FRAME_MIN_LIMIT), skipping: 0 }
    }

    pub fn max_data(&self) -> usize {
        self.max_data
    }

    /// True when no frame is partly consumed: EOF here is a clean end of stream.
    pub fn is_idle(&self, buffered: &BytesMut) -> bool {
        self.skipping == 0 && buffered.is_empty()
    }
}

fn be_u32(src: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([src[at], src[at + 1], src[at + 2], src[at + 3]])
}

/// Parses a control frame body (type word and fields).
fn parse_control(mut body: &[u8]) -> Result<ControlFrame, FrameError> {
    let raw_type = body.get_u32();
    let kind = ControlType::from_u32(raw_type).ok_or(FrameError::UnknownControlType(raw_type))?;
    let mut content_types = Vec::new();
    while !body.is_empty() {
        if body.len() < 8 {
            return Err(FrameError::MalformedControl("truncated field header"));
        }
        let field_type = body.get_u32();
        let field_len = body.get_u32() as usize;
        if field_len > body.len() {
            return Err(FrameError::MalformedControl("field longer than frame"));
        }
        if field_type == FIELD_CONTENT_TYPE {
            content_types.push(Bytes::copy_from_slice(&body[..field_len]));
        }
        body.advance(field_len);
    }
    if matches!(kind, ControlType::Start) && content_types.len() > 1 {
        return Err(FrameError::MalformedControl("START with several content types"));
    }
    Ok(ControlFrame { kind, content_types })
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if self.skipping > 0 {
            let n = self.skipping.min(src.len());
            src.advance(n);
            self.skipping -= n;
            if self.skipping > 0 {
                return Ok(None);
            }
        }
        if src.len() < 4 {
            return Ok(None);
        }
        let len = be_u32(src, 0) as usize;
        if len == 0 {
            if src.len() < 8 {
                return Ok(None);
            }
            let control_len = be_u32(src, 4) as usize;
            if control_len > CONTROL_FRAME_MAX {
                return Err(FrameError::ControlTooLarge { len: control_len });
            }
            if control_len < 4 {
                return Err(FrameError::MalformedControl("control frame shorter than its type"));
            }
            if src.len() < 8 + control_len {
                src.reserve(8 + control_len - src.len());
                return Ok(None);
            }
            let frame = parse_control(&src[8..8 + control_len]);
            src.advance(8 + control_len);
            return frame.map(|c| Some(Frame::Control(c)));
        }
        if len > self.max_data {
            src.advance(4);
            self.skipping = len;
            let n = self.skipping.min(src.len());
            src.advance(n);
            self.skipping -= n;
            return Ok(Some(Frame::Oversized { len: len as u32 }));
        }
        // No `reserve` for the rest of the frame: the caller makes room. Frames split off
        // earlier share the buffer until they are dropped, so a reserve here, when the rest
        // does not fit, would allocate a new buffer while they are still held (the listener
        // hands its frames over first and then reuses the buffer).
        if src.len() < 4 + len {
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(Frame::Data(src.split_to(len).freeze())))
    }
}

/// Appends one data frame (length prefix and payload) to `dst`.
pub fn encode_data(payload: &[u8], max_data: usize, dst: &mut BytesMut) -> Result<(), FrameError> {
    if payload.is_empty() {
        return Err(FrameError::EmptyDataFrame);
    }
    if payload.len() > max_data || payload.len() > u32::MAX as usize {
        return Err(FrameError::DataTooLarge { len: payload.len(), limit: max_data });
    }
    dst.reserve(4 + payload.len());
    dst.put_u32(payload.len() as u32);
    dst.put_slice(payload);
    Ok(())
}

/// Appends one control frame to `dst`.
pub fn encode_control(frame: &ControlFrame, dst: &mut BytesMut) -> Result<(), FrameError> {
    let body_len = frame.body_len();
    if body_len > CONTROL_FRAME_MAX {
        return Err(FrameError::ControlTooLarge { len: body_len });
    }
    dst.reserve(8 + body_len);
    dst.put_u32(0);
    dst.put_u32(body_len as u32);
    dst.put_u32(frame.kind as u32);
    for ct in &frame.content_types {
        dst.put_u32(FIELD_CONTENT_TYPE);
        dst.put_u32(ct.len() as u32);
        dst.put_slice(ct);
    }
    Ok(())
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        match item {
            Frame::Data(payload) => encode_data(&payload, self.max_data, dst),
            Frame::Control(control) => encode_control(&control, dst),
            Frame::Oversized { len } => Err(FrameError::DataTooLarge { len: len as usize, limit: self.max_data }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(codec: &mut FrameCodec, buf: &mut BytesMut) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(buf).expect("valid stream") {
            out.push(frame);
        }
        out
    }

    fn ready_bytes() -> Vec<u8> {
        // What unbound, BIND, Knot Resolver and NSD send first (DOMAIN.md).
        let mut v = hex("0000000000000022000000040000000100000016");
        v.extend_from_slice(DNSTAP_CONTENT_TYPE);
        v
    }

    fn hex(s: &str) -> Vec<u8> {
        let s = if s.len() % 2 == 1 { format!("{s}0") } else { s.to_string() };
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn decodes_ready_exactly_as_peers_send_it() {
        let mut bytes = hex("00000000000000220000000400000001");
        bytes.extend_from_slice(&[0, 0, 0, 0x16]);
        bytes.extend_from_slice(DNSTAP_CONTENT_TYPE);
        let mut buf = BytesMut::from(&bytes[..]);
        let frames = decode_all(&mut FrameCodec::default(), &mut buf);
        assert_eq!(
            frames,
            vec![Frame::Control(ControlFrame::with_content_type(ControlType::Ready, DNSTAP_CONTENT_TYPE))]
        );
        let mut out = BytesMut::new();
        encode_control(&ControlFrame::with_content_type(ControlType::Ready, DNSTAP_CONTENT_TYPE), &mut out).unwrap();
        assert_eq!(&out[..], &bytes[..]);
        let _ = ready_bytes;
    }

    #[test]
    fn split_header_waits_for_more() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&[0u8, 0, 0][..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[3, b'a', b'b']);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"c");
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::Data(Bytes::from_static(b"abc"))));
        assert!(codec.is_idle(&buf));
    }

    #[test]
    fn several_frames_in_one_read() {
        let mut buf = BytesMut::new();
        for p in [&b"one"[..], b"two", b"three"] {
            encode_data(p, DATA_FRAME_DEFAULT, &mut buf).unwrap();
        }
        let frames = decode_all(&mut FrameCodec::default(), &mut buf);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[2], Frame::Data(Bytes::from_static(b"three")));
    }

    #[test]
    fn eof_mid_frame_is_not_idle() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&[0u8, 0, 0, 10, 1, 2][..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(!codec.is_idle(&buf));
    }

    #[test]
    fn oversized_data_frame_is_skipped_without_buffering() {
        let mut codec = FrameCodec::new(DATA_FRAME_MIN_LIMIT);
        let len = DATA_FRAME_MIN_LIMIT + 1;
        let mut buf = BytesMut::new();
        buf.put_u32(len as u32);
        buf.put_slice(&vec![7u8; 1000]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::Oversized { len: len as u32 }));
        assert!(buf.is_empty(), "skipped bytes are released, not kept");
        assert!(buf.capacity() < len, "no allocation for the oversized payload");
        buf.put_slice(&vec![7u8; len - 1000]);
        encode_data(b"next", DATA_FRAME_DEFAULT, &mut buf).unwrap();
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::Data(Bytes::from_static(b"next"))));
    }

    #[test]
    fn frames_of_128_kib_are_accepted_at_the_minimum_limit() {
        let mut codec = FrameCodec::new(1);
        assert_eq!(codec.max_data(), DATA_FRAME_MIN_LIMIT);
        let payload = vec![1u8; DATA_FRAME_MIN_LIMIT];
        let mut buf = BytesMut::new();
        encode_data(&payload, codec.max_data(), &mut buf).unwrap();
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::Data(Bytes::from(payload))));
    }

    #[test]
    fn oversized_control_frame_is_an_error_before_buffering() {
        let mut buf = BytesMut::from(&hex("0000000000000201")[..]);
        let err = FrameCodec::default().decode(&mut buf).unwrap_err();
        assert!(matches!(err, FrameError::ControlTooLarge { len: 513 }), "{err:?}");
    }

    #[test]
    fn malformed_control_frames_are_errors() {
        for (case, bytes) in [
            ("too short", "0000000000000002aaaa"),
            ("unknown type", "000000000000000400000009"),
            ("field past end", "00000000000000100000000400000001000000ff61626364"),
            ("truncated field header", "0000000000000008000000040000000a"),
        ] {
            let mut buf = BytesMut::from(&hex(bytes)[..]);
            assert!(FrameCodec::default().decode(&mut buf).is_err(), "{case} accepted");
        }
    }

    #[test]
    fn encoder_refuses_what_the_decoder_would_not_accept() {
        let mut buf = BytesMut::new();
        assert!(encode_data(b"", DATA_FRAME_DEFAULT, &mut buf).is_err());
        assert!(encode_data(&[0u8; 200_000], DATA_FRAME_MIN_LIMIT, &mut buf).is_err());
        let huge = ControlFrame::with_content_type(ControlType::Ready, &[b'x'; 600]);
        assert!(encode_control(&huge, &mut buf).is_err());
        assert!(buf.is_empty());
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let data = proptest::collection::vec(any::<u8>(), 1..2000).prop_map(|v| Frame::Data(Bytes::from(v)));
        let kind = prop_oneof![
            Just(ControlType::Accept),
            Just(ControlType::Ready),
            Just(ControlType::Stop),
            Just(ControlType::Finish),
        ];
        let control = (kind, proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..4)).prop_map(
            |(kind, cts)| {
                Frame::Control(ControlFrame { kind, content_types: cts.into_iter().map(Bytes::from).collect() })
            },
        );
        let start = proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|ct| {
            Frame::Control(ControlFrame {
                kind: ControlType::Start,
                content_types: ct.into_iter().map(Bytes::from).collect(),
            })
        });
        prop_oneof![4 => data, 1 => control, 1 => start]
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(frames in proptest::collection::vec(arb_frame(), 0..20)) {
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::new();
            for f in &frames {
                codec.encode(f.clone(), &mut buf).unwrap();
            }
            prop_assert_eq!(decode_all(&mut codec, &mut buf), frames);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn decoding_does_not_depend_on_read_boundaries(
            frames in proptest::collection::vec(arb_frame(), 1..10),
            cuts in proptest::collection::vec(1usize..700, 1..40),
        ) {
            let mut codec = FrameCodec::default();
            let mut whole = BytesMut::new();
            for f in &frames {
                codec.encode(f.clone(), &mut whole).unwrap();
            }
            let mut pieces = Vec::new();
            let mut rest = &whole[..];
            for c in cuts.iter().cycle() {
                if rest.is_empty() { break; }
                let n = (*c).min(rest.len());
                pieces.push(&rest[..n]);
                rest = &rest[n..];
            }
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for p in pieces {
                buf.extend_from_slice(p);
                got.extend(decode_all(&mut codec, &mut buf));
            }
            prop_assert_eq!(got, frames);
        }

        #[test]
        fn random_bytes_never_panic_and_never_overallocate(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut codec = FrameCodec::new(DATA_FRAME_MIN_LIMIT);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
            prop_assert!(buf.capacity() <= 4096 + DATA_FRAME_MIN_LIMIT + 8);
        }
    }
}
