//! Frame layout (RFC 9113 §4, §6): the 9-byte head, the checks every frame type must pass
//! before anything acts on it, and writers for the frames HBONE sends.

use std::fmt;

/// Bytes in every frame's head.
pub const HEAD_LEN: usize = 9;
/// What a client sends before its first frame (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// SETTINGS_MAX_FRAME_SIZE until a peer says otherwise, and its smallest legal value.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// The largest legal SETTINGS_MAX_FRAME_SIZE.
pub const MAX_FRAME_SIZE_LIMIT: u32 = (1 << 24) - 1;
/// The largest flow-control window (RFC 9113 §6.9.1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;
/// Every window's size until SETTINGS or WINDOW_UPDATE change it.
pub const DEFAULT_WINDOW: u32 = 65_535;

/// Frame types.
pub mod kind {
    /// DATA.
    pub const DATA: u8 = 0x0;
    /// HEADERS.
    pub const HEADERS: u8 = 0x1;
    /// PRIORITY.
    pub const PRIORITY: u8 = 0x2;
    /// RST_STREAM.
    pub const RST_STREAM: u8 = 0x3;
    /// SETTINGS.
    pub const SETTINGS: u8 = 0x4;
    /// PUSH_PROMISE.
    pub const PUSH_PROMISE: u8 = 0x5;
    /// PING.
    pub const PING: u8 = 0x6;
    /// GOAWAY.
    pub const GOAWAY: u8 = 0x7;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u8 = 0x8;
    /// CONTINUATION.
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    /// DATA, HEADERS: the sender's last frame on the stream.
    pub const END_STREAM: u8 = 0x1;
    /// SETTINGS, PING: an acknowledgement.
    pub const ACK: u8 = 0x1;
    /// HEADERS, CONTINUATION: the header block is complete.
    pub const END_HEADERS: u8 = 0x4;
    /// DATA, HEADERS: a pad length byte leads the payload.
    pub const PADDED: u8 = 0x8;
    /// HEADERS: a priority block follows the pad length.
    pub const PRIORITY: u8 = 0x20;
}

/// SETTINGS identifiers (RFC 9113 §6.5.2).
pub mod setting {
    /// SETTINGS_ENABLE_PUSH.
    pub const ENABLE_PUSH: u16 = 0x2;
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    /// SETTINGS_MAX_FRAME_SIZE.
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441).
    pub const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;
}

/// An HTTP/2 error code (RFC 9113 §7), as carried by RST_STREAM and GOAWAY.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// Graceful shutdown.
    pub const NO_ERROR: ErrorCode = ErrorCode(0x0);
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: ErrorCode = ErrorCode(0x1);
    /// An internal failure.
    pub const INTERNAL_ERROR: ErrorCode = ErrorCode(0x2);
    /// The peer broke flow control.
    pub const FLOW_CONTROL_ERROR: ErrorCode = ErrorCode(0x3);
    /// SETTINGS were not acknowledged in time.
    pub const SETTINGS_TIMEOUT: ErrorCode = ErrorCode(0x4);
    /// A frame arrived for a half-closed stream.
    pub const STREAM_CLOSED: ErrorCode = ErrorCode(0x5);
    /// A frame had the wrong size.
    pub const FRAME_SIZE_ERROR: ErrorCode = ErrorCode(0x6);
    /// The stream was refused before any processing.
    pub const REFUSED_STREAM: ErrorCode = ErrorCode(0x7);
    /// The stream is no longer needed.
    pub const CANCEL: ErrorCode = ErrorCode(0x8);
    /// The header compression context cannot be kept.
    pub const COMPRESSION_ERROR: ErrorCode = ErrorCode(0x9);
    /// The CONNECT's TCP connection was reset or failed (the tunnel's RST).
    pub const CONNECT_ERROR: ErrorCode = ErrorCode(0xa);
    /// The peer is generating excessive load.
    pub const ENHANCE_YOUR_CALM: ErrorCode = ErrorCode(0xb);
    /// The transport does not meet security requirements.
    pub const INADEQUATE_SECURITY: ErrorCode = ErrorCode(0xc);
    /// HTTP/1.1 is required.
    pub const HTTP_1_1_REQUIRED: ErrorCode = ErrorCode(0xd);

    /// How many codes RFC 9113 defines: they are `0..DEFINED`.
    pub const DEFINED: usize = 14;

    /// The name RFC 9113 gives the code, if it defines it.
    pub fn name(self) -> Option<&'static str> {
        const NAMES: [&str; ErrorCode::DEFINED] = [
            "NO_ERROR",
            "PROTOCOL_ERROR",
            "INTERNAL_ERROR",
            "FLOW_CONTROL_ERROR",
            "SETTINGS_TIMEOUT",
            "STREAM_CLOSED",
            "FRAME_SIZE_ERROR",
            "REFUSED_STREAM",
            "CANCEL",
            "COMPRESSION_ERROR",
            "CONNECT_ERROR",
            "ENHANCE_YOUR_CALM",
            "INADEQUATE_SECURITY",
            "HTTP_1_1_REQUIRED",
        ];
        NAMES.get(self.0 as usize).copied()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            // Unknown codes must be treated as INTERNAL_ERROR but are shown as they came.
            None => write!(f, "error code {:#x}", self.0),
        }
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A frame's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Payload length.
    pub len: u32,
    /// Frame type.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Stream identifier (the reserved bit is dropped).
    pub stream: u32,
}

