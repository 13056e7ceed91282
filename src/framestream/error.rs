//! Frame Streams errors: framing (codec), handshake (protocol state) and transport.

use thiserror::Error;

use super::codec::ControlType;

/// A byte stream that is not valid Frame Streams.
#[derive(Debug, Error)]
pub enum FrameError {
    #[error("control frame of {len} bytes exceeds the 512-byte limit")]
    ControlTooLarge { len: usize },
    #[error("unknown control frame type {0}")]
    UnknownControlType(u32),
    #[error("malformed control frame: {0}")]
    MalformedControl(&'static str),
    #[error("empty data frame cannot be encoded (length 0 is the control escape)")]
    EmptyDataFrame,
    #[error("data frame of {len} bytes exceeds the limit of {limit}")]
    DataTooLarge { len: usize, limit: usize },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// Metric label for the error kind.
    pub fn label(&self) -> &'static str {
        match self {
            Self::ControlTooLarge { .. } => "control_too_large",
            Self::UnknownControlType(_) => "control_unknown_type",
            Self::MalformedControl(_) => "control_malformed",
            Self::EmptyDataFrame => "empty_data_frame",
            Self::DataTooLarge { .. } => "data_too_large",
            Self::Io(_) => "io",
        }
    }
}

/// A peer that breaks the Frame Streams handshake.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("peer offers no content type we accept (wanted {wanted:?}, offered {offered:?})")]
    NoMatchingContentType { wanted: String, offered: Vec<String> },
    #[error("unexpected {got} control frame while {state}")]
    UnexpectedControl { got: &'static str, state: &'static str },
    #[error("data frame before START")]
    DataBeforeStart,
    #[error("data frame after STOP")]
    DataAfterStop,
}

impl HandshakeError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoMatchingContentType { .. } => "content_type_refused",
            Self::UnexpectedControl { .. } => "unexpected_control",
            Self::DataBeforeStart => "data_before_start",
            Self::DataAfterStop => "data_after_stop",
        }
    }

    pub(crate) fn unexpected(got: ControlType, state: &'static str) -> Self {
        Self::UnexpectedControl { got: got.name(), state }
    }
}

/// Reading or writing an fstrm file.
#[derive(Debug, Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a Frame Streams file: {source}")]
    Frame { path: String, source: FrameError },
    #[error("{path}: file does not begin with a START control frame")]
    NoStart { path: String },
    #[error("{path}: content type {found:?} is not {wanted:?}")]
    WrongContentType { path: String, found: String, wanted: String },
    #[error("{path}: unexpected {got} control frame at byte {offset}")]
    UnexpectedControl { path: String, got: &'static str, offset: u64 },
    #[error("{path}: truncated: the file ends inside a frame")]
    Truncated { path: String },
}
