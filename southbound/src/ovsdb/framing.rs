//! Cutting a byte stream into whole JSON texts (RFC 7047 section 4: messages are JSON objects
//! sent back to back). Sans-IO: bytes in, values out.

use serde_json::Value;

/// Largest single message accepted (the Open_vSwitch schema is ~100 KiB; a full dump of a large
/// database a few MiB).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("byte {byte:#04x} outside any JSON object at offset {offset}")]
    Garbage { byte: u8, offset: usize },
    #[error("unbalanced '{0}'")]
    Unbalanced(char),
    #[error("message larger than {MAX_MESSAGE} bytes")]
    TooLarge,
    #[error("invalid JSON: {0}")]
    Json(String),
}

/// Accumulates bytes and yields complete JSON texts.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// How far `buf` has been scanned, with the scanner's state at that point.
    scanned: usize,
    depth: usize,
    in_string: bool,
    escape: bool,
    start: Option<usize>,
}

impl Framer {
    pub fn new() -> Self {
        Framer::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, if one is buffered.
    pub fn next_value(&mut self) -> Option<Result<Value, FrameError>> {
        while self.scanned < self.buf.len() {
            let i = self.scanned;
            let b = self.buf[i];
            self.scanned += 1;
            if self.in_string {
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' if self.depth > 0 => self.in_string = true,
                b'{' | b'[' => {
                    if self.depth == 0 {
                        self.start = Some(i);
                    }
                    self.depth += 1;
                }
                b'}' | b']' => {
                    if self.depth == 0 {
                        return Some(Err(self.fail(FrameError::Unbalanced(b as char))));
                    }
                    self.depth -= 1;
                    if self.depth == 0 {
                        let start = self.start.take().unwrap_or(0);
                        let parsed = serde_json::from_slice::<Value>(&self.buf[start..=i])
                            .map_err(|e| FrameError::Json(e.to_string()));
                        self.buf.drain(..=i);
                        self.scanned = 0;
                        return Some(parsed.map_err(|e| self.fail(e)));
                    }
                }
                b' ' | b'\t' | b'\r' | b'\n' if self.depth == 0 => {}
                _ if self.depth == 0 => {
                    return Some(Err(self.fail(FrameError::Garbage { byte: b, offset: i })))
                }
                _ => {}
            }
            if self.depth > 0 && self.scanned - self.start.unwrap_or(0) > MAX_MESSAGE {
                return Some(Err(self.fail(FrameError::TooLarge)));
            }
        }
        if self.depth == 0 {
            // Only whitespace left: drop it.
            self.buf.clear();
            self.scanned = 0;
        }
        None
    }

    /// A broken stream cannot be resynchronised: forget everything.
    fn fail(&mut self, e: FrameError) -> FrameError {
        *self = Framer::default();
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z{}\\[\\]\"\\\\ ,:]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z\"{}]{0,6}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_message() -> impl Strategy<Value = Value> {
        proptest::collection::btree_map("[a-z]{1,6}", arb_json(), 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_messages(msgs in proptest::collection::vec(arb_message(), 1..5), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6), ws in "[ \n]{0,2}") {
            let stream: Vec<u8> = msgs.iter().flat_map(|m| { let mut v = serde_json::to_vec(m).unwrap(); v.extend_from_slice(ws.as_bytes()); v }).collect();
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            points.sort();
            let mut f = Framer::new();
            let mut got = Vec::new();
            let mut prev = 0;
            for p in points.into_iter().chain([stream.len()]) {
                f.push(&stream[prev..p]);
                prev = p;
                while let Some(v) = f.next_value() {
                    got.push(v.unwrap());
                }
            }
            prop_assert_eq!(got, msgs);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut f = Framer::new();
            f.push(&bytes);
            for _ in 0..bytes.len() + 1 {
                if f.next_value().is_none() {
                    break;
                }
            }
        }
    }

    #[test]
    fn garbage_and_unbalanced_are_errors() {
        let mut f = Framer::new();
        f.push(b"x{}");
        assert!(matches!(
            f.next_value(),
            Some(Err(FrameError::Garbage { byte: b'x', .. }))
        ));
        let mut f = Framer::new();
        f.push(b"]");
        assert!(matches!(
            f.next_value(),
            Some(Err(FrameError::Unbalanced(']')))
        ));
        let mut f = Framer::new();
        f.push(br#"{"a": "}"} {"b""#);
        assert_eq!(
            f.next_value().unwrap().unwrap(),
            serde_json::json!({"a": "}"})
        );
        assert!(f.next_value().is_none(), "second message incomplete");
    }
}
