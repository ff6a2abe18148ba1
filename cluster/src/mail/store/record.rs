//! The mail log's record format: framing, checksums, and the encoding of each record kind.
//!
//! A record on disk is `len: u32 LE | crc32(payload): u32 LE | payload`. A record whose length runs
//! past the end of the file, whose length is zero or over the limit, or whose checksum does not
//! match is a torn write: recovery stops there and truncates. This module does no I/O.

use std::sync::Arc;

use super::Flags;

/// Bytes before each payload: length and checksum.
pub const FRAME_HEADER_BYTES: usize = 8;
/// Largest payload a record may have: the message limit's ceiling plus room for the header.
pub const PAYLOAD_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Most replica targets one message can have.
pub const TARGETS_MAX: usize = 255;

const KIND_DELIVER: u8 = 1;
const KIND_FLAGS: u8 = 2;
const KIND_EXPUNGE: u8 = 3;
const KIND_ACKED: u8 = 4;
const KIND_OWE: u8 = 5;
const KIND_SETTLED: u8 = 6;
const KIND_PROFILE: u8 = 7;
/// Deliver and Flags of a message with keywords (the kinds above stay for those without, so a
/// log written before keywords reads the same).
const KIND_DELIVER_KEYWORDS: u8 = 8;
const KIND_FLAGS_KEYWORDS: u8 = 9;
const KIND_SEQ: u8 = 10;
const KIND_RETIRE: u8 = 11;

/// One durable change to a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A message added to `user`'s mailbox with `uid`. `targets` are the other replicas this
    /// node still has to push the message to (empty on a replica).
    Deliver {
        user: String,
        uid: u32,
        internal_date: i64,
        flags: Flags,
        /// When the flags were set, as an update stamp (`super::stamp`): the newest wins.
        ts_ms: i64,
        targets: Vec<u32>,
        /// Every node meant to hold a copy (this one included), so changes can reach them all.
        replicas: Vec<u32>,
        body: Arc<[u8]>,
    },
    /// `uid`'s flags are now exactly `flags`, as of `ts_ms`.
    Flags {
        user: String,
        uid: u32,
        flags: Flags,
        ts_ms: i64,
    },
    /// These messages are gone (and must not come back from a late replica push).
    Expunge { user: String, uids: Vec<u32> },
    /// Every replica has these expunges: their tombstones are no longer needed.
    Retire { user: String, uids: Vec<u32> },
    /// Replica `node` has acknowledged `uid`: one fewer target to push it to.
    Acked { user: String, uid: u32, node: u32 },
    /// `targets` must learn the current state (flags, or expunged) of these messages: a client
    /// changed them here, and this node owes the change to the other holders until they
    /// acknowledge it.
    Owe {
        user: String,
        uids: Vec<u32>,
        targets: Vec<u32>,
    },
    /// `node` has acknowledged the state of `uid` this node owed it.
    Settled { user: String, uid: u32, node: u32 },
    /// `user`'s UIDs have used sequence numbers up to `max_seq` (written by compaction, so the
    /// highest UID survives the records that showed it being dropped).
    Seq { user: String, max_seq: u32 },
    /// A user profile (hard state): the password, as of `ts_ms` (the newest wins). `targets`
    /// are the nodes this node still has to push it to (acknowledged with `Acked` for
    /// [`super::PROFILE_UID`]).
    Profile {
        user: String,
        password: String,
        ts_ms: i64,
        targets: Vec<u32>,
    },
}

/// Why a frame could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The buffer ends before the frame does (a torn tail, or more bytes are needed).
    Incomplete,
    /// The frame is damaged: bad length, checksum, or payload.
    Corrupt(&'static str),
}

/// Where, inside an encoded Deliver payload, the body starts (so readers can `pread` it later).
pub fn deliver_body_offset(user: &str, flags: &Flags, targets: usize, replicas: usize) -> usize {
    1 + 2 + user.len() + 4 + 8 + 1 + 8 + keywords_len(flags) + 1 + 4 * targets + 1 + 4 * replicas
}

/// Bytes the keyword list takes in a record (none without keywords).
fn keywords_len(flags: &Flags) -> usize {
    if flags.keywords().is_empty() {
        0
    } else {
        1 + flags.keywords().iter().map(|k| 2 + k.len()).sum::<usize>()
    }
}

