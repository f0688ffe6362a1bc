//! The signed-update log of each repository, kept in sled beside the refs
//! so that an entry and the ref changes it causes commit in one transaction
//! ([`Append`], a [`guts_git::storage::Journal`]).
//!
//! Trees (keys start with the canonical `OWNER/NAME`):
//!
//! ```text
//! signed-updates        OWNER/NAME \0 seq(u64 BE)               -> SignedRefUpdate (prost)
//! signed-update-keys    OWNER/NAME \0 key(32)                   -> seq (u64 BE)
//! signed-update-lines   OWNER/NAME \0 REF \0 seq(u64 BE)        -> old(20) new(20) key(32)
//! signed-update-heads   OWNER/NAME                              -> next seq (u64 BE)
//! signed-update-buckets OWNER/NAME \0 bucket(1)                 -> count(u64 BE) xor(32)
//! signed-update-olds    OWNER/NAME \0 REF \0 old(20) seq(u64 BE) -> ()
//! ```
//!
//! The key index answers "is this update logged?" and the log summary
//! without decoding entries; the line index gives the conflict rule the
//! updates of one ref without parsing certificates. Applying an update
//! costs the same whether the log holds 10 or 100,000 entries, apart from
//! the lines of the refs it touches (and not even those for a fast-forward
//! that nothing contests, which the index of old values settles: see
//! [`SignedLog::extends`]). The buckets (`guts_p2p::logset`) are
//! what peers compare: kept in the same transaction, they make a log
//! comparison cost what differs, not the log's length.

use std::cell::Cell;

use guts_git::names::RepoName;
use guts_git::storage::Journal;
use guts_identity::update::UpdateKey;
use guts_identity::{PushCert, SignedRefUpdate, Verified};
use guts_p2p::conflict::{self, Oid};
use guts_p2p::logset::{bucket_of, Bucket, Buckets};
use prost::Message;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use crate::error::NodeError;

/// What a commit is refused with when the update is already in the log.
pub const ALREADY_LOGGED: &str =
    "this signed update is already in the repository's log (a replayed push certificate)";

/// The log trees.
#[derive(Clone)]
pub struct SignedLog {
    entries: sled::Tree,
    keys: sled::Tree,
    lines: sled::Tree,
    heads: sled::Tree,
    buckets: sled::Tree,
    olds: sled::Tree,
}

/// One effective line of an update: the ref, its old and new value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Full ref name.
    pub name: String,
    /// Expected value (`conflict::ZERO`: created).
    pub old: Oid,
    /// New value (`conflict::ZERO`: deleted).
    pub new: Oid,
}

/// A verified update ready to be logged: its bytes, key and effective lines.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The update.
    pub update: SignedRefUpdate,
    /// Its key.
    pub key: UpdateKey,
    /// The lines that take effect (the certificate's, refused ones left out).
    pub lines: Vec<Line>,
    /// The certificate's signer (`did:key:...`), for the event stream.
    pub signer: Option<String>,
    /// The pushee URL the certificate names (the node that accepted it).
    pub pushee: Option<String>,
}

