//! `guts-node token ...` (push grants and the tokens that carry them) and
//! `guts-node credential` (a git credential helper that remembers tokens).
//! ADR 0012.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use guts_identity::doc::RevokedGrant;
use guts_identity::grant::{Grant, GrantBody, TOKEN_PREFIX};
use guts_identity::{Keypair, PushToken, RepoId};

use crate::client::{fetch_identity, git_config, key_path, load_key, node_url, publish_document};
use crate::config::default_data_dir;
use crate::error::NodeError;
use crate::{ClientArgs, TokenAction};

/// Longest validity `token new` accepts.
const MAX_VALIDITY_SECS: u64 = 10 * 366 * 24 * 3600;
/// The file (mode 0600) in the data dir where `credential` keeps tokens.
const CREDENTIALS_FILE: &str = "credentials.json";

fn client_err(e: impl std::fmt::Display) -> NodeError {
    NodeError::Client(e.to_string())
}

/// `30d`, `12h`, `90m`, `3600s` (or plain seconds) as seconds.
fn parse_duration(s: &str) -> Result<u64, NodeError> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| client_err(format!("bad duration {s:?}: use e.g. 30d, 12h, 90m")))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        "w" => n.saturating_mul(7 * 86_400),
        _ => {
            return Err(client_err(format!(
                "bad duration unit in {s:?}: s, m, h, d or w"
            )))
        }
    };
    if secs == 0 || secs > MAX_VALIDITY_SECS {
        return Err(client_err("a token is valid for 1 second to 10 years"));
    }
    Ok(secs)
}

/// `guts-node token ...`
pub fn token_command(action: TokenAction, args: &ClientArgs) -> Result<(), NodeError> {
    match action {
        TokenAction::New {
            repo,
            refs,
            expires,
            note,
        } => new_token(args, &repo, refs, &expires, note.unwrap_or_default()),
        TokenAction::Revoke {
            repo,
            grant,
            cosign,
        } => revoke(args, &repo, &grant, &cosign),
        TokenAction::Show { token } => show(&token),
        TokenAction::Save { url, token, repo } => save(args, &url, &token, repo.as_deref()),
    }
}

fn new_token(
    args: &ClientArgs,
    repo: &str,
    refs: Vec<String>,
    expires: &str,
    note: String,
) -> Result<(), NodeError> {
    let validity = parse_duration(expires)?;
    let delegate = load_key(&key_path(args))?;
    let base = node_url(args);
    let (view, doc) = fetch_identity(&base, repo)?;
    if !doc.is_delegate(&delegate.did()) {
        return Err(client_err(format!(
            "your key {} is not a delegate of {repo}: only delegates can grant pushes",
            delegate.did()
        )));
    }
    let id: RepoId = view.id.parse().map_err(client_err)?;
    let grantee = Keypair::generate().map_err(client_err)?;
    let now = crate::auth::now();
    let body = GrantBody {
        repo_id: id.0.to_vec(),
        grantee: grantee.did().to_string(),
        refs,
        not_before: now,
        not_after: now + validity,
        note,
    };
    let token = PushToken::new(grantee, &body.sign(&delegate)).map_err(client_err)?;
    println!("{}", token.encode());
    eprintln!(
        "push token for {repo}: refs {}, valid until {} (Unix time), grant {}\n\
         give it as the password (any user name) or as `Authorization: Bearer <token>`;\n\
         stock git: `guts-node token save URL TOKEN`; revoke: `guts-node token revoke {repo} {}`",
        body.refs.join(", "),
        body.not_after,
        token.grant().id_hex(),
        token.grant().id_hex(),
    );
    Ok(())
}

/// A grant id from a token or 64 hex digits.
fn grant_id(text: &str) -> Result<[u8; 32], NodeError> {
    if text.starts_with(TOKEN_PREFIX) {
        return Ok(PushToken::parse(text).map_err(client_err)?.grant().id());
    }
    let bad = || client_err("give the token or its grant id (64 hex digits)");
    if text.len() != 64 {
        return Err(bad());
    }
    let mut id = [0u8; 32];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(text.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
            .map_err(|_| bad())?;
    }
    Ok(id)
}

fn revoke(args: &ClientArgs, repo: &str, grant: &str, cosign: &[PathBuf]) -> Result<(), NodeError> {
    let id = grant_id(grant)?;
    let base = node_url(args);
    let (_, current) = fetch_identity(&base, repo)?;
    if current.revoked_at(&id).is_some() {
        return Err(client_err("that grant is already revoked"));
    }
    let mut next = current.successor();
    next.revoked_grants.push(RevokedGrant {
        grant: id.to_vec(),
        revoked_at: crate::auth::now(),
    });
    let view = publish_document(&base, args, repo, &next, cosign)?;
    println!(
        "{repo}: grant revoked in identity document version {}; peers refuse it as the document reaches them",
        view.version
    );
    Ok(())
}

