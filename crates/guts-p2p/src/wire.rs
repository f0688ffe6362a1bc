//! Messages between peers (prost), and their framing on streams:
//! a 4-byte big-endian length, then the message; lengths over
//! [`MAX_FRAME_BYTES`] are refused before anything is allocated.

use futures_util::{AsyncReadExt, AsyncWriteExt};
use prost::Message;

use crate::error::{Error, Result};
use crate::limits::MAX_FRAME_BYTES;

/// The stream protocol for identity, log and object exchange.
pub const REPLICATION_PROTOCOL: libp2p::StreamProtocol =
    libp2p::StreamProtocol::new("/guts/replication/1");

/// Gossip topic of a repository (by its id).
pub fn topic(repo_id: &str) -> String {
    format!("guts/repo/{repo_id}")
}

/// Announces a signed ref update accepted by some node.
#[derive(Clone, PartialEq, Message)]
pub struct Announce {
    /// Canonical repository name, `OWNER/NAME`.
    #[prost(string, tag = "1")]
    pub repo: String,
    /// An encoded `SignedRefUpdate`.
    #[prost(bytes = "vec", tag = "2")]
    pub update: Vec<u8>,
    /// An identity announcement (empty `update`): how many document
    /// versions the sender holds, so that peers with fewer take the new
    /// ones from it at once (a revoked push grant, a delegate removed)
    /// instead of at their next log comparison.
    #[prost(uint64, tag = "3")]
    pub doc_versions: u64,
}

/// What a stream request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum Kind {
    /// The repository's identity document versions.
    Identity = 0,
    // 1 was the whole log, paged; replaced by `Buckets`, `Keys` and
    // `Entries` (ADR 0016), so that only what differs is exchanged.
    /// Objects: `body` is a git protocol v2 `fetch` request; the answer is
    /// upload-pack's response, streamed until the stream closes.
    Fetch = 2,
    /// A summary of the signed-update log (one item: an encoded
    /// [`LogSummary`]), compared periodically by peers that stay connected;
    /// the buckets, keys and entries, or the `Identity`, are asked only when
    /// they differ.
    LogSummary = 3,
    /// The log's [`LogBuckets`] (one item): the count and digest of the
    /// update keys in each of [`crate::logset::BUCKETS`] key ranges.
    Buckets = 4,
    /// The update keys in the buckets listed in `Request::buckets` (one
    /// byte per bucket): each item is a 32-byte key.
    Keys = 5,
    /// The log entries (encoded `SignedRefUpdate`s) with the keys in
    /// `Request::keys`, in log order; `Items::next` says how many of the
    /// keys asked were answered (the rest did not fit in the frame), or 0
    /// when all were. With `Request::buckets`: the entries of those
    /// buckets whose keys are above `Request::after` and not in
    /// `Request::keys`, in key order; `Items::next` is 1 when more remain.
    Entries = 6,
    /// A Git LFS object of the repository (ADR 0024): `lfs_oid` is its
    /// SHA-256, `resume_offset` the bytes the requester already holds. The
    /// answer is one [`Items`] frame (`error` set when the node does not
    /// seed the repository or lacks the object; else `next` is the
    /// object's size), then the object's bytes from `resume_offset` on,
    /// unframed, until the stream closes.
    Lfs = 7,
}

