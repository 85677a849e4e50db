//! SPDY/3.1 frames: the binary layout of control and data frames, and the zlib-compressed
//! header blocks, each direction of a connection compressing all its blocks in one zlib stream
//! (a sync flush ends each block) that starts from the SPDY/3 header dictionary.

use super::dictionary::HEADER_DICTIONARY;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The protocol version spoken.
pub const VERSION: u16 = 3;
/// Flag of SYN_STREAM, SYN_REPLY, HEADERS and DATA: the sender sends nothing more on the stream.
pub const FLAG_FIN: u8 = 0x01;
/// Flag of SYN_STREAM: the receiver may not send on the stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status: the stream broke the protocol.
pub const PROTOCOL_ERROR: u32 = 1;
/// RST_STREAM status: the stream was not accepted.
pub const REFUSED_STREAM: u32 = 3;
/// RST_STREAM status: the stream is no longer needed.
pub const CANCEL: u32 = 5;

/// GOAWAY status: a normal end.
pub const GOAWAY_OK: u32 = 0;
/// GOAWAY status: the peer broke the protocol.
pub const GOAWAY_PROTOCOL_ERROR: u32 = 1;

/// The most a frame's 24-bit length field can say.
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;
/// The longest control frame accepted. The length field could say up to 16 MiB, but a control
/// frame carries at most one header block, and kubectl's are a few dozen bytes.
pub const MAX_CONTROL_PAYLOAD: usize = 1 << 20;
/// The longest header block, once decompressed, accepted or sent.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

const STREAM_ID_MASK: u32 = 0x7fff_ffff;

/// A header block's entries: lowercase names, in order; a name may repeat.
pub type Headers = Vec<(String, String)>;

/// One entry of a SETTINGS frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// `FLAG_SETTINGS_PERSIST_VALUE` (1), `FLAG_SETTINGS_PERSISTED` (2).
    pub flags: u8,
    /// Which setting (24 bits), e.g. 7 for the initial window size.
    pub id: u32,
    /// Its value.
    pub value: u32,
}

/// A frame, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// The new stream (odd when the client opens it).
        stream_id: u32,
        /// The stream this one is associated to, or 0.
        associated_to: u32,
        /// 0 (highest) to 7.
        priority: u8,
        /// Client certificate slot, unused.
        slot: u8,
        /// [`FLAG_FIN`], [`FLAG_UNIDIRECTIONAL`].
        flags: u8,
        /// The stream's headers.
        headers: Headers,
    },
    /// Accepts a stream.
    SynReply {
        /// The stream accepted.
        stream_id: u32,
        /// [`FLAG_FIN`].
        flags: u8,
        /// The reply's headers.
        headers: Headers,
    },
    /// Ends a stream abnormally.
    RstStream {
        /// The stream.
        stream_id: u32,
        /// Why, e.g. [`CANCEL`].
        status: u32,
    },
    /// Connection parameters.
    Settings {
        /// `FLAG_SETTINGS_CLEAR_SETTINGS` (1).
        flags: u8,
        /// The settings.
        entries: Vec<Setting>,
    },
    /// Measures the round trip; the receiver sends the same frame back.
    Ping {
        /// Odd when the client sends it, even from the server.
        id: u32,
    },
    /// Ends the connection: no new streams.
    GoAway {
        /// The last stream the sender accepted.
        last_good_stream_id: u32,
        /// Why, e.g. [`GOAWAY_OK`].
        status: u32,
    },
    /// More headers for a stream.
    Headers {
        /// The stream.
        stream_id: u32,
        /// [`FLAG_FIN`].
        flags: u8,
        /// The headers.
        headers: Headers,
    },
    /// Flow control: the receiver takes `delta` more bytes.
    WindowUpdate {
        /// The stream, or 0 for the whole connection.
        stream_id: u32,
        /// Bytes added to the window (31 bits).
        delta: u32,
    },
    /// Stream data.
    Data {
        /// The stream.
        stream_id: u32,
        /// [`FLAG_FIN`].
        flags: u8,
        /// The payload (up to [`MAX_PAYLOAD`] bytes).
        data: Bytes,
    },
}