impl Head {
    /// Reads a head.
    pub fn parse(b: &[u8; HEAD_LEN]) -> Head {
        Head {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & MAX_WINDOW,
        }
    }

    /// Writes the head.
    pub fn encode(&self) -> [u8; HEAD_LEN] {
        let l = self.len.to_be_bytes();
        let s = self.stream.to_be_bytes();
        [l[1], l[2], l[3], self.kind, self.flags, s[0], s[1], s[2], s[3]]
    }

    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
}

/// A frame that passed its type's checks, borrowing its payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// DATA, padding removed. `flow_len` is what it counts against flow control (all of the
    /// payload, padding included).
    Data { stream: u32, end_stream: bool, data: &'a [u8], flow_len: u32 },
    /// HEADERS, padding and priority removed.
    Headers { stream: u32, end_stream: bool, end_headers: bool, block: &'a [u8] },
    /// PRIORITY: checked, then ignored (RFC 9113 deprecates the scheme).
    Priority { stream: u32 },
    /// RST_STREAM.
    RstStream { stream: u32, code: ErrorCode },
    /// SETTINGS; `params` holds whole 6-byte entries (see [`settings_entries`]).
    Settings { ack: bool, params: &'a [u8] },
    /// PING.
    Ping { ack: bool, data: [u8; 8] },
    /// GOAWAY.
    GoAway { last_stream: u32, code: ErrorCode, debug: &'a [u8] },
    /// WINDOW_UPDATE (increment is never 0 here).
    WindowUpdate { stream: u32, increment: u32 },
    /// CONTINUATION.
    Continuation { stream: u32, end_headers: bool, block: &'a [u8] },
    /// A type this endpoint does not know: ignored (RFC 9113 §4.1).
    Unknown,
}

/// A frame that breaks the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{why} ({code})")]
pub struct FrameError {
    /// The code to send.
    pub code: ErrorCode,
    /// `Some(stream)` when only that stream fails (RST_STREAM); `None` when the connection
    /// does (GOAWAY).
    pub stream: Option<u32>,
    /// What was wrong, for the log.
    pub why: &'static str,
}

impl FrameError {
    /// A connection error.
    pub fn connection(code: ErrorCode, why: &'static str) -> Self {
        FrameError { code, stream: None, why }
    }

    fn stream(stream: u32, code: ErrorCode, why: &'static str) -> Self {
        FrameError { code, stream: Some(stream), why }
    }
}

fn conn_err(code: ErrorCode, why: &'static str) -> FrameError {
    FrameError::connection(code, why)
}

/// Checks one frame whose whole payload has arrived (the caller has already refused a length
/// above its SETTINGS_MAX_FRAME_SIZE).
pub fn parse<'a>(head: &Head, payload: &'a [u8]) -> Result<Frame<'a>, FrameError> {
    use ErrorCode as E;
    debug_assert_eq!(payload.len(), head.len as usize);
    let stream = head.stream;
    let need_stream = |what| if stream == 0 { Err(conn_err(E::PROTOCOL_ERROR, what)) } else { Ok(()) };
    let need_conn = |what| if stream != 0 { Err(conn_err(E::PROTOCOL_ERROR, what)) } else { Ok(()) };
    match head.kind {
        kind::DATA => {
            need_stream("DATA on stream 0")?;
            let data = unpad(head, payload)?;
            Ok(Frame::Data { stream, end_stream: head.has(flag::END_STREAM), data, flow_len: head.len })
        }
        kind::HEADERS => {
            need_stream("HEADERS on stream 0")?;
            let mut block = unpad(head, payload)?;
            if head.has(flag::PRIORITY) {
                if block.len() < 5 {
                    return Err(conn_err(E::FRAME_SIZE_ERROR, "HEADERS too short for its priority"));
                }
                block = &block[5..];
            }
            Ok(Frame::Headers {
                stream,
                end_stream: head.has(flag::END_STREAM),
                end_headers: head.has(flag::END_HEADERS),
                block,
            })
        }
        kind::PRIORITY => {
            need_stream("PRIORITY on stream 0")?;
            if payload.len() != 5 {
                return Err(FrameError::stream(stream, E::FRAME_SIZE_ERROR, "PRIORITY is not 5 bytes"));
            }
            Ok(Frame::Priority { stream })
        }
        kind::RST_STREAM => {
            need_stream("RST_STREAM on stream 0")?;
            let code = u32_at(payload, 4).ok_or(conn_err(E::FRAME_SIZE_ERROR, "RST_STREAM is not 4 bytes"))?;
            Ok(Frame::RstStream { stream, code: ErrorCode(code) })
        }
        kind::SETTINGS => {
            need_conn("SETTINGS on a stream")?;
            let ack = head.has(flag::ACK);
            if ack && !payload.is_empty() {
                return Err(conn_err(E::FRAME_SIZE_ERROR, "SETTINGS ack with a payload"));
            }
            if !payload.len().is_multiple_of(6) {
                return Err(conn_err(E::FRAME_SIZE_ERROR, "SETTINGS length is not a multiple of 6"));
            }
            for (id, value) in settings_entries(payload) {
                check_setting(id, value)?;
            }
            Ok(Frame::Settings { ack, params: payload })
        }
        kind::PUSH_PROMISE => Err(conn_err(E::PROTOCOL_ERROR, "PUSH_PROMISE, but push is disabled")),
        kind::PING => {
            need_conn("PING on a stream")?;
            let data: [u8; 8] = payload.try_into().map_err(|_| conn_err(E::FRAME_SIZE_ERROR, "PING is not 8 bytes"))?;
            Ok(Frame::Ping { ack: head.has(flag::ACK), data })
        }
        kind::GOAWAY => {
            need_conn("GOAWAY on a stream")?;
            if payload.len() < 8 {
                return Err(conn_err(E::FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes"));
            }
            let last_stream = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & MAX_WINDOW;
            let code = ErrorCode(u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]));
            Ok(Frame::GoAway { last_stream, code, debug: &payload[8..] })
        }
        kind::WINDOW_UPDATE => {
            let raw = u32_at(payload, 4).ok_or(conn_err(E::FRAME_SIZE_ERROR, "WINDOW_UPDATE is not 4 bytes"))?;
            let increment = raw & MAX_WINDOW;
            if increment == 0 {
                let why = "WINDOW_UPDATE of 0";
                return Err(if stream == 0 {
                    conn_err(E::PROTOCOL_ERROR, why)
                } else {
                    FrameError::stream(stream, E::PROTOCOL_ERROR, why)
                });
            }
            Ok(Frame::WindowUpdate { stream, increment })
        }
        kind::CONTINUATION => {
            need_stream("CONTINUATION on stream 0")?;
            Ok(Frame::Continuation { stream, end_headers: head.has(flag::END_HEADERS), block: payload })
        }
        _ => Ok(Frame::Unknown),
    }
}

fn u32_at(payload: &[u8], len: usize) -> Option<u32> {
    (payload.len() == len).then(|| u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]))
}

