//! Pushes with a token (ADR 0012), end to end with stock git and two
//! replicating nodes: a delegate grants a key the right to push, stock git
//! pushes with the token (as a Bearer header and through the
//! `guts-node credential` helper), the pushes are logged with their grant
//! and replicated; expired, revoked, foreign and forged tokens are refused
//! and change nothing on either node.

mod common;

use std::path::{Path, PathBuf};

use common::p2p::*;
use common::*;
use tempfile::TempDir;

/// A (replicating) and its follower B, sharing `alice/demo` with one
/// signed push of `main`; `work` is the pusher's clone.
struct Pair {
    tmp: TempDir,
    a: Node,
    b: Node,
    owner: String,
    work: PathBuf,
    c1: String,
}

fn pair() -> Pair {
    let tmp = TempDir::new().expect("tmp");
    let a = peer_node(&tmp.path().join("a"), None, true);
    a.create_repo("alice", "demo");
    let work = tmp.path().join("work");
    let c1 = init_work_repo(&work);
    git_ok(&work, &["push", "-q", &a.repo_url("alice", "demo"), "main"]);
    let owner = test_identity().owner_id();
    let b = peer_node(&tmp.path().join("b"), Some(&p2p_addr(&a)), true);
    eventually(20, "B connects to A", || !connected(&b).is_empty());
    seed(&b, &owner, "demo");
    eventually(20, "B has A's refs", || same_refs(&a, &b, &owner, "demo"));
    Pair {
        tmp,
        a,
        b,
        owner,
        work,
        c1,
    }
}

/// `guts-node token new REPO ARGS...` with the owner's key: the token.
fn new_token(node: &Node, repo: &str, args: &[&str]) -> String {
    let key = test_identity().key_path.display().to_string();
    let mut all = vec!["token", "new", repo, "--key", &key];
    all.extend(args);
    cli_ok(node, &all).trim().to_owned()
}

/// `git push` without signing, with the token as a Bearer header.
fn push_with(work: &Path, token: &str, url: &str, refspec: &str) -> std::process::Output {
    let header = format!("http.extraHeader=Authorization: Bearer {token}");
    git(
        work,
        &[
            "-c",
            "push.gpgSign=false",
            "-c",
            &header,
            "push",
            "--porcelain",
            url,
            refspec,
        ],
    )
}

fn push_ok(work: &Path, token: &str, url: &str, refspec: &str) {
    let out = push_with(work, token, url, refspec);
    assert_success(work, &["push", url, refspec], &out);
}

/// The reason a receive-pack discovery with `token` is refused.
fn refusal(node: &Node, path: &str, token: &str) -> String {
    let resp = http_request(
        node.addr(),
        "GET",
        &format!("{path}/info/refs?service=git-receive-pack"),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("User-Agent", "git/2.0 (libgit2 1.8.1)"),
        ],
        b"",
    );
    assert_eq!(resp.status, 401, "{}", resp.text());
    assert!(
        resp.header("www-authenticate")
            .is_some_and(|h| h.starts_with("Basic ")),
        "no Basic challenge"
    );
    resp.text()
}

#[test]
fn token_pushes_are_accepted_logged_and_replicated() {
    let Pair {
        tmp,
        a,
        b,
        owner,
        work,
        c1,
    } = pair();
    let url = a.repo_url("alice", "demo");
    let token = new_token(
        &a,
        "alice/demo",
        &["--refs", "refs/heads/*", "--expires", "30d"],
    );
    assert!(token.starts_with("guts_"), "{token}");

    // New branch, fast-forward, a ref outside the grant, delete.
    push_ok(&work, &token, &url, "main:refs/heads/feature");
    let c2 = commit_file(&work, "a.txt", "a\n", "on feature");
    push_ok(&work, &token, &url, "HEAD:refs/heads/feature");
    assert_eq!(
        a.server_refs(&owner, "demo").get("refs/heads/feature"),
        Some(&c2)
    );
    let out = push_with(&work, &token, &url, "HEAD:refs/tags/v1");
    assert!(!out.status.success());
    let err = stderr_of(&out) + &String::from_utf8_lossy(&out.stdout);
    assert!(
        err.contains("allows only refs/heads/*, not refs/tags/v1"),
        "{err}"
    );
    assert!(
        err.contains("not unpacked"),
        "a refused push said `unpack ok`: {err}"
    );
    push_ok(&work, &token, &url, ":refs/heads/feature");
    assert!(!a
        .server_refs(&owner, "demo")
        .contains_key("refs/heads/feature"));

    // Stock git through the credential helper: `token save`, then a plain push.
    let creds = tmp.path().join("creds");
    let creds_s = creds.display().to_string();
    let work_s = work.display().to_string();
    cli_ok(
        &a,
        &[
            "token",
            "save",
            &url,
            &token,
            "--repo",
            &work_s,
            "--data-dir",
            &creds_s,
        ],
    );
    git_ok(
        &work,
        &[
            "-c",
            "push.gpgSign=false",
            "push",
            "-q",
            &url,
            "HEAD:refs/heads/helper",
        ],
    );
    assert_eq!(
        a.server_refs(&owner, "demo").get("refs/heads/helper"),
        Some(&c2)
    );

    // The log shows who pushed under which grant; B verifies and applies it.
    let log = updates(&a, &owner, "demo");
    assert_eq!(log.len(), 5, "{log:?}");
    let grant = &log[1]["grant"];
    assert_eq!(grant["granted_by"], test_identity().key.did().to_string());
    assert_eq!(log[1]["signer"], grant["grantee"]);
    assert_ne!(log[1]["signer"], log[0]["signer"]);
    assert!(log[0]["grant"].is_null());
    eventually(20, "B applies the token pushes", || {
        updates(&b, &owner, "demo").len() == 5 && same_refs(&a, &b, &owner, "demo")
    });
    assert_eq!(updates(&b, &owner, "demo")[4]["grant"], log[4]["grant"]);
    let clone = tmp.path().join("clone");
    let refs = clone_refs(&b, &owner, "demo", &clone);
    assert_eq!(refs.get("refs/heads/helper"), Some(&c2));
    assert_eq!(refs.get("refs/heads/main"), Some(&c1));
    assert_fsck(&clone);
}

