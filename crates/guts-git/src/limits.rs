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
/// Largest single object accepted in a pushed pack (guards delta resolution memory).
pub const MAX_OBJECT_BYTES: usize = 512 * 1024 * 1024;
/// Longest chain of tags pointing at tags that is followed when peeling.
pub const MAX_TAG_CHAIN: usize = 64;
/// Largest push certificate accepted, in bytes.
pub const MAX_PUSH_CERT_BYTES: usize = 1024 * 1024;
/// Most `deepen-not` lines in one fetch request.
pub const MAX_DEEPEN_NOT: usize = 1_000;
/// Largest request section read into memory before any work starts: the
/// arguments of a fetch, or the commands of a push (not its pack).
pub const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;
