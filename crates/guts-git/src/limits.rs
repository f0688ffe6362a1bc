//! Protocol limits, named so that every bound on peer input is visible in one place.

/// Longest repository owner or name segment, in bytes.
pub const MAX_REPO_SEGMENT_LEN: usize = 100;
/// Longest ref name accepted in a push.
pub const MAX_REF_NAME_LEN: usize = 1024;
/// Most `want` lines in one fetch request.
pub const MAX_WANTS: usize = 100_000;
/// Most `have` lines in one fetch request.
pub const MAX_HAVES: usize = 100_000;
/// Most ref update commands in one push.
pub const MAX_PUSH_COMMANDS: usize = 100_000;
/// Most `ref-prefix` arguments to v2 `ls-refs`.
pub const MAX_REF_PREFIXES: usize = 1_000;
/// Most push-option lines in one push.
pub const MAX_PUSH_OPTIONS: usize = 100;
/// Default cap on the size of a pushed pack, in bytes (configurable per node).
pub const DEFAULT_MAX_PACK_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Default cap on the size of one object in a received pack, in bytes: its
/// inflated size, or for a delta the size of the object it makes.
///
/// Indexing holds an object, its delta base and the delta in memory at once,
/// so this bounds the memory of a push (about three times this, per indexing
/// thread). 100 MiB is the size above which GitHub refuses files; larger
/// files belong in an LFS-style store. A pack declaring a larger object is
/// refused from the entry's header, before it is inflated.
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 100 * 1024 * 1024;
/// The inflated-bytes budget of a push is this many times the node's pack
/// size limit (clamped to [`MIN_INFLATED_BYTES`]..=[`MAX_INFLATED_BYTES`]).
///
/// Inflated bytes are every entry's inflated size plus the size of each
/// object a delta makes: what indexing must inflate, copy and hash, about
/// 1-2 s of CPU per GiB. Packs of source history inflate to a few times
/// their size; a zlib or delta bomb to hundreds or thousands of times.
pub const INFLATED_BYTES_PER_PACK_BYTE: u64 = 4;
/// Smallest inflated-bytes budget derived from a pack size limit, so that a
/// node with a small pack limit still takes delta-heavy packs.
pub const MIN_INFLATED_BYTES: u64 = 1024 * 1024 * 1024;
/// Largest inflated-bytes budget derived from a pack size limit: the most
/// work (about 20-30 s of CPU) one push can ask of the node.
pub const MAX_INFLATED_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// Default inflated-bytes budget of one received pack (for the default pack
/// size limit: 4 x 4 GiB, capped at 16 GiB).
pub const DEFAULT_MAX_INFLATED_BYTES: u64 = inflated_budget(DEFAULT_MAX_PACK_BYTES);
/// Default cap on the depth of a delta chain in a received pack.
///
/// Reading an object costs one delta application per level, and fetches and
/// history walks read objects from the stored pack, so a deep chain is a
/// lasting cost. `git pack-objects` never writes chains deeper than 4095
/// (`--depth`, default 50), so no pack git makes comes near this.
pub const DEFAULT_MAX_DELTA_DEPTH: u32 = 10_000;
/// Longest chain of tags pointing at tags that is followed when peeling.
pub const MAX_TAG_CHAIN: usize = 64;
/// Largest push certificate accepted, in bytes.
pub const MAX_PUSH_CERT_BYTES: usize = 1024 * 1024;
/// Most `deepen-not` lines in one fetch request.
pub const MAX_DEEPEN_NOT: usize = 1_000;
/// Largest request section read into memory before any work starts: the
/// arguments of a fetch, or the commands of a push (not its pack).
pub const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;

/// The inflated-bytes budget for a node whose pack size limit is
/// `max_pack_bytes`: [`INFLATED_BYTES_PER_PACK_BYTE`] times it, clamped to
/// [`MIN_INFLATED_BYTES`]..=[`MAX_INFLATED_BYTES`].
pub const fn inflated_budget(max_pack_bytes: u64) -> u64 {
    let budget = max_pack_bytes.saturating_mul(INFLATED_BYTES_PER_PACK_BYTE);
    if budget < MIN_INFLATED_BYTES {
        MIN_INFLATED_BYTES
    } else if budget > MAX_INFLATED_BYTES {
        MAX_INFLATED_BYTES
    } else {
        budget
    }
}