/// A frame that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    /// A control frame of another protocol version.
    #[error("SPDY version {0} is not spoken (only version 3)")]
    Version(u16),
    /// A frame over the limits.
    #[error("{kind} frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// The frame's type.
        kind: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame whose fixed fields do not fit its type.
    #[error("bad {kind} frame: {reason}")]
    Malformed {
        /// The frame's type.
        kind: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A header block that does not decode, or cannot be encoded.
    #[error("bad header block: {0}")]
    HeaderBlock(String),
    /// The zlib stream of header blocks broke.
    #[error("header compression: {0}")]
    Compression(String),
}

fn malformed(kind: &'static str, reason: impl Into<String>) -> SpdyError {
    SpdyError::Malformed {
        kind,
        reason: reason.into(),
    }
}

fn kind_name(frame_type: u16) -> &'static str {
    match frame_type {
        SYN_STREAM => "SYN_STREAM",
        SYN_REPLY => "SYN_REPLY",
        RST_STREAM => "RST_STREAM",
        SETTINGS => "SETTINGS",
        PING => "PING",
        GOAWAY => "GOAWAY",
        HEADERS => "HEADERS",
        WINDOW_UPDATE => "WINDOW_UPDATE",
        _ => "control",
    }
}

/// Writes frames; owns the compression context of the header blocks sent.
pub struct Encoder {
    zlib: Compress,
    primed: bool,
}

/// Reads frames; owns the decompression context of the header blocks received.
pub struct Decoder {
    zlib: Decompress,
}

/// Both directions of one connection's framing.
pub struct Codec {
    encoder: Encoder,
    decoder: Decoder,
}

impl Default for Encoder {
    fn default() -> Self {
        Self {
            zlib: Compress::new(Compression::best(), true),
            primed: false,
        }
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            zlib: Decompress::new(true),
        }
    }
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Codec")
    }
}

impl Codec {
    /// A codec for a new connection.
    pub fn new() -> Self {
        Self {
            encoder: Encoder::default(),
            decoder: Decoder::default(),
        }
    }

    /// Appends `frame` to `dst`.
    pub fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), SpdyError> {
        self.encoder.encode(frame, dst)
    }

    /// Takes the next frame off the front of `src`; `None` until `src` holds a whole frame.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        self.decoder.decode(src)
    }

    /// The two halves, for a reader and a writer that run apart.
    pub fn split(self) -> (Encoder, Decoder) {
        (self.encoder, self.decoder)
    }
}

