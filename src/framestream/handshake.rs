//! Frame Streams handshake as pure state machines (no I/O), one for each end.
//!
//! Reader (our listener): bidirectional `READY -> ACCEPT -> START ... STOP -> FINISH`, or
//! unidirectional `START ... STOP` (files, unbound with `dnstap-bidirectional: no`). The reader
//! picks our content type from READY's list and refuses a peer that does not offer it. A peer
//! that closes after STOP without reading FINISH (unbound does) is a normal end.
//!
//! Writer (our emitter and `tap replay`): `READY -> (ACCEPT) -> START ... STOP -> (FINISH)`.

use bytes::Bytes;

use super::codec::{ControlFrame, ControlType};
use super::error::HandshakeError;

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReaderState {
    Initial,
    Accepted,
    Started { bidirectional: bool },
    Stopped,
}

impl ReaderState {
    fn describe(self) -> &'static str {
        match self {
            Self::Initial => "waiting for READY or START",
            Self::Accepted => "waiting for START after ACCEPT",
            Self::Started { .. } => "receiving data",
            Self::Stopped => "stopped",
        }
    }
}

/// What the reader must do after a control frame.
#[derive(Debug, PartialEq, Eq)]
pub enum ReaderStep {
    /// Send this control frame to the peer, then continue reading.
    Reply(ControlFrame),
    /// Keep reading.
    Continue,
    /// The stream ended cleanly; send the frame if any (FINISH; a write error is normal), close.
    Finished(Option<ControlFrame>),
}

/// Reading end of a Frame Streams connection.
#[derive(Debug)]
pub struct ReaderHandshake {
    content_type: Bytes,
    state: ReaderState,
}

impl ReaderHandshake {
    pub fn new(content_type: &[u8]) -> Self {
        Self { content_type: Bytes::copy_from_slice(content_type), state: ReaderState::Initial }
    }

    /// True once START was received and data frames are expected.
    pub fn is_started(&self) -> bool {
        matches!(self.state, ReaderState::Started { .. })
    }

    pub fn is_finished(&self) -> bool {
        self.state == ReaderState::Stopped
    }

    fn check_start(&self, start: &ControlFrame) -> Result<(), HandshakeError> {
        // START may omit the content type; when present it must be ours.
        match start.content_types.first() {
            Some(ct) if *ct != self.content_type => Err(self.refusal(start)),
            _ => Ok(()),
        }
    }

    fn refusal(&self, frame: &ControlFrame) -> HandshakeError {
        HandshakeError::NoMatchingContentType {
            wanted: lossy(&self.content_type),
            offered: frame.content_types.iter().map(|c| lossy(c)).collect(),
        }
    }

    pub fn on_control(&mut self, frame: &ControlFrame) -> Result<ReaderStep, HandshakeError> {
        match (self.state, frame.kind) {
            (ReaderState::Initial, ControlType::Ready) => {
                if !frame.offers(&self.content_type) {
                    return Err(self.refusal(frame));
                }
                self.state = ReaderState::Accepted;
                Ok(ReaderStep::Reply(ControlFrame::with_content_type(ControlType::Accept, &self.content_type)))
            }
            (ReaderState::Initial, ControlType::Start) => {
                self.check_start(frame)?;
                self.state = ReaderState::Started { bidirectional: false };
                Ok(ReaderStep::Continue)
            }
            (ReaderState::Accepted, ControlType::Start) => {
                self.check_start(frame)?;
                self.state = ReaderState::Started { bidirectional: true };
                Ok(ReaderStep::Continue)
            }
            (ReaderState::Started { bidirectional }, ControlType::Stop) => {
                self.state = ReaderState::Stopped;
                let finish = bidirectional.then(|| ControlFrame::new(ControlType::Finish));
                Ok(ReaderStep::Finished(finish))
            }
            (state, kind) => Err(HandshakeError::unexpected(kind, state.describe())),
        }
    }