impl Entry {
    /// The entry of `update`, whose certificate `cert` verified.
    pub fn new(update: SignedRefUpdate, cert: &PushCert<Verified>) -> Result<Entry, String> {
        let lines = update
            .effective(cert)
            .map(|c| {
                Ok(Line {
                    name: c.name.clone(),
                    old: oid20(&c.old)?,
                    new: oid20(&c.new)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Entry {
            key: update.key(),
            update,
            lines,
            signer: Some(cert.signer().to_string()),
            pushee: cert.pushee().map(str::to_owned),
        })
    }
}

/// A 20-byte object id from hex.
pub fn oid20(hex: &str) -> Result<Oid, String> {
    let id =
        guts_git::ObjectId::from_hex(hex.as_bytes()).map_err(|_| format!("bad object id {hex}"))?;
    id.as_bytes()
        .try_into()
        .map_err(|_| "not a SHA-1 id".to_owned())
}

fn prefix(repo: &RepoName) -> Vec<u8> {
    let mut k = repo.to_string().into_bytes();
    k.push(0);
    k
}

fn seq_key(repo: &RepoName, seq: u64) -> Vec<u8> {
    let mut k = prefix(repo);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn line_prefix(repo: &RepoName, name: &str) -> Vec<u8> {
    let mut k = prefix(repo);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

fn u64_of(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}

fn internal(e: impl std::fmt::Display) -> NodeError {
    NodeError::Internal(e.to_string())
}

impl SignedLog {
    /// Open the trees in `db`, building the indexes of a log written before
    /// they existed.
    pub fn open(db: &sled::Db) -> Result<Self, NodeError> {
        let t = |name: &str| db.open_tree(name).map_err(internal);
        let log = SignedLog {
            entries: t("signed-updates")?,
            keys: t("signed-update-keys")?,
            lines: t("signed-update-lines")?,
            heads: t("signed-update-heads")?,
            buckets: t("signed-update-buckets")?,
            olds: t("signed-update-olds")?,
        };
        if log.heads.is_empty() && !log.entries.is_empty() {
            log.rebuild_indexes()?;
        }
        if log.buckets.is_empty() && !log.keys.is_empty() {
            log.rebuild_buckets()?;
        }
        if log.olds.is_empty() && !log.lines.is_empty() {
            log.rebuild_olds()?;
        }
        Ok(log)
    }

    /// Count every indexed key in its bucket (a log written before the
    /// buckets existed).
    fn rebuild_buckets(&self) -> Result<(), NodeError> {
        tracing::info!("indexing the signed-update logs by key range");
        let mut all: std::collections::BTreeMap<Vec<u8>, Bucket> = Default::default();
        for k in self.keys.iter().keys() {
            let k = k.map_err(internal)?;
            let Some(split) = k.len().checked_sub(32) else {
                continue;
            };
            let Ok(key) = <[u8; 32]>::try_from(&k[split..]) else {
                continue;
            };
            let mut bk = k[..split].to_vec();
            bk.push(bucket_of(&key));
            all.entry(bk).or_default().add(&key);
        }
        for (k, b) in all {
            self.buckets
                .insert(k, &b.to_bytes()[..])
                .map_err(internal)?;
        }
        self.buckets.flush().map_err(internal)?;
        Ok(())
    }

    /// Index every logged line by its old value (a log written before that
    /// index existed).
    fn rebuild_olds(&self) -> Result<(), NodeError> {
        for item in self.lines.iter() {
            let (k, v) = item.map_err(internal)?;
            let (Some(split), Some(old)) = (k.len().checked_sub(8), v.get(..20)) else {
                continue;
            };
            let mut ok = k[..split].to_vec();
            ok.extend_from_slice(old);
            ok.extend_from_slice(&k[split..]);
            self.olds.insert(ok, &[][..]).map_err(internal)?;
        }
        self.olds.flush().map_err(internal)?;
        Ok(())
    }

    /// Whether some logged update of ref `name` starts from `old`.
    pub fn has_line_from(&self, repo: &RepoName, name: &str, old: &Oid) -> Result<bool, NodeError> {
        let mut k = line_prefix(repo, name);
        k.extend_from_slice(old);
        Ok(self
            .olds
            .scan_prefix(k)
            .next()
            .transpose()
            .map_err(internal)?
            .is_some())
    }

    /// The value of ref `name` once `line` is logged too, if the index
    /// settles it without the ref's whole history: the ref is at
    /// `line.old` (`current`), and no logged update of the ref starts from
    /// `line.old` (so the conflict rule's walk reaches it once, last) or
    /// from `line.new` (so nothing continues after it). Then `line` is the
    /// only candidate at the end of the walk and wins: the ref moves to
    /// `line.new`, as [`conflict::resolve`] over every line would say.
    /// `None`: resolve over every line.
    pub fn extends(
        &self,
        repo: &RepoName,
        line: &Line,
        current: &Oid,
    ) -> Result<Option<Oid>, NodeError> {
        if line.old != *current
            || self.has_line_from(repo, &line.name, &line.old)?
            || self.has_line_from(repo, &line.name, &line.new)?
        {
            return Ok(None);
        }
        Ok(Some(line.new))
    }

    /// The buckets of `repo`'s log.
    pub fn buckets(&self, repo: &RepoName) -> Result<Buckets, NodeError> {
        let p = prefix(repo);
        let mut out = Buckets::default();
        for item in self.buckets.scan_prefix(&p) {
            let (k, v) = item.map_err(internal)?;
            let (Some(&i), Some(b)) = (k.get(p.len()), Bucket::from_bytes(&v)) else {
                return Err(NodeError::Internal("corrupt log bucket".into()));
            };
            if let Some(slot) = out.0.get_mut(usize::from(i)) {
                *slot = b;
            }
        }
        Ok(out)
    }

    /// The keys of `repo`'s log in `buckets`, in key order.
    pub fn keys_in(&self, repo: &RepoName, buckets: &[u8]) -> Result<Vec<UpdateKey>, NodeError> {
        let p = prefix(repo);
        let mut out = Vec::new();
        for &b in buckets {
            let mut bp = p.clone();
            bp.push(b);
            for k in self.keys.scan_prefix(&bp).keys() {
                let k = k.map_err(internal)?;
                let key: UpdateKey = k[p.len()..]
                    .try_into()
                    .map_err(|_| NodeError::Internal("corrupt log key index".into()))?;
                out.push(key);
            }
        }
        Ok(out)
    }

    /// The encoded entry with `key` and its sequence number.
    pub fn entry(
        &self,
        repo: &RepoName,
        key: &UpdateKey,
    ) -> Result<Option<(u64, Vec<u8>)>, NodeError> {
        let mut k = prefix(repo);
        k.extend_from_slice(key);
        let Some(seq) = self.keys.get(k).map_err(internal)?.and_then(|v| u64_of(&v)) else {
            return Ok(None);
        };
        let entry = self.entries.get(seq_key(repo, seq)).map_err(internal)?;
        Ok(entry.map(|e| (seq, e.to_vec())))
    }

    /// Index a log written before the indexes existed. Every entry gets
    /// its key indexed and the next sequence number follows the highest
    /// entry; lines are indexed for entries whose certificate verifies (all
    /// of them, as they were verified when logged).
    fn rebuild_indexes(&self) -> Result<(), NodeError> {
        tracing::info!("indexing the signed-update logs");
        for item in self.entries.iter() {
            let (k, v) = item.map_err(internal)?;
            let split = k.len().saturating_sub(9);
            let (Ok(repo), Some(seq)) = (
                RepoName::parse(&String::from_utf8_lossy(&k[..split])),
                u64_of(k.get(split + 1..).unwrap_or_default()),
            ) else {
                continue;
            };
            let update = SignedRefUpdate::decode(&v[..]).map_err(internal)?;
            let key_bytes = update.key();
            let mut key = prefix(&repo);
            key.extend_from_slice(&key_bytes);
            self.keys
                .insert(key, &seq.to_be_bytes())
                .map_err(internal)?;
            let next = self
                .heads
                .get(repo.to_string())
                .map_err(internal)?
                .and_then(|v| u64_of(&v))
                .unwrap_or(1)
                .max(seq + 1);
            self.heads
                .insert(repo.to_string(), &next.to_be_bytes())
                .map_err(internal)?;
            let Ok(cert) = PushCert::parse(&update.certificate).and_then(PushCert::verify) else {
                tracing::warn!(repo = %repo, seq, "a logged update does not verify; its lines are not indexed");
                continue;
            };
            let entry = Entry::new(update, &cert).map_err(NodeError::Internal)?;
            for line in &entry.lines {
                let mut lk = line_prefix(&repo, &line.name);
                lk.extend_from_slice(&seq.to_be_bytes());
                self.lines
                    .insert(lk, line_value(line, &entry.key))
                    .map_err(internal)?;
            }
        }
        self.heads.flush().map_err(internal)?;
        Ok(())
    }

    /// Whether `repo`'s log holds the update with `key`.
    pub fn is_logged(&self, repo: &RepoName, key: &UpdateKey) -> Result<bool, NodeError> {
        let mut k = prefix(repo);
        k.extend_from_slice(key);
        self.keys.contains_key(k).map_err(internal)
    }

    /// The log, oldest first, with sequence numbers.
    pub fn updates(&self, repo: &RepoName) -> Result<Vec<(u64, SignedRefUpdate)>, NodeError> {
        let mut out = Vec::new();
        for item in self.entries.scan_prefix(prefix(repo)) {
            let (k, v) = item.map_err(internal)?;
            let seq = k
                .len()
                .checked_sub(8)
                .and_then(|i| u64_of(&k[i..]))
                .ok_or_else(|| NodeError::Internal("corrupt log key".into()))?;
            out.push((seq, SignedRefUpdate::decode(&v[..]).map_err(internal)?));
        }
        Ok(out)
    }

    /// Every logged effective line of ref `name`, as the conflict rule takes them.
    pub fn lines(
        &self,
        repo: &RepoName,
        name: &str,
    ) -> Result<Vec<conflict::RefUpdate>, NodeError> {
        let mut out = Vec::new();
        for v in self.lines.scan_prefix(line_prefix(repo, name)).values() {
            out.push(decode_line(&v.map_err(internal)?)?);
        }
        Ok(out)
    }

    /// Forget `repo`'s log.
    pub fn delete(&self, repo: &RepoName) -> Result<(), NodeError> {
        for tree in [
            &self.entries,
            &self.keys,
            &self.lines,
            &self.buckets,
            &self.olds,
        ] {
            for k in tree.scan_prefix(prefix(repo)).keys() {
                tree.remove(k.map_err(internal)?).map_err(internal)?;
            }
        }
        self.heads.remove(repo.to_string()).map_err(internal)?;
        Ok(())
    }

    /// The journal that appends `entry` to `repo`'s log in a ref commit.
    pub fn append<'a>(&'a self, repo: &'a RepoName, entry: &'a Entry) -> Append<'a> {
        Append {
            log: self,
            repo,
            entry,
            seq: Cell::new(None),
        }
    }
}

fn line_value(line: &Line, key: &UpdateKey) -> Vec<u8> {
    let mut v = Vec::with_capacity(72);
    v.extend_from_slice(&line.old);
    v.extend_from_slice(&line.new);
    v.extend_from_slice(key);
    v
}

/// Appends one entry to a log, inside a ref commit. Every ref change of the
/// commit must apply (the caller computed them under the repository's
/// lock); otherwise, or if the entry is already logged, the whole commit is
/// cancelled.
pub struct Append<'a> {
    log: &'a SignedLog,
    repo: &'a RepoName,
    entry: &'a Entry,
    seq: Cell<Option<u64>>,
}

impl Append<'_> {
    /// The sequence number the entry got, once committed.
    pub fn seq(&self) -> Option<u64> {
        self.seq.get()
    }
}

impl Journal for Append<'_> {
    fn trees(&self) -> Vec<sled::Tree> {
        let l = self.log;
        vec![
            l.entries.clone(),
            l.keys.clone(),
            l.lines.clone(),
            l.heads.clone(),
            l.buckets.clone(),
            l.olds.clone(),
        ]
    }

