//! The frame codec spoken on the collector's stdin and stdout, shared by both processes.
//!
//! # Frame format
//!
//! ```text
//! offset  size  field
//!      0     4  magic       FF 56 47 4C  ("\xFFVGL"; 0xFF never occurs in UTF-8 text)
//!      4     4  body_len    u32, little endian
//!      8     4  body_crc    CRC-32 (IEEE) of the body, little endian
//!     12     4  header_crc  CRC-32 of bytes 0..12, little endian
//!     16     n  body        one message, MessagePack (rmp-serde, structs as maps)
//! ```
//!
//! # Resynchronisation
//!
//! The stream may carry bytes that are not frames: a stray `println!`, a library writing to
//! fd 1, or the `garbage` fault. The decoder treats every byte that is not part of a
//! verified frame as text and hands it back line by line (the supervisor logs it as collector
//! output). A frame is only believed once its 16-byte header checks out: the magic must
//! match *and* the header CRC must agree, so a random run of bytes is taken for a header with
//! probability about 2^-64. When a candidate header fails, only its first byte is given up
//! as text and scanning resumes at the next byte, so a real frame that starts inside the
//! rejected candidate is still found. A verified header whose length exceeds the limit is
//! reported once and its body is skipped as it streams past, never buffered.
//!
//! The decoder never panics. The bytes it holds back between calls (a partial frame or line)
//! are bounded by `max_frame + max_line + 16`; its buffer can reach about twice that plus
//! one `feed` before it compacts. A property test in this file drives it with 1,000,000
//! random and mutated inputs.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = [0xFF, b'V', b'G', b'L'];
/// Bytes before the body.
pub const HEADER_LEN: usize = 16;
/// Default largest body the decoder accepts.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;
/// Default longest text line handed back in one piece (longer lines are split).
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;

/// Messages the supervisor sends down to the collector (on its stdin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToCollector {
    /// Liveness probe; answered with [`FromCollector::HeartbeatAck`] carrying the same `seq`.
    Heartbeat { seq: u64 },
    /// What to collect. Sent right after spawn and whenever it changes (a quarantine starts
    /// or ends); the child (re)starts its collector actors to match.
    Configure {
        collectors: Box<crate::config::CollectorsConfig>,
        /// Collectors not to run even if enabled (quarantined).
        disabled: Vec<String>,
        /// Host names of the upload URLs (the dns collector's default names).
        upload_hosts: Vec<String>,
    },
}

/// Messages the collector sends up to the supervisor (on its stdout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromCollector {
    /// First frame of every incarnation.
    Hello { pid: u32, version: String },
    /// Answer to [`ToCollector::Heartbeat`].
    HeartbeatAck { seq: u64 },
    /// Written, and in the pipe, before a collector's code runs: if the process dies before
    /// the matching `CollectionEnd`, this collector was in flight.
    CollectionBegin { collector: String },
    /// A collection finished (or failed): its samples and how long it took.
    CollectionEnd {
        collector: String,
        ts_ms: i64,
        duration_ms: f64,
        samples: Vec<crate::sample::Sample>,
        error: Option<String>,
    },
}

/// Why a frame could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("message body of {0} bytes does not fit the 32-bit length field")]
    TooLarge(usize),
}

/// Why bytes that looked like a frame were not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes; skipped")]
    Oversized { len: usize, max: usize },
    #[error("frame body checksum mismatch; dropped")]
    BadChecksum,
    #[error("frame body is not a valid message: {0}")]
    BadBody(String),
}

/// Encodes `msg` as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![0u8; HEADER_LEN];
    rmp_serde::encode::write_named(&mut out, msg)?;
    let body_len = out.len() - HEADER_LEN;
    if body_len > u32::MAX as usize {
        return Err(EncodeError::TooLarge(body_len));
    }
    let body_crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[..4].copy_from_slice(&MAGIC);
    out[4..8].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[8..12].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&out[..12]);
    out[12..16].copy_from_slice(&header_crc.to_le_bytes());
    Ok(out)
}

/// One thing found in the byte stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded<T> {
    /// A verified frame holding a valid message.
    Message(T),
    /// Bytes that are not part of any frame: one line without its `\n`, or a piece of a
    /// line cut at the line limit, at a frame, or at end of stream.
    Text(Vec<u8>),
    /// Something that claimed to be a frame and was not usable.
    Invalid(FrameError),
}