    /// Checks that a data frame may arrive now.
    pub fn on_data(&self) -> Result<(), HandshakeError> {
        match self.state {
            ReaderState::Started { .. } => Ok(()),
            ReaderState::Stopped => Err(HandshakeError::DataAfterStop),
            _ => Err(HandshakeError::DataBeforeStart),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriterState {
    Initial,
    AwaitAccept,
    Started,
    AwaitFinish,
    Done,
}

impl WriterState {
    fn describe(self) -> &'static str {
        match self {
            Self::Initial => "not yet started",
            Self::AwaitAccept => "waiting for ACCEPT",
            Self::Started => "sending data",
            Self::AwaitFinish => "waiting for FINISH",
            Self::Done => "finished",
        }
    }
}

/// Writing end of a bidirectional Frame Streams connection.
#[derive(Debug)]
pub struct WriterHandshake {
    content_type: Bytes,
    state: WriterState,
}

impl WriterHandshake {
    pub fn new(content_type: &[u8]) -> Self {
        Self { content_type: Bytes::copy_from_slice(content_type), state: WriterState::Initial }
    }

    /// The READY frame that opens the connection.
    pub fn ready(&mut self) -> ControlFrame {
        self.state = WriterState::AwaitAccept;
        ControlFrame::with_content_type(ControlType::Ready, &self.content_type)
    }

    /// Handles the reader's reply; returns START to send once ACCEPT chose our type.
    pub fn on_control(&mut self, frame: &ControlFrame) -> Result<Option<ControlFrame>, HandshakeError> {
        match (self.state, frame.kind) {
            (WriterState::AwaitAccept, ControlType::Accept) => {
                if !frame.offers(&self.content_type) {
                    return Err(HandshakeError::NoMatchingContentType {
                        wanted: lossy(&self.content_type),
                        offered: frame.content_types.iter().map(|c| lossy(c)).collect(),
                    });
                }
                self.state = WriterState::Started;
                Ok(Some(ControlFrame::with_content_type(ControlType::Start, &self.content_type)))
            }
            (WriterState::AwaitFinish, ControlType::Finish) => {
                self.state = WriterState::Done;
                Ok(None)
            }
            (state, kind) => Err(HandshakeError::unexpected(kind, state.describe())),
        }
    }

    pub fn is_started(&self) -> bool {
        self.state == WriterState::Started
    }

    /// The STOP frame that ends the stream; the reader answers FINISH.
    pub fn stop(&mut self) -> ControlFrame {
        self.state = WriterState::AwaitFinish;
        ControlFrame::new(ControlType::Stop)
    }

    pub fn is_done(&self) -> bool {
        self.state == WriterState::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framestream::codec::DNSTAP_CONTENT_TYPE;

    fn ready(cts: &[&[u8]]) -> ControlFrame {
        ControlFrame {
            kind: ControlType::Ready,
            content_types: cts.iter().map(|c| Bytes::copy_from_slice(c)).collect(),
        }
    }

    #[test]
    fn bidirectional_reader_and_writer_agree() {
        let mut writer = WriterHandshake::new(DNSTAP_CONTENT_TYPE);
        let mut reader = ReaderHandshake::new(DNSTAP_CONTENT_TYPE);
        let ReaderStep::Reply(accept) = reader.on_control(&writer.ready()).unwrap() else { panic!("no ACCEPT") };
        assert_eq!(accept, ControlFrame::with_content_type(ControlType::Accept, DNSTAP_CONTENT_TYPE));
        let start = writer.on_control(&accept).unwrap().expect("START");
        assert!(writer.is_started());
        assert_eq!(reader.on_data(), Err(HandshakeError::DataBeforeStart));
        assert_eq!(reader.on_control(&start).unwrap(), ReaderStep::Continue);
        assert!(reader.on_data().is_ok());
        let finish = match reader.on_control(&writer.stop()).unwrap() {
            ReaderStep::Finished(Some(f)) => f,
            other => panic!("{other:?}"),
        };
        assert_eq!(writer.on_control(&finish).unwrap(), None);
        assert!(writer.is_done() && reader.is_finished());
        assert_eq!(reader.on_data(), Err(HandshakeError::DataAfterStop));
    }

    #[test]
    fn reader_picks_dnstap_from_a_list() {
        let mut reader = ReaderHandshake::new(DNSTAP_CONTENT_TYPE);
        let step = reader.on_control(&ready(&[b"protobuf:other", DNSTAP_CONTENT_TYPE])).unwrap();
        assert_eq!(step, ReaderStep::Reply(ControlFrame::with_content_type(ControlType::Accept, DNSTAP_CONTENT_TYPE)));
    }

    #[test]
    fn reader_refuses_a_peer_without_dnstap() {
        let mut reader = ReaderHandshake::new(DNSTAP_CONTENT_TYPE);
        let err = reader.on_control(&ready(&[b"protobuf:other"])).unwrap_err();
        assert_eq!(err.label(), "content_type_refused");
        assert!(err.to_string().contains("protobuf:other"), "{err}");
        let mut reader = ReaderHandshake::new(DNSTAP_CONTENT_TYPE);
        let start = ControlFrame::with_content_type(ControlType::Start, b"text/plain");
        assert!(reader.on_control(&start).is_err());
    }

    #[test]
    fn unidirectional_start_without_ready() {
        let mut reader = ReaderHandshake::new(DNSTAP_CONTENT_TYPE);
        let start = ControlFrame::with_content_type(ControlType::Start, DNSTAP_CONTENT_TYPE);
        assert_eq!(reader.on_control(&start).unwrap(), ReaderStep::Continue);
        assert!(reader.on_data().is_ok());
        // No FINISH on a unidirectional stream.
        assert_eq!(reader.on_control(&ControlFrame::new(ControlType::Stop)).unwrap(), ReaderStep::Finished(None));
    }

    #[test]
    fn out_of_order_control_frames_are_violations() {
        let mut reader = ReaderHandshake::new(DNSTAP_CONTENT_TYPE);
        assert!(reader.on_control(&ControlFrame::new(ControlType::Stop)).is_err());
        let mut reader = ReaderHandshake::new(DNSTAP_CONTENT_TYPE);
        reader.on_control(&ready(&[DNSTAP_CONTENT_TYPE])).unwrap();
        assert!(reader.on_control(&ready(&[DNSTAP_CONTENT_TYPE])).is_err());
        let mut writer = WriterHandshake::new(DNSTAP_CONTENT_TYPE);
        writer.ready();
        assert!(writer.on_control(&ControlFrame::new(ControlType::Finish)).is_err());
        let mut writer = WriterHandshake::new(DNSTAP_CONTENT_TYPE);
        writer.ready();
        assert!(writer.on_control(&ControlFrame::with_content_type(ControlType::Accept, b"x")).is_err());
    }
}