    fn record(
        &self,
        t: &[TransactionalTree],
        applied: &[bool],
    ) -> Result<(), ConflictableTransactionError<String>> {
        let [entries, keys, lines, heads, buckets, olds] = t else {
            return Err(ConflictableTransactionError::Abort(
                "log trees missing from the transaction".into(),
            ));
        };
        if applied.contains(&false) {
            return Err(ConflictableTransactionError::Abort(
                "refs moved concurrently; try again".into(),
            ));
        }
        let mut key = prefix(self.repo);
        key.extend_from_slice(&self.entry.key);
        if keys.get(&key)?.is_some() {
            return Err(ConflictableTransactionError::Abort(ALREADY_LOGGED.into()));
        }
        let head = self.repo.to_string();
        let seq = heads
            .get(head.as_bytes())?
            .and_then(|v| u64_of(&v))
            .unwrap_or(1);
        entries.insert(seq_key(self.repo, seq), self.entry.update.encode_to_vec())?;
        keys.insert(key, &seq.to_be_bytes())?;
        for line in &self.entry.lines {
            let mut lk = line_prefix(self.repo, &line.name);
            lk.extend_from_slice(&seq.to_be_bytes());
            lines.insert(lk, line_value(line, &self.entry.key))?;
            let mut ok = line_prefix(self.repo, &line.name);
            ok.extend_from_slice(&line.old);
            ok.extend_from_slice(&seq.to_be_bytes());
            olds.insert(ok, &[][..])?;
        }
        heads.insert(head.as_bytes(), &(seq + 1).to_be_bytes())?;
        let mut bk = prefix(self.repo);
        bk.push(bucket_of(&self.entry.key));
        let mut bucket = buckets
            .get(&bk)?
            .and_then(|v| Bucket::from_bytes(&v))
            .unwrap_or_default();
        bucket.add(&self.entry.key);
        buckets.insert(bk, &bucket.to_bytes()[..])?;
        self.seq.set(Some(seq));
        Ok(())
    }
}