/// The keyword list: a count byte, then each keyword as a string.
fn put_keywords(out: &mut Vec<u8>, flags: &Flags) {
    let keywords = flags.keywords();
    assert!(keywords.len() <= u8::MAX as usize);
    out.push(keywords.len() as u8);
    for k in keywords {
        put_str(out, k);
    }
}

/// Appends the framed encoding of `record` to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    match record {
        Record::Deliver {
            user,
            uid,
            internal_date,
            flags,
            ts_ms,
            targets,
            replicas,
            body,
        } => {
            assert!(targets.len() <= TARGETS_MAX && replicas.len() <= TARGETS_MAX);
            let keywords = !flags.keywords().is_empty();
            out.push(if keywords {
                KIND_DELIVER_KEYWORDS
            } else {
                KIND_DELIVER
            });
            put_str(out, user);
            out.extend_from_slice(&uid.to_le_bytes());
            out.extend_from_slice(&internal_date.to_le_bytes());
            out.push(flags.bits());
            out.extend_from_slice(&ts_ms.to_le_bytes());
            if keywords {
                put_keywords(out, flags);
            }
            put_ids(out, targets);
            put_ids(out, replicas);
            out.extend_from_slice(body);
        }
        Record::Flags {
            user,
            uid,
            flags,
            ts_ms,
        } => {
            let keywords = !flags.keywords().is_empty();
            out.push(if keywords {
                KIND_FLAGS_KEYWORDS
            } else {
                KIND_FLAGS
            });
            put_str(out, user);
            out.extend_from_slice(&uid.to_le_bytes());
            out.push(flags.bits());
            out.extend_from_slice(&ts_ms.to_le_bytes());
            if keywords {
                put_keywords(out, flags);
            }
        }
        Record::Expunge { user, uids } | Record::Retire { user, uids } => {
            out.push(if matches!(record, Record::Expunge { .. }) {
                KIND_EXPUNGE
            } else {
                KIND_RETIRE
            });
            put_str(out, user);
            out.extend_from_slice(&(uids.len() as u32).to_le_bytes());
            for uid in uids {
                out.extend_from_slice(&uid.to_le_bytes());
            }
        }
        Record::Acked { user, uid, node } => {
            out.push(KIND_ACKED);
            put_str(out, user);
            out.extend_from_slice(&uid.to_le_bytes());
            out.extend_from_slice(&node.to_le_bytes());
        }
        Record::Owe {
            user,
            uids,
            targets,
        } => {
            assert!(targets.len() <= TARGETS_MAX);
            out.push(KIND_OWE);
            put_str(out, user);
            out.push(targets.len() as u8);
            for t in targets {
                out.extend_from_slice(&t.to_le_bytes());
            }
            out.extend_from_slice(&(uids.len() as u32).to_le_bytes());
            for uid in uids {
                out.extend_from_slice(&uid.to_le_bytes());
            }
        }
        Record::Settled { user, uid, node } => {
            out.push(KIND_SETTLED);
            put_str(out, user);
            out.extend_from_slice(&uid.to_le_bytes());
            out.extend_from_slice(&node.to_le_bytes());
        }
        Record::Seq { user, max_seq } => {
            out.push(KIND_SEQ);
            put_str(out, user);
            out.extend_from_slice(&max_seq.to_le_bytes());
        }
        Record::Profile {
            user,
            password,
            ts_ms,
            targets,
        } => {
            out.push(KIND_PROFILE);
            put_str(out, user);
            put_str(out, password);
            out.extend_from_slice(&ts_ms.to_le_bytes());
            put_ids(out, targets);
        }
    }
    let payload_len = out.len() - start - FRAME_HEADER_BYTES;
    assert!(payload_len > 0 && payload_len <= PAYLOAD_BYTES_MAX);
    let crc = crc32fast::hash(&out[start + FRAME_HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Reads a frame header; returns the payload length and expected checksum.
pub fn decode_header(header: &[u8; FRAME_HEADER_BYTES]) -> Result<(usize, u32), FrameError> {
    let len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
    if len == 0 || len > PAYLOAD_BYTES_MAX {
        return Err(FrameError::Corrupt("record length out of range"));
    }
    Ok((len, crc))
}

/// Decodes a payload whose checksum has already been verified.
pub fn decode_payload(payload: &[u8]) -> Result<Record, FrameError> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let kind = r.u8()?;
    let user = r.string()?;
    let record = match kind {
        KIND_DELIVER | KIND_DELIVER_KEYWORDS => {
            let uid = r.u32()?;
            let internal_date = r.i64()?;
            let mut flags = Flags::from_bits(r.u8()?);
            let ts_ms = r.i64()?;
            if kind == KIND_DELIVER_KEYWORDS {
                flags = r.keywords(flags)?;
            }
            let targets = r.ids()?;
            let replicas = r.ids()?;
            let body = Arc::from(&payload[r.pos..]);
            Record::Deliver {
                user,
                uid,
                internal_date,
                flags,
                ts_ms,
                targets,
                replicas,
                body,
            }
        }
        KIND_FLAGS | KIND_FLAGS_KEYWORDS => {
            let uid = r.u32()?;
            let mut flags = Flags::from_bits(r.u8()?);
            let ts_ms = r.i64()?;
            if kind == KIND_FLAGS_KEYWORDS {
                flags = r.keywords(flags)?;
            }
            Record::Flags {
                user,
                uid,
                flags,
                ts_ms,
            }
        }
        KIND_EXPUNGE | KIND_RETIRE => {
            let n = r.u32()? as usize;
            if n > payload.len() / 4 {
                return Err(FrameError::Corrupt("expunge count exceeds payload"));
            }
            let mut uids = Vec::with_capacity(n);
            for _ in 0..n {
                uids.push(r.u32()?);
            }
            if kind == KIND_EXPUNGE {
                Record::Expunge { user, uids }
            } else {
                Record::Retire { user, uids }
            }
        }
        KIND_ACKED => {
            let uid = r.u32()?;
            let node = r.u32()?;
            Record::Acked { user, uid, node }
        }
        KIND_OWE => {
            let n = r.u8()? as usize;
            let mut targets = Vec::with_capacity(n);
            for _ in 0..n {
                targets.push(r.u32()?);
            }
            let count = r.u32()? as usize;
            if count > payload.len() / 4 {
                return Err(FrameError::Corrupt("owed count exceeds payload"));
            }
            let mut uids = Vec::with_capacity(count);
            for _ in 0..count {
                uids.push(r.u32()?);
            }
            Record::Owe {
                user,
                uids,
                targets,
            }
        }
        KIND_SETTLED => {
            let uid = r.u32()?;
            let node = r.u32()?;
            Record::Settled { user, uid, node }
        }
        KIND_SEQ => Record::Seq {
            user,
            max_seq: r.u32()?,
        },
        KIND_PROFILE => {
            let password = r.string()?;
            let ts_ms = r.i64()?;
            let targets = r.ids()?;
            Record::Profile {
                user,
                password,
                ts_ms,
                targets,
            }
        }
        _ => return Err(FrameError::Corrupt("unknown record kind")),
    };
    Ok(record)
}

/// Decodes one whole frame from the front of `buf`; returns the record and the bytes it used.
pub fn decode(buf: &[u8]) -> Result<(Record, usize), FrameError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Err(FrameError::Incomplete);
    }
    let (len, crc) = decode_header(buf[..FRAME_HEADER_BYTES].try_into().unwrap())?;
    let end = FRAME_HEADER_BYTES + len;
    if buf.len() < end {
        return Err(FrameError::Incomplete);
    }
    let payload = &buf[FRAME_HEADER_BYTES..end];
    if crc32fast::hash(payload) != crc {
        return Err(FrameError::Corrupt("checksum mismatch"));
    }
    Ok((decode_payload(payload)?, end))
}