impl Encoder {
    /// Appends `frame` to `dst`.
    pub fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), SpdyError> {
        match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() > MAX_PAYLOAD {
                    return Err(too_large("DATA", data.len(), MAX_PAYLOAD));
                }
                dst.reserve(8 + data.len());
                dst.put_u32(stream_id & STREAM_ID_MASK);
                dst.put_u32(u32::from(*flags) << 24 | data.len() as u32);
                dst.put_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                flags,
                headers,
            } => {
                let block = self.header_block(headers)?;
                put_control(dst, SYN_STREAM, *flags, 10 + block.len())?;
                dst.put_u32(stream_id & STREAM_ID_MASK);
                dst.put_u32(associated_to & STREAM_ID_MASK);
                dst.put_u8((priority & 0x07) << 5);
                dst.put_u8(*slot);
                dst.put_slice(&block);
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                let block = self.header_block(headers)?;
                put_control(dst, SYN_REPLY, *flags, 4 + block.len())?;
                dst.put_u32(stream_id & STREAM_ID_MASK);
                dst.put_slice(&block);
            }
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let block = self.header_block(headers)?;
                put_control(dst, HEADERS, *flags, 4 + block.len())?;
                dst.put_u32(stream_id & STREAM_ID_MASK);
                dst.put_slice(&block);
            }
            Frame::RstStream { stream_id, status } => {
                put_control(dst, RST_STREAM, 0, 8)?;
                dst.put_u32(stream_id & STREAM_ID_MASK);
                dst.put_u32(*status);
            }
            Frame::Settings { flags, entries } => {
                put_control(dst, SETTINGS, *flags, 4 + 8 * entries.len())?;
                dst.put_u32(entries.len() as u32);
                for s in entries {
                    dst.put_u32(u32::from(s.flags) << 24 | (s.id & 0x00ff_ffff));
                    dst.put_u32(s.value);
                }
            }
            Frame::Ping { id } => {
                put_control(dst, PING, 0, 4)?;
                dst.put_u32(*id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                put_control(dst, GOAWAY, 0, 8)?;
                dst.put_u32(last_good_stream_id & STREAM_ID_MASK);
                dst.put_u32(*status);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                put_control(dst, WINDOW_UPDATE, 0, 8)?;
                dst.put_u32(stream_id & STREAM_ID_MASK);
                dst.put_u32(delta & STREAM_ID_MASK);
            }
        }
        Ok(())
    }

    /// `headers` as a compressed header block: names lowercased, the values of a repeated name
    /// joined with NUL (a name may appear only once in a block).
    fn header_block(&mut self, headers: &[(String, String)]) -> Result<Vec<u8>, SpdyError> {
        let mut names: Vec<(String, Vec<&str>)> = Vec::new();
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            if name.is_empty() {
                return Err(SpdyError::HeaderBlock("a header has an empty name".into()));
            }
            if value.contains('\0') {
                return Err(SpdyError::HeaderBlock(format!(
                    "the value of {name:?} has a NUL"
                )));
            }
            match names.iter_mut().find(|(n, _)| *n == name) {
                Some((_, values)) => values.push(value),
                None => names.push((name, vec![value])),
            }
        }
        let mut plain = Vec::new();
        plain.put_u32(names.len() as u32);
        for (name, values) in &names {
            let value = values.join("\0");
            plain.put_u32(name.len() as u32);
            plain.put_slice(name.as_bytes());
            plain.put_u32(value.len() as u32);
            plain.put_slice(value.as_bytes());
        }
        if plain.len() > MAX_HEADER_BLOCK {
            return Err(SpdyError::HeaderBlock(format!(
                "{} bytes is over the limit of {MAX_HEADER_BLOCK}",
                plain.len()
            )));
        }
        self.compress(&plain)
    }

    fn compress(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let failed = |e: flate2::CompressError| SpdyError::Compression(e.to_string());
        if !self.primed {
            self.zlib
                .set_dictionary(HEADER_DICTIONARY)
                .map_err(failed)?;
            self.primed = true;
        }
        let start = self.zlib.total_in();
        let mut out = Vec::new();
        loop {
            let done = (self.zlib.total_in() - start) as usize;
            out.reserve(input.len() - done + 64);
            self.zlib
                .compress_vec(&input[done..], &mut out, FlushCompress::Sync)
                .map_err(failed)?;
            // A sync flush is complete once it left room in the output.
            if (self.zlib.total_in() - start) as usize == input.len() && out.len() < out.capacity()
            {
                return Ok(out);
            }
        }
    }
}

fn too_large(kind: &'static str, len: usize, max: usize) -> SpdyError {
    SpdyError::TooLarge { kind, len, max }
}

fn put_control(dst: &mut BytesMut, ty: u16, flags: u8, len: usize) -> Result<(), SpdyError> {
    if len > MAX_PAYLOAD {
        return Err(too_large(kind_name(ty), len, MAX_PAYLOAD));
    }
    dst.reserve(8 + len);
    dst.put_u16(0x8000 | VERSION);
    dst.put_u16(ty);
    dst.put_u32(u32::from(flags) << 24 | len as u32);
    Ok(())
}

