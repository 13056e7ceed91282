//! The fstrm file format (what `fstrm_capture -w` and BIND's `dnstap-output file` write): a
//! unidirectional stream `START(content type)`, data frames, `STOP`.
//!
//! The reader decodes with the same codec as the listener, in large reads, handing out frames
//! as zero-copy slices of its buffer.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::codec::{ControlFrame, ControlType, DATA_FRAME_DEFAULT, Frame, FrameCodec, encode_control};
use super::error::{FileError, FrameError};

const READ_CHUNK: usize = 1 << 20;

/// Writes a Frame Streams file.
pub struct FileWriter<W: Write> {
    inner: W,
    frames: u64,
}

impl FileWriter<BufWriter<File>> {
    pub fn create(path: &Path, content_type: &[u8]) -> io::Result<Self> {
        Self::new(BufWriter::with_capacity(1 << 20, File::create(path)?), content_type)
    }
}

impl<W: Write> FileWriter<W> {
    /// Starts the stream (writes START with the content type).
    pub fn new(mut inner: W, content_type: &[u8]) -> io::Result<Self> {
        let mut buf = BytesMut::new();
        encode_control(&ControlFrame::with_content_type(ControlType::Start, content_type), &mut buf)
            .map_err(io::Error::other)?;
        inner.write_all(&buf)?;
        Ok(Self { inner, frames: 0 })
    }