/// A short list of node ids: a count byte, then the ids.
fn put_ids(out: &mut Vec<u8>, ids: &[u32]) {
    out.push(ids.len() as u8);
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    assert!(
        s.len() <= u16::MAX as usize,
        "user names are limited to 64 KiB"
    );
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], FrameError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(FrameError::Corrupt("overflow"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(FrameError::Corrupt("payload shorter than its fields"))?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn i64(&mut self) -> Result<i64, FrameError> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn ids(&mut self) -> Result<Vec<u32>, FrameError> {
        let n = self.u8()? as usize;
        (0..n).map(|_| self.u32()).collect()
    }
    /// A keyword list, added to the system flags `flags`.
    fn keywords(&mut self, flags: Flags) -> Result<Flags, FrameError> {
        let n = self.u8()? as usize;
        let mut keywords = Vec::with_capacity(n);
        for _ in 0..n {
            keywords.push(self.string()?);
        }
        Flags::with_keywords(flags.bits(), &keywords)
            .map_err(|_| FrameError::Corrupt("invalid keyword list"))
    }
    fn string(&mut self) -> Result<String, FrameError> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().unwrap()) as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| FrameError::Corrupt("user name is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Record> {
        vec![
            Record::Deliver {
                user: "user1".into(),
                uid: 7,
                internal_date: 1_700_000_000,
                flags: Flags::SEEN,
                ts_ms: 1_700_000_000_123,
                targets: vec![2, 3],
                replicas: vec![1, 2, 3],
                body: Arc::from(&b"Subject: hi\r\n\r\nbody\r\n"[..]),
            },
            Record::Flags {
                user: "user1".into(),
                uid: 7,
                flags: Flags::from_bits(Flags::SEEN.bits() | Flags::DELETED.bits()),
                ts_ms: 5,
            },
            Record::Flags {
                user: "user1".into(),
                uid: 7,
                flags: Flags::with_keywords(Flags::SEEN.bits(), &["$Forwarded", "$label1"])
                    .unwrap(),
                ts_ms: 6,
            },
            Record::Deliver {
                user: "user2".into(),
                uid: 9,
                internal_date: 1_700_000_001,
                flags: Flags::with_keywords(0, &["$Junk"]).unwrap(),
                ts_ms: 1,
                targets: vec![],
                replicas: vec![1],
                body: Arc::from(&b"Subject: kw\r\n\r\n"[..]),
            },
            Record::Expunge {
                user: "user1".into(),
                uids: vec![7, 9],
            },
            Record::Acked {
                user: "user1".into(),
                uid: 7,
                node: 3,
            },
            Record::Owe {
                user: "user1".into(),
                uids: vec![7, 9],
                targets: vec![2, 4],
            },
            Record::Settled {
                user: "user1".into(),
                uid: 9,
                node: 4,
            },
            Record::Profile {
                user: "alice".into(),
                password: "s3cret".into(),
                ts_ms: 77,
                targets: vec![2, 3],
            },
            Record::Seq {
                user: "user1\u{0}folders".into(),
                max_seq: 12,
            },
            Record::Retire {
                user: "user1".into(),
                uids: vec![7],
            },
        ]
    }

    #[test]
    fn round_trip_every_kind() {
        let mut buf = Vec::new();
        for r in samples() {
            encode(&r, &mut buf);
        }
        let mut pos = 0;
        for expected in samples() {
            let (r, used) = decode(&buf[pos..]).unwrap();
            assert_eq!(r, expected);
            pos += used;
        }
        assert_eq!(pos, buf.len());
    }

    #[test]
    fn body_offset_points_at_body() {
        let mut buf = Vec::new();
        let r = &samples()[0];
        encode(r, &mut buf);
        let off = FRAME_HEADER_BYTES + deliver_body_offset("user1", &Flags::SEEN, 2, 3);
        assert_eq!(&buf[off..], b"Subject: hi\r\n\r\nbody\r\n");
        let mut buf = Vec::new();
        let r = &samples()[3];
        let Record::Deliver { flags, .. } = r else {
            panic!("sample 3 is a delivery")
        };
        encode(r, &mut buf);
        let off = FRAME_HEADER_BYTES + deliver_body_offset("user2", flags, 0, 1);
        assert_eq!(&buf[off..], b"Subject: kw\r\n\r\n");
    }

    #[test]
    fn every_truncation_and_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode(&samples()[0], &mut buf);
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "truncation at {cut} decoded");
        }
        for i in 0..buf.len() {
            let mut damaged = buf.clone();
            damaged[i] ^= 0x40;
            assert!(decode(&damaged).is_err(), "bit flip at {i} decoded");
        }
    }
}
