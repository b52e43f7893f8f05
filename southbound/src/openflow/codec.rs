//! Byte-level helpers shared by the OpenFlow message and OXM codecs.
//!
//! ```text
//!  ofp_header (OpenFlow 1.3.5, 7.1)
//!  0               1               2               3
//!  +---------------+---------------+-------------------------------+
//!  |    version    |     type      |            length             |
//!  +---------------+---------------+-------------------------------+
//!  |                              xid                              |
//!  +---------------------------------------------------------------+
//! ```

pub const VERSION: u8 = 0x04;
pub const HEADER_LEN: usize = 8;

/// Why bytes are not an OpenFlow 1.3 message. Each variant says what was being read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{what}: needs {need} bytes, {have} left")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("version {0:#04x} is not OpenFlow 1.3 (0x04)")]
    BadVersion(u8),
    #[error("{what}: length {len} is invalid ({why})")]
    BadLength {
        what: &'static str,
        len: usize,
        why: &'static str,
    },
    #[error("{what}: {value} is not a valid value")]
    BadValue { what: &'static str, value: u64 },
}

/// A message that cannot be encoded (it would not fit OpenFlow's 16-bit lengths).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is {len} bytes, more than OpenFlow's limit of 65535")]
pub struct EncodeError {
    pub what: &'static str,
    pub len: usize,
}

/// The length of the first complete message in `buf`, `Ok(None)` if more bytes are needed.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    if len < HEADER_LEN {
        return Err(DecodeError::BadLength {
            what: "ofp_header",
            len,
            why: "shorter than the header",
        });
    }
    Ok((buf.len() >= len).then_some(len))
}

/// A bounds-checked reader over a message body.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.left() < n {
            return Err(DecodeError::Truncated {
                what,
                need: n,
                have: self.left(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    pub fn skip(&mut self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        self.bytes(n, what).map(|_| ())
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.bytes(1, what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A sub-reader over the next `n` bytes.
    pub fn sub(&mut self, n: usize, what: &'static str) -> Result<Reader<'a>, DecodeError> {
        Ok(Reader::new(self.bytes(n, what)?))
    }
}

/// Pads `v` with zeros to a multiple of 8 bytes.
pub(crate) fn pad8(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(8) {
        v.push(0);
    }
}

pub(crate) fn padded8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

pub(crate) fn put_len(
    v: &mut [u8],
    at: usize,
    len: usize,
    what: &'static str,
) -> Result<(), EncodeError> {
    let l = u16::try_from(len).map_err(|_| EncodeError { what, len })?;
    v[at..at + 2].copy_from_slice(&l.to_be_bytes());
    Ok(())
}
