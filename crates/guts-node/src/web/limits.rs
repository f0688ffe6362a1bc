//! Bounds on the work of one web page (ADR 0018). Each page reads at most
//! this much, whatever the repository holds.

use std::time::Duration;

use crate::error::NodeError;

/// Repositories listed on the node page.
pub const MAX_REPOS_SHOWN: usize = 200;
/// Connected peers listed on the node page.
pub const MAX_PEERS_SHOWN: usize = 100;
/// Branches and tags listed on a repository page (each kind).
pub const MAX_REFS_SHOWN: usize = 30;
/// Ref moves listed per signed update.
pub const MAX_MOVES_SHOWN: usize = 50;
/// Tree entries listed in a directory.
pub const MAX_TREE_ENTRIES: usize = 1000;
/// Commits on the repository page.
pub const RECENT_COMMITS: usize = 20;
/// Commits per page of the commit log.
pub const LOG_PAGE: usize = 50;
/// Pages of the commit log (deeper history: `git log` on a clone).
pub const MAX_LOG_PAGES: usize = 100;
/// Bytes of a README rendered; the rest is cut.
pub const MAX_README_BYTES: usize = 256 * 1024;
/// Bytes of a file shown on its page; larger files are cut, with a link
/// to the raw file.
pub const MAX_BLOB_DISPLAY: usize = 512 * 1024;
/// Bytes of a blob read for a page at all (above: not read, link to raw).
pub const MAX_BLOB_READ: u64 = 16 * 1024 * 1024;
/// Bytes of a raw file served; larger ones are refused (use git).
pub const MAX_RAW_BYTES: u64 = 32 * 1024 * 1024;
/// Files of a commit's diff.
pub const MAX_DIFF_FILES: usize = 300;
/// Lines of a commit's diff over all files.
pub const MAX_DIFF_LINES: usize = 10_000;
/// Bytes of a commit's diff lines over all files.
pub const MAX_DIFF_BYTES: usize = 1024 * 1024;
/// Files with a side larger than this are not diffed line by line.
pub const MAX_DIFF_FILE_BYTES: u64 = 1024 * 1024;
/// Trees a commit's diff reads to find the changed files.
pub const MAX_DIFF_TREES: usize = 10_000;
/// Time one file's line diff may take before settling for a coarser one.
pub const DIFF_FILE_TIMEOUT: Duration = Duration::from_millis(200);
/// Signed updates on the updates page (newest first).
pub const MAX_UPDATES_SHOWN: usize = 500;

/// The diff limits of a commit page.
pub fn diff_limits() -> guts_git::browse::diff::Limits {
    guts_git::browse::diff::Limits {
        max_files: MAX_DIFF_FILES,
        max_lines: MAX_DIFF_LINES,
        max_bytes: MAX_DIFF_BYTES,
        max_file_bytes: MAX_DIFF_FILE_BYTES,
        max_trees: MAX_DIFF_TREES,
        file_timeout: DIFF_FILE_TIMEOUT,
    }
}

/// File contents that web requests may hold in memory at once, node-wide,
/// in MiB: a file page holds its blob while it renders, a raw download
/// until the client has taken it. A request that would go over it is
/// answered 503 at once, so many concurrent downloads of large files
/// cannot grow the node's memory past this.
pub const BLOB_BUDGET_MIB: usize = 256;

static BLOB_BUDGET: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(BLOB_BUDGET_MIB);

/// Memory reserved from [`BLOB_BUDGET_MIB`] for reading a blob of `bytes`
/// (twice its size, rounded up to MiB: the object as read and the copy
/// that is kept); released when dropped.
pub fn reserve_blob(bytes: u64) -> Result<tokio::sync::SemaphorePermit<'static>, NodeError> {
    let mib = bytes.saturating_mul(2).div_ceil(1 << 20).max(1);
    let mib = u32::try_from(mib).unwrap_or(u32::MAX);
    BLOB_BUDGET
        .try_acquire_many(mib)
        .map_err(|_| NodeError::Busy {
            what: "file downloads",
            retry_after: Duration::from_secs(5),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_contents_in_memory_are_bounded() {
        let all = reserve_blob((BLOB_BUDGET_MIB as u64) << 19).expect("the whole budget");
        assert!(matches!(
            reserve_blob(1),
            Err(NodeError::Busy {
                what: "file downloads",
                ..
            })
        ));
        drop(all);
        let one = reserve_blob(1).expect("free again");
        drop(one);
    }
}