impl Decoder {
    /// Takes the next frame off the front of `src`; `None` until `src` holds a whole frame.
    /// Control frames of unknown types are skipped.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        loop {
            if src.len() < 8 {
                return Ok(None);
            }
            let first = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
            let flags = src[4];
            let len = usize::from(src[5]) << 16 | usize::from(src[6]) << 8 | usize::from(src[7]);
            let control = first & 0x8000_0000 != 0;
            if control {
                let version = (first >> 16 & 0x7fff) as u16;
                if version != VERSION {
                    return Err(SpdyError::Version(version));
                }
                if len > MAX_CONTROL_PAYLOAD {
                    return Err(too_large(kind_name(first as u16), len, MAX_CONTROL_PAYLOAD));
                }
            }
            if src.len() < 8 + len {
                src.reserve(8 + len - src.len());
                return Ok(None);
            }
            src.advance(8);
            let payload = src.split_to(len).freeze();
            if !control {
                let stream_id = first & STREAM_ID_MASK;
                if stream_id == 0 {
                    return Err(malformed("DATA", "stream id 0"));
                }
                return Ok(Some(Frame::Data {
                    stream_id,
                    flags,
                    data: payload,
                }));
            }
            if let Some(frame) = self.control(first as u16, flags, payload)? {
                return Ok(Some(frame));
            }
        }
    }

    fn control(&mut self, ty: u16, flags: u8, mut p: Bytes) -> Result<Option<Frame>, SpdyError> {
        let kind = kind_name(ty);
        let frame = match ty {
            SYN_STREAM => {
                at_least(kind, &p, 10)?;
                let stream_id = stream_id(kind, p.get_u32())?;
                let associated_to = p.get_u32() & STREAM_ID_MASK;
                let priority = p.get_u8() >> 5;
                let slot = p.get_u8();
                let headers = self.header_block(&p)?;
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    slot,
                    flags,
                    headers,
                }
            }
            SYN_REPLY | HEADERS => {
                at_least(kind, &p, 4)?;
                let stream_id = stream_id(kind, p.get_u32())?;
                let headers = self.header_block(&p)?;
                if ty == SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            RST_STREAM => {
                exactly(kind, &p, 8)?;
                let stream_id = stream_id(kind, p.get_u32())?;
                let status = p.get_u32();
                if status == 0 {
                    return Err(malformed(kind, "status 0"));
                }
                Frame::RstStream { stream_id, status }
            }
            SETTINGS => {
                at_least(kind, &p, 4)?;
                let count = p.get_u32() as usize;
                if p.len() != count.saturating_mul(8) {
                    let reason = format!("{count} settings in {} bytes", p.len());
                    return Err(malformed(kind, reason));
                }
                let entries = (0..count)
                    .map(|_| {
                        let word = p.get_u32();
                        Setting {
                            flags: (word >> 24) as u8,
                            id: word & 0x00ff_ffff,
                            value: p.get_u32(),
                        }
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            PING => {
                exactly(kind, &p, 4)?;
                Frame::Ping { id: p.get_u32() }
            }
            GOAWAY => {
                exactly(kind, &p, 8)?;
                Frame::GoAway {
                    last_good_stream_id: p.get_u32() & STREAM_ID_MASK,
                    status: p.get_u32(),
                }
            }
            WINDOW_UPDATE => {
                exactly(kind, &p, 8)?;
                Frame::WindowUpdate {
                    stream_id: p.get_u32() & STREAM_ID_MASK,
                    delta: p.get_u32() & STREAM_ID_MASK,
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(frame))
    }

    fn header_block(&mut self, compressed: &[u8]) -> Result<Headers, SpdyError> {
        let plain = self.decompress(compressed)?;
        let mut b = plain.as_slice();
        let bad = |reason: String| SpdyError::HeaderBlock(reason);
        let count = take_u32(&mut b, "the header count")? as usize;
        if count > b.len() / 8 {
            return Err(bad(format!(
                "{count} headers announced in {} bytes",
                b.len()
            )));
        }
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let name = take_str(&mut b, "a header name")?.to_ascii_lowercase();
            if name.is_empty() {
                return Err(bad("a header has an empty name".into()));
            }
            let value = take_str(&mut b, "a header value")?;
            headers.extend(value.split('\0').map(|v| (name.clone(), v.to_owned())));
        }
        if !b.is_empty() {
            return Err(bad(format!("{} bytes after the last header", b.len())));
        }
        Ok(headers)
    }

    fn decompress(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let failed = |e: flate2::DecompressError| SpdyError::Compression(e.to_string());
        let start = self.zlib.total_in();
        let mut out = Vec::with_capacity(4 * input.len() + 64);
        loop {
            let done = (self.zlib.total_in() - start) as usize;
            if out.len() == out.capacity() {
                out.reserve(out.len());
            }
            let before = (self.zlib.total_in(), self.zlib.total_out());
            match self
                .zlib
                .decompress_vec(&input[done..], &mut out, FlushDecompress::Sync)
            {
                Ok(Status::StreamEnd) => {
                    return Err(SpdyError::Compression(
                        "the peer ended its zlib stream".into(),
                    ));
                }
                Ok(_) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(id) => {
                        let ours = self
                            .zlib
                            .set_dictionary(HEADER_DICTIONARY)
                            .map_err(failed)?;
                        if id != ours {
                            let reason = format!("dictionary {id:#010x} asked for, not SPDY/3's");
                            return Err(SpdyError::Compression(reason));
                        }
                        continue;
                    }
                    None => return Err(failed(e)),
                },
            }
            if out.len() > MAX_HEADER_BLOCK {
                let reason = format!("over {MAX_HEADER_BLOCK} bytes once decompressed");
                return Err(SpdyError::HeaderBlock(reason));
            }
            let done = (self.zlib.total_in() - start) as usize;
            if done == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if before == (self.zlib.total_in(), self.zlib.total_out()) && out.len() < out.capacity()
            {
                return Err(SpdyError::Compression(
                    "the compressed block is cut short".into(),
                ));
            }
        }
    }
}

fn at_least(kind: &'static str, p: &[u8], n: usize) -> Result<(), SpdyError> {
    match p.len() < n {
        true => Err(malformed(
            kind,
            format!("{} bytes, at least {n} needed", p.len()),
        )),
        false => Ok(()),
    }
}

fn exactly(kind: &'static str, p: &[u8], n: usize) -> Result<(), SpdyError> {
    match p.len() != n {
        true => Err(malformed(kind, format!("{} bytes, not {n}", p.len()))),
        false => Ok(()),
    }
}

fn stream_id(kind: &'static str, word: u32) -> Result<u32, SpdyError> {
    match word & STREAM_ID_MASK {
        0 => Err(malformed(kind, "stream id 0")),
        id => Ok(id),
    }
}

fn take_u32(b: &mut &[u8], what: &str) -> Result<u32, SpdyError> {
    if b.len() < 4 {
        return Err(SpdyError::HeaderBlock(format!("cut short in {what}")));
    }
    Ok(b.get_u32())
}

fn take_str(b: &mut &[u8], what: &str) -> Result<String, SpdyError> {
    let len = take_u32(b, what)? as usize;
    if b.len() < len {
        return Err(SpdyError::HeaderBlock(format!("cut short in {what}")));
    }
    let (s, rest) = b.split_at(len);
    *b = rest;
    String::from_utf8(s.to_vec())
        .map_err(|_| SpdyError::HeaderBlock(format!("{what} is not UTF-8")))
}

#[cfg(test)]
mod tests;