    pub fn write_frame(&mut self, payload: &[u8]) -> io::Result<()> {
        if payload.is_empty() {
            return Err(io::Error::other(FrameError::EmptyDataFrame));
        }
        let len = u32::try_from(payload.len()).map_err(io::Error::other)?;
        self.inner.write_all(&len.to_be_bytes())?;
        self.inner.write_all(payload)?;
        self.frames += 1;
        Ok(())
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Ends the stream (writes STOP) and flushes.
    pub fn finish(mut self) -> io::Result<W> {
        let mut buf = BytesMut::new();
        encode_control(&ControlFrame::new(ControlType::Stop), &mut buf).map_err(io::Error::other)?;
        self.inner.write_all(&buf)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

/// Reads a Frame Streams file frame by frame.
pub struct FileReader<R: Read> {
    inner: R,
    path: String,
    codec: FrameCodec,
    buf: BytesMut,
    offset: u64,
    done: bool,
    /// Oversized frames skipped so far.
    pub oversized: u64,
}

impl FileReader<File> {
    /// Opens `path` and checks that it starts with START of `content_type`.
    pub fn open(path: &Path, content_type: &[u8]) -> Result<Self, FileError> {
        let file = File::open(path).map_err(|source| FileError::Io { path: path.display().to_string(), source })?;
        Self::new(file, &path.display().to_string(), content_type, DATA_FRAME_DEFAULT)
    }
}

impl<R: Read> FileReader<R> {
    pub fn new(inner: R, path: &str, content_type: &[u8], max_frame: usize) -> Result<Self, FileError> {
        let mut reader = Self {
            inner,
            path: path.to_string(),
            codec: FrameCodec::new(max_frame),
            buf: BytesMut::new(),
            offset: 0,
            done: false,
            oversized: 0,
        };
        match reader.next_raw()? {
            Some(Frame::Control(c)) if c.kind == ControlType::Start => match c.content_types.first() {
                Some(ct) if ct.as_ref() != content_type => Err(FileError::WrongContentType {
                    path: reader.path.clone(),
                    found: String::from_utf8_lossy(ct).into_owned(),
                    wanted: String::from_utf8_lossy(content_type).into_owned(),
                }),
                _ => Ok(reader),
            },
            _ => Err(FileError::NoStart { path: reader.path.clone() }),
        }
    }

    fn fill(&mut self) -> Result<usize, FileError> {
        let len = self.buf.len();
        if self.buf.capacity() - len < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        let spare = self.buf.capacity() - len;
        self.buf.resize(len + spare, 0);
        let read = loop {
            match self.inner.read(&mut self.buf[len..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    self.buf.truncate(len);
                    return Err(FileError::Io { path: self.path.clone(), source });
                }
            }
        };
        self.buf.truncate(len + read);
        Ok(read)
    }

    fn next_raw(&mut self) -> Result<Option<Frame>, FileError> {
        loop {
            let before = self.buf.len();
            match self.codec.decode(&mut self.buf) {
                Ok(Some(frame)) => {
                    self.offset += (before - self.buf.len()) as u64;
                    return Ok(Some(frame));
                }
                Ok(None) => {}
                Err(source) => return Err(FileError::Frame { path: self.path.clone(), source }),
            }
            self.offset += (before - self.buf.len()) as u64;
            if self.fill()? == 0 {
                if self.codec.is_idle(&self.buf) {
                    return Ok(None);
                }
                return Err(FileError::Truncated { path: self.path.clone() });
            }
        }
    }

    /// The next data frame; `None` at STOP or at a clean end of file (a writer that died
    /// between frames leaves no STOP).
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FileError> {
        while !self.done {
            match self.next_raw()? {
                Some(Frame::Data(payload)) => return Ok(Some(payload)),
                Some(Frame::Oversized { .. }) => self.oversized += 1,
                Some(Frame::Control(c)) if c.kind == ControlType::Stop => self.done = true,
                Some(Frame::Control(c)) => {
                    return Err(FileError::UnexpectedControl {
                        path: self.path.clone(),
                        got: c.kind.name(),
                        offset: self.offset,
                    });
                }
                None => self.done = true,
            }
        }
        Ok(None)
    }
}

impl<R: Read> Iterator for FileReader<R> {
    type Item = Result<Bytes, FileError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framestream::codec::DNSTAP_CONTENT_TYPE;

    #[test]
    fn written_file_reads_back() {
        let mut w = FileWriter::new(Vec::new(), DNSTAP_CONTENT_TYPE).unwrap();
        for i in 1..=1000u32 {
            w.write_frame(&i.to_be_bytes().repeat(i as usize % 50 + 1)).unwrap();
        }
        let bytes = w.finish().unwrap();
        let frames: Vec<Bytes> = FileReader::new(&bytes[..], "mem", DNSTAP_CONTENT_TYPE, DATA_FRAME_DEFAULT)
            .unwrap()
            .map(|f| f.unwrap())
            .collect();
        assert_eq!(frames.len(), 1000);
        assert_eq!(frames[998].as_ref(), 999u32.to_be_bytes().repeat(50));
        assert_eq!(frames[999].as_ref(), 1000u32.to_be_bytes());
    }

    #[test]
    fn truncated_file_is_an_error_not_a_short_read() {
        let mut w = FileWriter::new(Vec::new(), DNSTAP_CONTENT_TYPE).unwrap();
        w.write_frame(b"hello world").unwrap();
        let bytes = w.finish().unwrap();
        let cut = &bytes[..bytes.len() - 12 - 3];
        let mut r = FileReader::new(cut, "mem", DNSTAP_CONTENT_TYPE, DATA_FRAME_DEFAULT).unwrap();
        assert!(matches!(r.next_frame(), Err(FileError::Truncated { .. })));
    }

    #[test]
    fn wrong_content_type_and_missing_start_are_refused() {
        let w = FileWriter::new(Vec::new(), b"protobuf:other").unwrap();
        let bytes = w.finish().unwrap();
        assert!(matches!(
            FileReader::new(&bytes[..], "mem", DNSTAP_CONTENT_TYPE, DATA_FRAME_DEFAULT),
            Err(FileError::WrongContentType { .. })
        ));
        let garbage = b"\x00\x00\x00\x05hello";
        assert!(matches!(
            FileReader::new(&garbage[..], "mem", DNSTAP_CONTENT_TYPE, DATA_FRAME_DEFAULT),
            Err(FileError::NoStart { .. })
        ));
    }
}