fn unpad<'a>(head: &Head, payload: &'a [u8]) -> Result<&'a [u8], FrameError> {
    if !head.has(flag::PADDED) {
        return Ok(payload);
    }
    let (&pad, rest) =
        payload.split_first().ok_or(conn_err(ErrorCode::FRAME_SIZE_ERROR, "padded frame without a pad length"))?;
    if pad as usize > rest.len() {
        return Err(conn_err(ErrorCode::PROTOCOL_ERROR, "padding longer than the payload"));
    }
    Ok(&rest[..rest.len() - pad as usize])
}

/// The (identifier, value) entries of a SETTINGS payload whose length is a multiple of 6.
pub fn settings_entries(params: &[u8]) -> impl Iterator<Item = (u16, u32)> + '_ {
    params.chunks_exact(6).map(|e| (u16::from_be_bytes([e[0], e[1]]), u32::from_be_bytes([e[2], e[3], e[4], e[5]])))
}

fn check_setting(id: u16, value: u32) -> Result<(), FrameError> {
    use ErrorCode as E;
    match id {
        setting::ENABLE_PUSH if value > 1 => Err(conn_err(E::PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH is not 0 or 1")),
        setting::INITIAL_WINDOW_SIZE if value > MAX_WINDOW => {
            Err(conn_err(E::FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1"))
        }
        setting::MAX_FRAME_SIZE if !(DEFAULT_MAX_FRAME_SIZE..=MAX_FRAME_SIZE_LIMIT).contains(&value) => {
            Err(conn_err(E::PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE outside 2^14..2^24-1"))
        }
        setting::ENABLE_CONNECT_PROTOCOL if value > 1 => {
            Err(conn_err(E::PROTOCOL_ERROR, "SETTINGS_ENABLE_CONNECT_PROTOCOL is not 0 or 1"))
        }
        _ => Ok(()),
    }
}

/// Appends a frame head.
pub fn put_head(dst: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(len <= MAX_FRAME_SIZE_LIMIT as usize);
    dst.extend_from_slice(&Head { len: len as u32, kind, flags, stream }.encode());
}

/// Appends a SETTINGS frame with `params`.
pub fn put_settings(dst: &mut Vec<u8>, params: &[(u16, u32)]) {
    put_head(dst, params.len() * 6, kind::SETTINGS, 0, 0);
    for (id, value) in params {
        dst.extend_from_slice(&id.to_be_bytes());
        dst.extend_from_slice(&value.to_be_bytes());
    }
}

/// Appends a SETTINGS acknowledgement.
pub fn put_settings_ack(dst: &mut Vec<u8>) {
    put_head(dst, 0, kind::SETTINGS, flag::ACK, 0);
}

/// Appends a WINDOW_UPDATE.
pub fn put_window_update(dst: &mut Vec<u8>, stream: u32, increment: u32) {
    put_head(dst, 4, kind::WINDOW_UPDATE, 0, stream);
    dst.extend_from_slice(&increment.to_be_bytes());
}

/// Appends an RST_STREAM.
pub fn put_rst_stream(dst: &mut Vec<u8>, stream: u32, code: ErrorCode) {
    put_head(dst, 4, kind::RST_STREAM, 0, stream);
    dst.extend_from_slice(&code.0.to_be_bytes());
}

/// Appends a PING carrying `data`.
pub fn put_ping(dst: &mut Vec<u8>, data: [u8; 8]) {
    put_head(dst, 8, kind::PING, 0, 0);
    dst.extend_from_slice(&data);
}

/// Appends a PING acknowledgement echoing `data`.
pub fn put_ping_ack(dst: &mut Vec<u8>, data: [u8; 8]) {
    put_head(dst, 8, kind::PING, flag::ACK, 0);
    dst.extend_from_slice(&data);
}

/// Appends a GOAWAY.
pub fn put_goaway(dst: &mut Vec<u8>, last_stream: u32, code: ErrorCode, debug: &[u8]) {
    put_head(dst, 8 + debug.len(), kind::GOAWAY, 0, 0);
    dst.extend_from_slice(&last_stream.to_be_bytes());
    dst.extend_from_slice(&code.0.to_be_bytes());
    dst.extend_from_slice(debug);
}

/// Appends a header block as HEADERS and, if it is longer than `max_frame`, CONTINUATIONs.
pub fn put_headers(dst: &mut Vec<u8>, stream: u32, block: &[u8], end_stream: bool, max_frame: usize) {
    let mut chunks = block.chunks(max_frame.max(1)).peekable();
    let first = chunks.next().unwrap_or(&[]);
    let last = chunks.peek().is_none();
    let flags = if end_stream { flag::END_STREAM } else { 0 } | if last { flag::END_HEADERS } else { 0 };
    put_head(dst, first.len(), kind::HEADERS, flags, stream);
    dst.extend_from_slice(first);
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() { flag::END_HEADERS } else { 0 };
        put_head(dst, chunk.len(), kind::CONTINUATION, flags, stream);
        dst.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(len: usize, kind: u8, flags: u8, stream: u32) -> Head {
        Head { len: len as u32, kind, flags, stream }
    }

    #[test]
    fn head_round_trips_and_drops_the_reserved_bit() {
        let h = head(0x12_3456, kind::HEADERS, 0x25, 7);
        assert_eq!(Head::parse(&h.encode()), h);
        let mut raw = h.encode();
        raw[5] |= 0x80;
        assert_eq!(Head::parse(&raw).stream, 7);
        assert_eq!(h.encode(), [0x12, 0x34, 0x56, 1, 0x25, 0, 0, 0, 7]);
    }

    #[test]
    fn data_padding_is_removed_but_counts_for_flow_control() {
        let payload = [2, b'h', b'i', 0, 0];
        let f = parse(&head(5, kind::DATA, flag::PADDED | flag::END_STREAM, 1), &payload).unwrap();
        assert_eq!(f, Frame::Data { stream: 1, end_stream: true, data: b"hi", flow_len: 5 });
        let too_much = [5, 0, 0];
        let e = parse(&head(3, kind::DATA, flag::PADDED, 1), &too_much).unwrap_err();
        assert_eq!((e.code, e.stream), (ErrorCode::PROTOCOL_ERROR, None));
        let e = parse(&head(0, kind::DATA, flag::PADDED, 1), &[]).unwrap_err();
        assert_eq!(e.code, ErrorCode::FRAME_SIZE_ERROR);
    }

    #[test]
    fn headers_priority_block_is_skipped() {
        let payload = [1, 0, 0, 0, 3, 16, 0x82, 0, 0];
        let f = parse(&head(9, kind::HEADERS, flag::PADDED | flag::PRIORITY | flag::END_HEADERS, 3), &payload);
        assert_eq!(f.unwrap(), Frame::Headers { stream: 3, end_stream: false, end_headers: true, block: &[0x82, 0] });
        let e = parse(&head(3, kind::HEADERS, flag::PRIORITY, 3), &[0, 0, 0]).unwrap_err();
        assert_eq!(e.code, ErrorCode::FRAME_SIZE_ERROR);
    }

    #[test]
    fn stream_zero_and_nonzero_rules() {
        for k in [kind::DATA, kind::HEADERS, kind::PRIORITY, kind::RST_STREAM, kind::CONTINUATION] {
            let payload = [0u8; 5];
            let len = if k == kind::RST_STREAM { 4 } else { 5 };
            let e = parse(&head(len, k, 0, 0), &payload[..len]).unwrap_err();
            assert_eq!((e.code, e.stream), (ErrorCode::PROTOCOL_ERROR, None), "type {k}");
        }
        for (k, len) in [(kind::SETTINGS, 0), (kind::PING, 8), (kind::GOAWAY, 8)] {
            let payload = [0u8; 8];
            let e = parse(&head(len, k, 0, 1), &payload[..len]).unwrap_err();
            assert_eq!(e.code, ErrorCode::PROTOCOL_ERROR, "type {k}");
        }
    }

    #[test]
    fn sizes_are_checked() {
        assert_eq!(parse(&head(4, kind::PRIORITY, 0, 1), &[0; 4]).unwrap_err().stream, Some(1));
        assert_eq!(parse(&head(3, kind::RST_STREAM, 0, 1), &[0; 3]).unwrap_err().code, ErrorCode::FRAME_SIZE_ERROR);
        assert_eq!(parse(&head(7, kind::PING, 0, 0), &[0; 7]).unwrap_err().code, ErrorCode::FRAME_SIZE_ERROR);
        assert_eq!(parse(&head(7, kind::GOAWAY, 0, 0), &[0; 7]).unwrap_err().code, ErrorCode::FRAME_SIZE_ERROR);
        assert_eq!(parse(&head(5, kind::SETTINGS, 0, 0), &[0; 5]).unwrap_err().code, ErrorCode::FRAME_SIZE_ERROR);
        let e = parse(&head(6, kind::SETTINGS, flag::ACK, 0), &[0; 6]).unwrap_err();
        assert_eq!(e.code, ErrorCode::FRAME_SIZE_ERROR);
        assert_eq!(parse(&head(3, kind::WINDOW_UPDATE, 0, 0), &[0; 3]).unwrap_err().code, ErrorCode::FRAME_SIZE_ERROR);
    }

    #[test]
    fn window_update_of_zero_fails_the_stream_or_the_connection() {
        let e = parse(&head(4, kind::WINDOW_UPDATE, 0, 5), &[0x80, 0, 0, 0]).unwrap_err();
        assert_eq!((e.code, e.stream), (ErrorCode::PROTOCOL_ERROR, Some(5)));
        let e = parse(&head(4, kind::WINDOW_UPDATE, 0, 0), &[0; 4]).unwrap_err();
        assert_eq!(e.stream, None);
        let f = parse(&head(4, kind::WINDOW_UPDATE, 0, 0), &[0x80, 0, 1, 0]).unwrap();
        assert_eq!(f, Frame::WindowUpdate { stream: 0, increment: 256 });
    }

    #[test]
    fn settings_values_are_checked() {
        let mut buf = Vec::new();
        put_settings(&mut buf, &[(setting::INITIAL_WINDOW_SIZE, MAX_WINDOW), (0xff, 7)]);
        let h = Head::parse(buf[..9].try_into().unwrap());
        let f = parse(&h, &buf[9..]).unwrap();
        let Frame::Settings { ack: false, params } = f else { panic!("{f:?}") };
        assert_eq!(settings_entries(params).collect::<Vec<_>>(), [(4, MAX_WINDOW), (0xff, 7)]);
        for (id, value, code) in [
            (setting::INITIAL_WINDOW_SIZE, MAX_WINDOW + 1, ErrorCode::FLOW_CONTROL_ERROR),
            (setting::MAX_FRAME_SIZE, 16_383, ErrorCode::PROTOCOL_ERROR),
            (setting::MAX_FRAME_SIZE, MAX_FRAME_SIZE_LIMIT + 1, ErrorCode::PROTOCOL_ERROR),
            (setting::ENABLE_PUSH, 2, ErrorCode::PROTOCOL_ERROR),
        ] {
            let mut buf = Vec::new();
            put_settings(&mut buf, &[(id, value)]);
            assert_eq!(parse(&head(6, kind::SETTINGS, 0, 0), &buf[9..]).unwrap_err().code, code, "{id} = {value}");
        }
    }

    #[test]
    fn push_promise_is_refused_and_unknown_types_ignored() {
        assert_eq!(parse(&head(4, kind::PUSH_PROMISE, 0, 1), &[0; 4]).unwrap_err().code, ErrorCode::PROTOCOL_ERROR);
        assert_eq!(parse(&head(3, 0xfa, 0xff, 9), &[1, 2, 3]).unwrap(), Frame::Unknown);
    }

    #[test]
    fn long_header_blocks_are_split_into_continuations() {
        let block: Vec<u8> = (0..25).collect();
        let mut buf = Vec::new();
        put_headers(&mut buf, 3, &block, true, 10);
        let mut rest = &buf[..];
        let mut got = Vec::new();
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let h = Head::parse(rest[..9].try_into().unwrap());
            let payload = &rest[9..9 + h.len as usize];
            frames.push((h.kind, h.flags));
            got.extend_from_slice(payload);
            rest = &rest[9 + h.len as usize..];
        }
        assert_eq!(got, block);
        assert_eq!(
            frames,
            [(kind::HEADERS, flag::END_STREAM), (kind::CONTINUATION, 0), (kind::CONTINUATION, flag::END_HEADERS)]
        );
    }

    #[test]
    fn error_codes_print_their_names() {
        assert_eq!(ErrorCode::CONNECT_ERROR.to_string(), "CONNECT_ERROR");
        assert_eq!(ErrorCode(0x99).to_string(), "error code 0x99");
    }
}
