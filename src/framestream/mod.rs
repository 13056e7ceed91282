//! Frame Streams, the transport under dnstap: the codec (pure), the handshake (pure state
//! machines), the listener (what resolvers connect to), the writer (what our resolver and
//! `tap replay` send with) and the file format.

pub mod codec;
pub mod error;
pub mod file;
pub mod handshake;
pub mod listener;
pub mod writer;

pub use codec::{
    ControlFrame, ControlType, DATA_FRAME_DEFAULT, DATA_FRAME_MAX_LIMIT, DATA_FRAME_MIN_LIMIT, DNSTAP_CONTENT_TYPE,
    Frame, FrameCodec,
};
pub use error::{FileError, FrameError, HandshakeError};
pub use file::{FileReader, FileWriter};
pub use listener::{Endpoint, FrameSink, Listener, ListenerConfig, ListenerStats};
pub use writer::{FrameSender, Target, WriterConfig, WriterStats};