fn show(token: &str) -> Result<(), NodeError> {
    let token = PushToken::parse(token).map_err(client_err)?;
    let g: &Grant<_> = token.grant();
    let b = g.body();
    println!("grant      {}", g.id_hex());
    println!(
        "repository {}",
        RepoId(b.repo_id.clone().try_into().unwrap_or([0; 32]))
    );
    println!("grantee    {}", g.grantee());
    println!("granted by {} (signature checked by nodes)", g.signer());
    println!("refs       {}", b.refs.join(", "));
    println!("valid      {} .. {} (Unix time)", b.not_before, b.not_after);
    if !b.note.is_empty() {
        println!("note       {}", b.note);
    }
    Ok(())
}

/// Where the credential helper keeps tokens.
fn credentials_path(args: &ClientArgs) -> PathBuf {
    args.data_dir
        .clone()
        .unwrap_or_else(default_data_dir)
        .join(CREDENTIALS_FILE)
}

/// `protocol://host/path` without `.git`, trailing slashes and git-lfs's
/// `/info/lfs` (so git-lfs finds the repository's token): the key
/// a token is kept under.
fn credential_key(protocol: &str, host: &str, path: &str) -> String {
    let path = path.trim_matches('/');
    let path = path.strip_suffix("/info/lfs").unwrap_or(path);
    let path = path.strip_suffix(".git").unwrap_or(path);
    format!("{protocol}://{host}/{path}")
}

fn load_credentials(path: &Path) -> Result<BTreeMap<String, String>, NodeError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).map_err(|e| client_err(format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(client_err(format!("{}: {e}", path.display()))),
    }
}

fn store_credentials(path: &Path, creds: &BTreeMap<String, String>) -> Result<(), NodeError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(creds).map_err(client_err)?;
    let tmp = path.with_extension("tmp");
    crate::auth::write_private(&tmp, text.as_bytes())?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn save(args: &ClientArgs, url: &str, token: &str, repo: Option<&Path>) -> Result<(), NodeError> {
    PushToken::parse(token).map_err(client_err)?;
    let (protocol, rest) = url.split_once("://").ok_or_else(|| {
        client_err("give the repository's URL, e.g. http://127.0.0.1:8080/alice/demo.git")
    })?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path_file = credentials_path(args);
    let mut creds = load_credentials(&path_file)?;
    creds.insert(
        credential_key(protocol, host, path),
        token.trim().to_owned(),
    );
    store_credentials(&path_file, &creds)?;
    let exe = std::env::current_exe()?;
    let helper = format!(
        "!'{}' credential --data-dir '{}'",
        exe.display(),
        path_file.parent().unwrap_or(Path::new(".")).display()
    );
    git_config(repo, &format!("credential.{url}.helper"), &helper)?;
    git_config(repo, &format!("credential.{url}.useHttpPath"), "true")?;
    // git ≥ 2.46 then sends the token with its first request.
    git_config(repo, &format!("http.{url}.proactiveAuth"), "basic")?;
    println!(
        "saved; git pushes to {url} with this token (kept in {}, mode 0600)",
        path_file.display()
    );
    Ok(())
}

/// `guts-node credential get|store|erase`: git's credential helper
/// protocol (gitcredentials(7)) over the saved tokens.
pub fn credential(operation: &str, args: &ClientArgs) -> Result<(), NodeError> {
    let mut attrs = BTreeMap::new();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once('=') {
            attrs.insert(k.to_owned(), v.to_owned());
        }
    }
    let get = |k: &str| attrs.get(k).map_or("", String::as_str);
    let key = credential_key(get("protocol"), get("host"), get("path"));
    let path = credentials_path(args);
    let mut creds = load_credentials(&path)?;
    match operation {
        "get" => {
            let prefix = format!("{}://{}/", get("protocol"), get("host"));
            let found = creds.get(&key).or_else(|| {
                // Without useHttpPath git sends no path: a host's only token.
                let mut host = creds.iter().filter(|(k, _)| k.starts_with(&prefix));
                match (attrs.contains_key("path"), host.next(), host.next()) {
                    (false, Some((_, t)), None) => Some(t),
                    _ => None,
                }
            });
            if let Some(token) = found {
                let mut out = std::io::stdout().lock();
                writeln!(out, "username=guts\npassword={token}")?;
            }
        }
        "store" if get("password").starts_with(TOKEN_PREFIX) && attrs.contains_key("path") => {
            creds.insert(key, get("password").to_owned());
            store_credentials(&path, &creds)?;
        }
        "erase" => {
            if creds.get(&key).is_some_and(|t| t == get("password")) {
                creds.remove(&key);
                store_credentials(&path, &creds)?;
            }
        }
        "store" => {}
        other => {
            return Err(client_err(format!(
                "unknown credential operation {other:?}: get, store or erase"
            )))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d").expect("30d"), 30 * 86_400);
        assert_eq!(parse_duration("90m").expect("90m"), 5400);
        assert_eq!(parse_duration("15").expect("15"), 15);
        for bad in ["", "0d", "d", "3y", "-1d", "99999w"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_ignore_the_git_suffix() {
        assert_eq!(
            credential_key("http", "h:1", "/alice/demo.git"),
            credential_key("http", "h:1", "alice/demo/")
        );
        assert_eq!(
            credential_key("http", "h:1", "alice/demo.git/info/lfs"),
            credential_key("http", "h:1", "alice/demo")
        );
        assert!(grant_id(&"ab".repeat(32)).is_ok());
        assert!(grant_id("xyz").is_err());
    }
}