impl SignedLog {
    /// The conflict rule's resolution of every ref of `repo`'s log, from
    /// the line index.
    pub fn resolutions(
        &self,
        repo: &RepoName,
    ) -> Result<std::collections::BTreeMap<String, conflict::Resolution>, NodeError> {
        let p = prefix(repo);
        let mut per_ref: std::collections::BTreeMap<String, Vec<conflict::RefUpdate>> =
            Default::default();
        for item in self.lines.scan_prefix(&p) {
            let (k, v) = item.map_err(internal)?;
            let name_end = k.len().saturating_sub(9);
            let name = String::from_utf8_lossy(k.get(p.len()..name_end).unwrap_or_default());
            per_ref
                .entry(name.into_owned())
                .or_default()
                .push(decode_line(&v)?);
        }
        Ok(per_ref
            .into_iter()
            .map(|(name, lines)| (name, conflict::resolve(&lines)))
            .collect())
    }
}

fn decode_line(v: &[u8]) -> Result<conflict::RefUpdate, NodeError> {
    let (Some(old), Some(new), Some(key)) = (
        v.get(..20).and_then(|b| b.try_into().ok()),
        v.get(20..40).and_then(|b| b.try_into().ok()),
        v.get(40..72).and_then(|b| b.try_into().ok()),
    ) else {
        return Err(NodeError::Internal("corrupt log line index".into()));
    };
    Ok(conflict::RefUpdate { old, new, key })
}

#[cfg(test)]
mod tests;