/// The first frame on a replication stream.
#[derive(Clone, PartialEq, Message)]
pub struct Request {
    /// What is asked.
    #[prost(enumeration = "Kind", tag = "1")]
    pub kind: i32,
    /// Canonical repository name.
    #[prost(string, tag = "2")]
    pub repo: String,
    /// For `Fetch`: the pkt-line request.
    #[prost(bytes = "vec", tag = "3")]
    pub body: Vec<u8>,
    /// For `Fetch`: pack bytes the requester already holds from an
    /// interrupted answer to the same request (0: none). The answer then
    /// leaves them out, if they are the prefix of the pack it produces.
    /// For `Lfs`: bytes of the object the requester holds; the answer
    /// starts after them.
    #[prost(uint64, tag = "4")]
    pub resume_offset: u64,
    /// SHA-1 of those bytes.
    #[prost(bytes = "vec", tag = "5")]
    pub resume_sha1: Vec<u8>,
    // Tag 6 was the position of the first entry of a `Log` page.
    /// For `Keys`: the buckets asked for, one byte each.
    #[prost(bytes = "vec", tag = "7")]
    pub buckets: Vec<u8>,
    /// For `Entries`: the keys of the entries asked for (32 bytes each);
    /// with `buckets`, the keys the requester holds in those buckets (it
    /// asks for all the others).
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub keys: Vec<Vec<u8>>,
    /// For `Entries` with `buckets`: only keys above this one (where the
    /// previous page ended; empty: from the start).
    #[prost(bytes = "vec", tag = "9")]
    pub after: Vec<u8>,
    /// For `LogSummary`: the requester's own summary; when it differs, the
    /// answer carries the [`LogBuckets`] too (saving a round trip).
    #[prost(bytes = "vec", tag = "10")]
    pub summary: Vec<u8>,
    /// For `Lfs`: the object's SHA-256 (32 bytes).
    #[prost(bytes = "vec", tag = "11")]
    pub lfs_oid: Vec<u8>,
}

/// Answer to every request but `Fetch` (and the header of an `Lfs` answer).
#[derive(Clone, PartialEq, Message)]
pub struct Items {
    /// Document versions, log entries (oldest first), keys, or one
    /// encoded summary.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub items: Vec<Vec<u8>>,
    /// Set when the peer cannot answer (unknown repository, ...).
    #[prost(string, tag = "2")]
    pub error: String,
    /// For `Entries`: how many of the keys asked were answered, when not
    /// all of them (0: all).
    #[prost(uint64, tag = "3")]
    pub next: u64,
}

/// A summary of a repository's signed-update log that two nodes holding the
/// same set of updates (in any order) agree on, and that differs otherwise.
/// Sent, encoded, as the one item answering a `LogSummary` request.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct LogSummary {
    /// Number of distinct updates (by key) in the log.
    #[prost(uint64, tag = "1")]
    pub updates: u64,
    /// SHA-256 over the [`LogBuckets`] (see [`LogBuckets::summary`]).
    #[prost(bytes = "vec", tag = "2")]
    pub digest: Vec<u8>,
    /// Number of identity document versions held.
    #[prost(uint64, tag = "3")]
    pub doc_versions: u64,
}

impl LogSummary {
    /// Whether both summaries describe the same set of updates (the
    /// identity document versions aside).
    pub fn same_updates(&self, other: &LogSummary) -> bool {
        self.updates == other.updates && self.digest == other.digest
    }
}

/// The update keys of a log split by their first byte into
/// [`BUCKETS`](crate::logset::BUCKETS) ranges: per range, how many keys and
/// the XOR of them. Sent, encoded, as the one item answering a `Buckets`
/// request; two nodes then ask each other for the keys of the buckets that
/// differ only.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct LogBuckets {
    /// Keys per bucket.
    #[prost(uint64, repeated, tag = "1")]
    pub counts: Vec<u64>,
    /// The XOR of the keys of each bucket, 32 bytes per bucket.
    #[prost(bytes = "vec", tag = "2")]
    pub digests: Vec<u8>,
}

/// Write one length-prefixed message.
pub async fn write_frame<W: futures_util::AsyncWrite + Unpin>(
    w: &mut W,
    msg: &impl Message,
) -> Result<()> {
    let bytes = msg.encode_to_vec();
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(Error::Peer(format!(
            "frame of {} bytes over the limit",
            bytes.len()
        )));
    }
    w.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

/// Read one length-prefixed message.
pub async fn read_frame<R: futures_util::AsyncRead + Unpin, M: Message + Default>(
    r: &mut R,
) -> Result<M> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(Error::Peer(format!(
            "frame of {len} bytes over the limit of {MAX_FRAME_BYTES}"
        )));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    M::decode(&buf[..]).map_err(|e| Error::Peer(format!("undecodable message: {e}")))
}