/// Incremental decoder: `feed` it bytes as they arrive, then drain `next_item` until `None`.
pub struct Decoder {
    buf: Vec<u8>,
    /// Start of unconsumed bytes in `buf`.
    pos: usize,
    /// Text bytes accumulated towards the next line.
    line: Vec<u8>,
    /// Body bytes of an oversized frame still to be discarded as they arrive.
    skip: usize,
    max_frame: usize,
    max_line: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME, DEFAULT_MAX_LINE)
    }
}

impl Decoder {
    pub fn new(max_frame: usize, max_line: usize) -> Self {
        Self { buf: Vec::new(), pos: 0, line: Vec::new(), skip: 0, max_frame, max_line: max_line.max(1) }
    }

    /// Appends bytes read from the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        // Skip an oversized body straight from the input only when nothing older is still
        // buffered; otherwise `next_item` skips the buffered part first, in order.
        if self.skip > 0 && self.pos == self.buf.len() {
            let n = self.skip.min(bytes.len());
            self.skip -= n;
            bytes = &bytes[n..];
        }
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held back waiting for more input (a partial line or a partial frame).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos + self.line.len()
    }

    /// The next complete item, or `None` when more input is needed.
    pub fn next_item<T: DeserializeOwned>(&mut self) -> Option<Decoded<T>> {
        loop {
            if self.line.len() >= self.max_line {
                return Some(Decoded::Text(std::mem::take(&mut self.line)));
            }
            if self.skip > 0 {
                // Discard what is already buffered of an oversized body.
                let avail = self.buf.len() - self.pos;
                let n = self.skip.min(avail);
                self.pos += n;
                self.skip -= n;
                if self.skip > 0 {
                    return None;
                }
            }
            let rest = &self.buf[self.pos..];
            if rest.is_empty() {
                return None;
            }
            // Everything before the first 0xFF is text.
            let text_end = rest.iter().position(|&b| b == MAGIC[0]).unwrap_or(rest.len());
            if let Some(nl) = rest[..text_end].iter().position(|&b| b == b'\n') {
                let room = self.max_line - self.line.len().min(self.max_line);
                let take = nl.min(room);
                self.line.extend_from_slice(&rest[..take]);
                if take == nl {
                    self.pos += nl + 1;
                } else {
                    self.pos += take;
                }
                return Some(Decoded::Text(std::mem::take(&mut self.line)));
            }
            if text_end > 0 {
                let room = self.max_line - self.line.len().min(self.max_line);
                let take = text_end.min(room);
                self.line.extend_from_slice(&rest[..take]);
                self.pos += take;
                if self.line.len() >= self.max_line {
                    return Some(Decoded::Text(std::mem::take(&mut self.line)));
                }
                continue;
            }
            // rest[0] == 0xFF: a frame candidate.
            let have = rest.len().min(MAGIC.len());
            if rest[..have] != MAGIC[..have] {
                self.give_up_one_byte();
                continue;
            }
            if rest.len() < HEADER_LEN {
                return None;
            }
            let word = |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
            let (body_len, body_crc, header_crc) = (word(4) as usize, word(8), word(12));
            if crc32fast::hash(&rest[..12]) != header_crc {
                self.give_up_one_byte();
                continue;
            }
            // A verified header: flush pending text first so order is kept.
            if !self.line.is_empty() {
                return Some(Decoded::Text(std::mem::take(&mut self.line)));
            }
            if body_len > self.max_frame {
                self.pos += HEADER_LEN;
                self.skip = body_len;
                return Some(Decoded::Invalid(FrameError::Oversized { len: body_len, max: self.max_frame }));
            }
            if rest.len() < HEADER_LEN + body_len {
                return None;
            }
            let body = &rest[HEADER_LEN..HEADER_LEN + body_len];
            let item = if crc32fast::hash(body) != body_crc {
                Decoded::Invalid(FrameError::BadChecksum)
            } else {
                match rmp_serde::from_slice::<T>(body) {
                    Ok(msg) => Decoded::Message(msg),
                    Err(e) => Decoded::Invalid(FrameError::BadBody(e.to_string())),
                }
            };
            self.pos += HEADER_LEN + body_len;
            return Some(item);
        }
    }

    /// At end of stream: whatever is left, as text (a torn frame is not a frame).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let mut rest = std::mem::take(&mut self.line);
        rest.extend_from_slice(&self.buf[self.pos..]);
        self.buf.clear();
        self.pos = 0;
        self.skip = 0;
        (!rest.is_empty()).then_some(rest)
    }

    fn give_up_one_byte(&mut self) {
        self.line.push(self.buf[self.pos]);
        self.pos += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, RngExt, SeedableRng};

    fn drain<T: DeserializeOwned>(d: &mut Decoder) -> Vec<Decoded<T>> {
        std::iter::from_fn(|| d.next_item::<T>()).collect()
    }

    #[test]
    fn round_trip_and_text_between_frames() {
        let mut stream = b"hello\n".to_vec();
        stream.extend(encode(&FromCollector::Hello { pid: 7, version: "1.0".into() }).unwrap());
        stream.extend(b"partial");
        stream.extend(encode(&FromCollector::HeartbeatAck { seq: 9 }).unwrap());
        stream.extend(b"tail");
        let mut d = Decoder::default();
        d.feed(&stream);
        let items = drain::<FromCollector>(&mut d);
        assert_eq!(
            items,
            vec![
                Decoded::Text(b"hello".to_vec()),
                Decoded::Message(FromCollector::Hello { pid: 7, version: "1.0".into() }),
                Decoded::Text(b"partial".to_vec()),
                Decoded::Message(FromCollector::HeartbeatAck { seq: 9 }),
            ]
        );
        assert_eq!(d.finish(), Some(b"tail".to_vec()));
    }

    /// The example frame of docs/architecture.md, byte for byte.
    #[test]
    fn documented_heartbeat_frame_is_exact() {
        let want: Vec<u8> = [
            "FF 56 47 4C 11 00 00 00 66 E3 7D C5 B0 8A 60 ED",
            "81 A9 48 65 61 72 74 62 65 61 74",
            "81 A3 73 65 71 2A",
        ]
        .join(" ")
        .split(' ')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
        assert_eq!(encode(&ToCollector::Heartbeat { seq: 42 }).unwrap(), want);
    }

    #[test]
    fn byte_by_byte_feeding_gives_the_same_result() {
        let frame = encode(&ToCollector::Heartbeat { seq: 42 }).unwrap();
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for b in frame.iter().chain(frame.iter()) {
            d.feed(std::slice::from_ref(b));
            got.extend(drain::<ToCollector>(&mut d));
        }
        assert_eq!(got, vec![Decoded::Message(ToCollector::Heartbeat { seq: 42 }); 2]);
    }

    #[test]
    fn oversized_frame_is_skipped_without_buffering() {
        // A hand-made, well-formed header announcing 1 GiB.
        let mut header = MAGIC.to_vec();
        header.extend((1u32 << 30).to_le_bytes());
        header.extend(0u32.to_le_bytes());
        let crc = crc32fast::hash(&header);
        header.extend(crc.to_le_bytes());
        let mut d = Decoder::new(1024, 64);
        d.feed(&header);
        assert_eq!(
            d.next_item::<ToCollector>(),
            Some(Decoded::Invalid(FrameError::Oversized { len: 1 << 30, max: 1024 }))
        );
        for _ in 0..100 {
            d.feed(&[0u8; 1 << 16]);
            assert!(d.next_item::<ToCollector>().is_none());
            assert!(d.buffered() < 1 << 17, "oversized body must not be buffered");
        }
    }

    #[test]
    fn corrupt_header_gives_up_one_byte_and_finds_the_frame_inside() {
        let frame = encode(&ToCollector::Heartbeat { seq: 1 }).unwrap();
        // A fake magic immediately followed by a real frame.
        let mut stream = MAGIC.to_vec();
        stream.extend(&frame);
        let mut d = Decoder::default();
        d.feed(&stream);
        let items = drain::<ToCollector>(&mut d);
        assert_eq!(
            items,
            vec![Decoded::Text(MAGIC.to_vec()), Decoded::Message(ToCollector::Heartbeat { seq: 1 })]
        );
    }

    #[test]
    fn long_lines_are_split_at_the_limit() {
        let mut d = Decoder::new(1024, 10);
        d.feed(&[b'a'; 25]);
        d.feed(b"\n");
        let items = drain::<ToCollector>(&mut d);
        let lens: Vec<usize> = items
            .iter()
            .map(|i| match i {
                Decoded::Text(t) => t.len(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(lens, vec![10, 10, 5]);
    }

    #[test]
    fn bad_checksum_and_bad_body_are_reported_not_fatal() {
        let mut frame = encode(&ToCollector::Heartbeat { seq: 5 }).unwrap();
        let last = frame.len() - 1;
        frame[last] ^= 0x40;
        let mut d = Decoder::default();
        d.feed(&frame);
        assert_eq!(d.next_item::<ToCollector>(), Some(Decoded::Invalid(FrameError::BadChecksum)));
        // A valid frame whose body is a different type.
        d.feed(&encode(&"not a message").unwrap());
        assert!(matches!(d.next_item::<ToCollector>(), Some(Decoded::Invalid(FrameError::BadBody(_)))));
        d.feed(&encode(&ToCollector::Heartbeat { seq: 6 }).unwrap());
        assert_eq!(d.next_item::<ToCollector>(), Some(Decoded::Message(ToCollector::Heartbeat { seq: 6 })));
    }

    /// Property: for any input, the decoder never panics and keeps its memory bounded; and
    /// valid frames separated by junk that holds no 0xFF byte always come out, in order.
    /// Runs 1,000,000 inputs: random bytes, mutated valid streams, and junk-and-frame mixes.
    #[test]
    fn property_million_random_and_mutated_inputs() {
        let cases: usize =
            std::env::var("VIGIL_IPC_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
        let mut rng = StdRng::seed_from_u64(0x5EED_1DC0);
        let frames: Vec<Vec<u8>> = (0..64u64)
            .map(|i| {
                if i % 2 == 0 {
                    encode(&FromCollector::HeartbeatAck { seq: i }).unwrap()
                } else {
                    encode(&FromCollector::Hello { pid: i as u32, version: "x".repeat(i as usize) }).unwrap()
                }
            })
            .collect();
        let mut decoded_frames = 0u64;
        for case in 0..cases {
            let mut d = Decoder::new(4096, 256);
            match case % 3 {
                0 => {
                    // Pure random bytes, biased towards the magic's bytes.
                    let n = rng.random_range(0..200);
                    let input: Vec<u8> = (0..n)
                        .map(|_| match rng.random_range(0..8) {
                            0 => MAGIC[rng.random_range(0..4)],
                            1 => b'\n',
                            _ => rng.random(),
                        })
                        .collect();
                    feed_in_chunks(&mut d, &input, &mut rng, |item| {
                        check_item(&item);
                    });
                }
                1 => {
                    // A valid stream, then mutated: flipped bits, cut, duplicated or inserted bytes.
                    let mut input = Vec::new();
                    for _ in 0..rng.random_range(1..4) {
                        input.extend(&frames[rng.random_range(0..frames.len())]);
                    }
                    for _ in 0..rng.random_range(1..4) {
                        if input.is_empty() {
                            break;
                        }
                        let at = rng.random_range(0..input.len());
                        match rng.random_range(0..4) {
                            0 => input[at] ^= 1 << rng.random_range(0..8),
                            1 => input.truncate(at),
                            2 => input.insert(at, rng.random()),
                            _ => {
                                let end = (at + rng.random_range(1..20)).min(input.len());
                                let dup = input[at..end].to_vec();
                                input.splice(at..at, dup);
                            }
                        }
                    }
                    feed_in_chunks(&mut d, &input, &mut rng, |item| {
                        check_item(&item);
                    });
                }
                _ => {
                    // Junk without 0xFF between valid frames: every frame must come out.
                    let mut input = Vec::new();
                    let mut expected = Vec::new();
                    for _ in 0..rng.random_range(1..5) {
                        for _ in 0..rng.random_range(0..40) {
                            input.push(rng.random_range(0..0xFFu8));
                        }
                        let i = rng.random_range(0..frames.len());
                        input.extend(&frames[i]);
                        expected.push(i);
                    }
                    let mut got = Vec::new();
                    feed_in_chunks(&mut d, &input, &mut rng, |item| {
                        check_item(&item);
                        if let Decoded::Message(m) = item {
                            got.push(m);
                        }
                    });
                    let want: Vec<FromCollector> = expected
                        .iter()
                        .map(|&i| match rmp_serde::from_slice(&frames[i][HEADER_LEN..]) {
                            Ok(m) => m,
                            Err(e) => panic!("fixture frame {i} does not decode: {e}"),
                        })
                        .collect();
                    assert_eq!(got, want, "case {case}: frames lost in junk");
                    decoded_frames += got.len() as u64;
                }
            }
            assert!(d.buffered() <= 4096 + 256 + HEADER_LEN + 200, "case {case}: unbounded buffer");
            let _ = d.finish();
        }
        assert!(decoded_frames > cases as u64 / 3, "the frame-recovery cases did run");
    }

    fn feed_in_chunks(
        d: &mut Decoder,
        input: &[u8],
        rng: &mut StdRng,
        mut on_item: impl FnMut(Decoded<FromCollector>),
    ) {
        let mut at = 0;
        while at < input.len() {
            let n = rng.random_range(1..=input.len() - at);
            d.feed(&input[at..at + n]);
            at += n;
            while let Some(item) = d.next_item::<FromCollector>() {
                on_item(item);
            }
        }
    }

    fn check_item(item: &Decoded<FromCollector>) {
        if let Decoded::Text(t) = item {
            assert!(t.len() <= 256, "text pieces respect the line limit");
        }
    }
}