#[test]
fn tokens_that_do_not_authorize_are_refused_and_change_nothing() {
    let Pair {
        tmp: _tmp,
        a,
        b,
        owner,
        work,
        ..
    } = pair();
    let url = a.repo_url("alice", "demo");
    let path = "/alice/demo";
    a.create_repo("alice", "other");
    let expired = new_token(&a, "alice/demo", &["--expires", "1s"]);
    let foreign = new_token(&a, "alice/other", &[]);
    let revoked = new_token(&a, "alice/demo", &[]);
    push_ok(&work, &revoked, &url, "main:refs/heads/before-revocation");
    cli_ok(
        &a,
        &[
            "token",
            "revoke",
            "alice/demo",
            &revoked,
            "--key",
            &test_identity().key_path.display().to_string(),
        ],
    );
    eventually(20, "B gets the revocation", || {
        b.repo_info(&owner, "demo")["doc_version"] == 2
    });
    let forged = forged_token(&a, &owner);
    // Expiry is checked in whole seconds: 1 s of validity is over after 2.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let refs = a.server_refs(&owner, "demo");
    let log = updates(&a, &owner, "demo").len();
    for (token, reason) in [
        (&expired, "expired"),
        (&foreign, "for another repository"),
        (&revoked, "was revoked"),
        (&forged, "is not a delegate"),
    ] {
        let text = refusal(&a, path, token);
        assert!(text.contains(reason), "{reason}: {text}");
        let out = push_with(&work, token, &url, "main:refs/heads/nope");
        assert!(!out.status.success(), "{reason}: pushed");
        // And with the token as a Basic password, as libgit2 sends it.
        let basic = format!("user:{token}");
        let resp = http_request(
            a.addr(),
            "POST",
            &format!("{path}/git-receive-pack"),
            &[
                (
                    "Authorization",
                    &format!("Basic {}", base64_encode(basic.as_bytes())),
                ),
                ("Content-Type", "application/x-git-receive-pack-request"),
            ],
            &receive_pack_body(
                &[format!(
                    "{ZERO_ID} {} refs/heads/nope",
                    rev_parse(&work, "HEAD")
                )],
                "report-status",
                &empty_pack(),
            ),
        );
        assert_eq!(resp.status, 401, "{reason}: {}", resp.text());
    }
    for node in [&a, &b] {
        assert_eq!(node.server_refs(&owner, "demo"), refs);
        assert_eq!(updates(node, &owner, "demo").len(), log);
    }
}

/// A token whose grant is signed by a key that is no delegate.
fn forged_token(node: &Node, owner: &str) -> String {
    use guts_identity::grant::GrantBody;
    let id = node
        .get(&format!("/api/v1/repos/{owner}/demo/identity"))
        .json()["id"]
        .as_str()
        .expect("id")
        .parse::<guts_identity::RepoId>()
        .expect("repo id");
    let mallory = guts_identity::Keypair::from_seed(&[0x66; 32]);
    let grantee = guts_identity::Keypair::from_seed(&[0x67; 32]);
    let body = GrantBody {
        repo_id: id.0.to_vec(),
        grantee: grantee.did().to_string(),
        refs: vec!["refs/*".into()],
        not_before: 0,
        not_after: u64::MAX / 2,
        note: String::new(),
    };
    guts_identity::PushToken::new(grantee, &body.sign(&mallory))
        .expect("token")
        .encode()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
