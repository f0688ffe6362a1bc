//! Identities, identity documents and signed pushes, end to end with stock
//! git and openssh's `ssh-keygen` (git signs push certificates with it).

mod common;

use std::path::Path;

use base64::Engine;
use common::*;
use tempfile::TempDir;

const ZERO: &str = "0000000000000000000000000000000000000000";

fn key_arg(id: &TestIdentity) -> String {
    id.key_path.display().to_string()
}

fn bob() -> TestIdentity {
    TestIdentity::from_seed("bob", 0xb0)
}

fn mallory() -> TestIdentity {
    TestIdentity::from_seed("mallory", 0x66)
}

/// A work repo with one commit, and its commit id.
fn work_repo(dir: &Path) -> String {
    init_work_repo(dir)
}

/// What a refused push must leave as it was: refs, stored objects and the
/// signed-update log.
fn state_of(node: &Node, owner: &str, name: &str) -> (serde_json::Value, serde_json::Value, usize) {
    let info = node.repo_info(owner, name);
    let log = node
        .get(&format!("/api/v1/repos/{owner}/{name}/updates"))
        .json()
        .as_array()
        .map_or(0, Vec::len);
    (info["refs"].clone(), info["object_count"].clone(), log)
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

#[test]
fn a_delegates_signed_push_is_accepted_and_logged() {
    let tmp = TempDir::new().expect("tmp");
    let node = Node::start();
    let alice = test_identity();
    let out = cli_ok(
        &node,
        &["repo", "create", "alice/demo", "--key", &key_arg(alice)],
    );
    assert!(out.contains(&alice.owner_id()), "{out}");
    let work = tmp.path().join("w");
    let c = work_repo(&work);
    // Both the alias URL and the canonical URL reach the repository.
    git_ok(
        &work,
        &["push", "-q", &node.repo_url("alice", "demo"), "main"],
    );
    let canonical = node.repo_url(&alice.owner_id(), "demo");
    let clone = tmp.path().join("c");
    git_ok(tmp.path(), &["clone", "-q", &canonical, &path_str(&clone)]);
    assert_eq!(rev_parse(&clone, "HEAD"), c);

    // The update is logged, and verifies against the identity document
    // fetched from the node (anyone can check it).
    let log = node.get("/api/v1/repos/alice/demo/updates").json();
    let entries = log.as_array().expect("array");
    assert_eq!(entries.len(), 1, "{log}");
    assert_eq!(entries[0]["signer"], alice.key.did().to_string());
    let ident = node.get("/api/v1/repos/alice/demo/identity").json();
    let b64 = base64::engine::general_purpose::STANDARD;
    let doc_bytes = b64
        .decode(ident["versions"][0].as_str().expect("version"))
        .expect("base64");
    let doc = guts_identity::Doc::from_bytes(&doc_bytes)
        .and_then(guts_identity::Doc::verify_genesis)
        .expect("document verifies");
    let id = doc.genesis_id().expect("genesis id");
    assert_eq!(ident["id"], id.to_string());
    let update = guts_identity::SignedRefUpdate {
        repo_id: id.0.to_vec(),
        certificate: entries[0]["certificate"].as_str().expect("cert").to_owned(),
        doc_version: 1,
        refused: Vec::new(),
        grant: Vec::new(),
    };
    let cert = update
        .verify(&id, &doc, &doc)
        .expect("logged update verifies");
    assert_eq!(cert.commands()[0].new, c);
}

#[test]
fn an_unsigned_push_is_refused_with_what_to_configure() {
    let tmp = TempDir::new().expect("tmp");
    let node = Node::start();
    node.create_repo("alice", "demo");
    let work = tmp.path().join("w");
    work_repo(&work);
    let url = node.repo_url("alice", "demo");
    let out = git_fail(&work, &["-c", "push.gpgSign=false", "push", &url, "main"]);
    let err = stderr_of(&out);
    assert!(
        err.contains("accepts signed pushes and pushes with a token"),
        "{err}"
    );
    assert!(err.contains("guts-node git-setup"), "{err}");
    assert!(err.contains("gpg.format=ssh"), "{err}");
    assert!(err.contains("guts-node token new"), "{err}");
    // The pack was never read: git must not be told `unpack ok`.
    assert!(err.contains("remote unpack failed: not unpacked"), "{err}");
    assert!(node.server_refs("alice", "demo").is_empty());
    assert!(node
        .get("/api/v1/repos/alice/demo/updates")
        .json()
        .as_array()
        .expect("array")
        .is_empty());
}

#[test]
fn a_push_signed_by_a_non_delegate_is_refused() {
    let tmp = TempDir::new().expect("tmp");
    let node = Node::start();
    node.create_repo("alice", "demo");
    let work = tmp.path().join("w");
    work_repo(&work);
    let before = state_of(&node, "alice", "demo");
    let mallory = mallory();
    let key = format!("user.signingkey={}", key_arg(&mallory));
    let out = git_fail(
        &work,
        &["-c", &key, "push", &node.repo_url("alice", "demo"), "main"],
    );
    let err = stderr_of(&out);
    assert!(err.contains("is not a delegate"), "{err}");
    assert!(err.contains(&mallory.key.did().to_string()), "{err}");
    assert!(node.server_refs("alice", "demo").is_empty());
    assert_eq!(state_of(&node, "alice", "demo"), before, "nothing stored");
}

#[test]
fn a_certificate_replayed_to_another_repository_is_refused() {
    let tmp = TempDir::new().expect("tmp");
    let node = Node::start();
    node.create_repo("alice", "one");
    node.create_repo("alice", "two");
    let work = tmp.path().join("w");
    let c = work_repo(&work);
    git_ok(
        &work,
        &["push", "-q", &node.repo_url("alice", "one"), "main"],
    );
    // Make "two" hold the objects, so only the certificate is at stake.
    git_ok(
        &work,
        &["push", "-q", &node.repo_url("alice", "two"), "main:base"],
    );
    let logged = node.get("/api/v1/repos/alice/one/updates").json();
    let cert = logged[0]["certificate"].as_str().expect("cert").to_owned();
    assert!(cert.contains(&format!("{ZERO} {c} refs/heads/main")));

    let body = signed_receive_pack_body(&cert, "report-status", &empty_pack());
    let resp = node.post_service("alice", "two", "git-receive-pack", &body);
    let text = resp.text();
    assert!(text.contains("ng refs/heads/main"), "{text}");
    assert!(text.contains("not for this repository"), "{text}");
    assert_eq!(
        node.server_refs("alice", "two").get("refs/heads/main"),
        None
    );

    // Replayed to its own repository within the nonce's lifetime, the
    // certificate still cannot move anything: its old value no longer
    // matches the ref (compare-and-swap), and nothing more is logged.
    let body = signed_receive_pack_body(&cert, "report-status", &empty_pack());
    let text = node
        .post_service("alice", "one", "git-receive-pack", &body)
        .text();
    assert!(text.contains("ng refs/heads/main"), "{text}");
    assert_eq!(
        node.get("/api/v1/repos/alice/one/updates")
            .json()
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[test]
fn a_certificate_whose_ref_lines_differ_from_the_commands_is_refused() {
    let tmp = TempDir::new().expect("tmp");
    let node = Node::start();
    node.create_repo("alice", "demo");
    let work = tmp.path().join("w");
    let c = work_repo(&work);
    git_ok(
        &work,
        &["push", "-q", &node.repo_url("alice", "demo"), "main"],
    );
    let before = node.server_refs("alice", "demo");

    let nonce = node.push_cert_nonce("alice", "demo").expect("nonce");
    let signed = [format!("{ZERO} {c} refs/heads/signed")];
    let cert = push_certificate(
        test_identity(),
        &node.repo_url("alice", "demo"),
        &nonce,
        &signed,
    );
    // The certificate block, then a command list naming a different ref.
    let mut body = pkt(b"push-cert\0report-status\n");
    for line in cert.split_inclusive('\n') {
        body.extend(pkt(line.as_bytes()));
    }
    body.extend(pkt(b"push-cert-end\n"));
    body.extend(pkt(format!("{ZERO} {c} refs/heads/sneaky\n").as_bytes()));
    body.extend(b"0000");
    body.extend(empty_pack());
    let text = node
        .post_service("alice", "demo", "git-receive-pack", &body)
        .text();
    assert!(
        text.contains("does not match the pushed commands"),
        "{text}"
    );
    assert_eq!(node.server_refs("alice", "demo"), before);

    // A tampered certificate (ref line edited after signing) fails its signature.
    let tampered = cert.replace("refs/heads/signed", "refs/heads/sneaky");
    let body = signed_receive_pack_body(&tampered, "report-status", &empty_pack());
    let text = node
        .post_service("alice", "demo", "git-receive-pack", &body)
        .text();
    assert!(text.contains("does not match the certificate"), "{text}");
    assert_eq!(node.server_refs("alice", "demo"), before);

    // Push options sent beside a certificate that does not list them (git
    // signs them too): refused, as git's receive-pack does.
    let mut body = pkt(b"push-cert\0report-status push-options\n");
    for line in cert.split_inclusive('\n') {
        body.extend(pkt(line.as_bytes()));
    }
    body.extend(pkt(b"push-cert-end\n"));
    body.extend(b"0000");
    body.extend(pkt(b"ci.skip\n"));
    body.extend(b"0000");
    body.extend(empty_pack());
    let text = node
        .post_service("alice", "demo", "git-receive-pack", &body)
        .text();
    assert!(text.contains("inconsistent push options"), "{text}");
    assert_eq!(node.server_refs("alice", "demo"), before);

    // The untampered certificate on its own is accepted.
    let body = signed_receive_pack_body(&cert, "report-status", &empty_pack());
    let text = node
        .post_service("alice", "demo", "git-receive-pack", &body)
        .text();
    assert!(text.contains("ok refs/heads/signed"), "{text}");
}

#[test]
fn a_stale_or_foreign_nonce_is_refused() {
    let tmp = TempDir::new().expect("tmp");
    let data = tmp.path().join("data");
    let node = Node::start_with(&data, &["--push-cert-nonce-slop", "1"]);
    node.create_repo("alice", "demo");
    let work = tmp.path().join("w");
    let c = work_repo(&work);
    git_ok(
        &work,
        &["push", "-q", &node.repo_url("alice", "demo"), "main:base"],
    );
    let cmd = [format!("{ZERO} {c} refs/heads/main")];
    let url = node.repo_url("alice", "demo");
    let before = state_of(&node, "alice", "demo");

    // Stock git whose signing takes longer than the nonce lives: ssh-keygen
    // behind a wrapper that waits first.
    let slow = tmp.path().join("slow-ssh-keygen");
    std::fs::write(&slow, "#!/bin/sh\nsleep 3\nexec ssh-keygen \"$@\"\n").expect("wrapper");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let program = format!("gpg.ssh.program={}", path_str(&slow));
    let out = git_fail(&work, &["-c", &program, "push", &url, "main"]);
    let err = stderr_of(&out);
    assert!(err.contains("stale"), "{err}");
    assert_eq!(state_of(&node, "alice", "demo"), before, "nothing stored");

    let nonce = node.push_cert_nonce("alice", "demo").expect("nonce");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let cert = push_certificate(test_identity(), &url, &nonce, &cmd);
    let body = signed_receive_pack_body(&cert, "report-status", &empty_pack());
    let text = node
        .post_service("alice", "demo", "git-receive-pack", &body)
        .text();
    assert!(text.contains("stale"), "{text}");

    for forged in [
        "1700000000-0123456789abcdef0123456789abcdef01234567",
        "garbage",
    ] {
        let cert = push_certificate(test_identity(), &url, forged, &cmd);
        let body = signed_receive_pack_body(&cert, "report-status", &empty_pack());
        let text = node
            .post_service("alice", "demo", "git-receive-pack", &body)
            .text();
        assert!(text.contains("ng refs/heads/main"), "{forged}: {text}");
        assert!(text.contains("nonce"), "{forged}: {text}");
    }
    assert_eq!(
        node.server_refs("alice", "demo").get("refs/heads/main"),
        None
    );
    assert_eq!(state_of(&node, "alice", "demo"), before, "nothing stored");
}

#[test]
fn delegates_change_only_with_the_threshold_of_signatures() {
    let tmp = TempDir::new().expect("tmp");
    let node = Node::start();
    let alice = test_identity();
    let bob = bob();
    cli_ok(
        &node,
        &["repo", "create", "alice/team", "--key", &key_arg(alice)],
    );
    let work = tmp.path().join("w");
    work_repo(&work);
    let url = node.repo_url("alice", "team");
    let as_bob = format!("user.signingkey={}", key_arg(&bob));

    // Bob is not a delegate yet.
    let out = git_fail(&work, &["-c", &as_bob, "push", &url, "main"]);
    assert!(
        stderr_of(&out).contains("is not a delegate"),
        "{}",
        stderr_of(&out)
    );

    // Alice adds Bob and raises the threshold to 2.
    let bob_did = bob.key.did().to_string();
    cli_ok(
        &node,
        &[
            "repo",
            "delegates",
            "add",
            "alice/team",
            &bob_did,
            "--threshold",
            "2",
            "--key",
            &key_arg(alice),
        ],
    );
    let info = node.repo_info("alice", "team");
    assert_eq!(info["threshold"], 2, "{info}");
    assert_eq!(info["doc_version"], 2, "{info}");
    git_ok(&work, &["-c", &as_bob, "push", "-q", &url, "main"]);

    // Removing Bob now needs two signatures: Alice alone is refused...
    let out = cli(
        &node,
        &[
            "repo",
            "delegates",
            "remove",
            "alice/team",
            &bob_did,
            "--threshold",
            "1",
            "--key",
            &key_arg(alice),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1 of the current delegates signed; 2 needed"),
        "{err}"
    );
    assert_eq!(node.repo_info("alice", "team")["doc_version"], 2);
    // ...and Alice with Bob co-signing is accepted.
    cli_ok(
        &node,
        &[
            "repo",
            "delegates",
            "remove",
            "alice/team",
            &bob_did,
            "--threshold",
            "1",
            "--key",
            &key_arg(alice),
            "--cosign",
            &key_arg(&bob),
        ],
    );
    let info = node.repo_info("alice", "team");
    assert_eq!(info["doc_version"], 3, "{info}");
    assert_eq!(
        info["delegates"].as_array().map(Vec::len),
        Some(1),
        "{info}"
    );
    commit_file(&work, "b.txt", "b\n", "second");
    let out = git_fail(&work, &["-c", &as_bob, "push", &url, "main"]);
    assert!(
        stderr_of(&out).contains("is not a delegate"),
        "{}",
        stderr_of(&out)
    );
    git_ok(&work, &["push", "-q", &url, "main"]);

    // A document update signed by a non-delegate goes nowhere.
    let out = cli(
        &node,
        &[
            "repo",
            "delegates",
            "add",
            "alice/team",
            &bob_did,
            "--key",
            &key_arg(&mallory()),
        ],
    );
    assert!(!out.status.success());
    assert_eq!(node.repo_info("alice", "team")["doc_version"], 3);
}

#[test]
fn id_and_git_setup_make_plain_git_push_just_work() {
    let tmp = TempDir::new().expect("tmp");
    let node = Node::start();
    let key = tmp.path().join("keys/me");
    let key_s = path_str(&key);
    let did = cli_ok(&node, &["id", "new", "--key", &key_s]);
    let did = did.trim();
    assert!(did.starts_with("did:key:z6Mk"), "{did}");
    assert!(cli_ok(&node, &["id", "show", "--key", &key_s]).contains(did));
    // A second `id new` must not overwrite the key.
    assert!(!cli(&node, &["id", "new", "--key", &key_s]).status.success());
    cli_ok(&node, &["repo", "create", "me/proj", "--key", &key_s]);

    // A clone with no signing configuration at all (empty HOME)...
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let work = tmp.path().join("w");
    let git = |args: &[&str]| {
        let out = git_cmd(tmp.path())
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", &home)
            .arg("-C")
            .arg(&work)
            .args(args)
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    std::fs::create_dir_all(&work).expect("work");
    git(&["init", "-q", "-b", "main"]);
    std::fs::write(work.join("f"), "x\n").expect("write");
    git(&["add", "f"]);
    git(&["commit", "-q", "-m", "x"]);
    // ...is set up by git-setup, remote included, and then `git push` works.
    let url = node.repo_url("me", "proj");
    cli_ok(
        &node,
        &[
            "git-setup",
            "--repo",
            &path_str(&work),
            "--remote-url",
            &url,
            "--key",
            &key_s,
        ],
    );
    assert_eq!(git(&["config", "--get", "gpg.format"]), "ssh");
    assert_eq!(git(&["config", "--get", "push.gpgSign"]), "if-asked");
    assert!(git(&["config", "--get", "user.signingkey"]).ends_with("keys/me"));
    assert_eq!(git(&["remote", "get-url", "origin"]), url);
    git(&["push", "-q", "origin", "main"]);
    let head = git(&["rev-parse", "HEAD"]);
    assert_eq!(node.server_refs("me", "proj")["refs/heads/main"], head);
    let log = node.get("/api/v1/repos/me/proj/updates").json();
    assert_eq!(log[0]["signer"], did);
}

#[test]
fn creating_a_repository_needs_a_document_signed_by_its_owner() {
    let node = Node::start();
    let resp = node.post_json(
        "/api/v1/repos",
        &serde_json::json!({"owner": "alice", "name": "demo"}),
    );
    assert_eq!(resp.status, 400);
    assert!(
        resp.text()
            .contains("identity document signed by its owner"),
        "{}",
        resp.text()
    );

    // Signed by someone else than the owner it names.
    let alice = test_identity();
    let body = guts_identity::DocumentBody::genesis(alice.key.did(), "demo", "main", vec![]);
    let forged = body.sign(&[&mallory().key]);
    let b64 = base64::engine::general_purpose::STANDARD;
    let doc = b64.encode(prost::Message::encode_to_vec(&forged));
    let resp = node.post_json("/api/v1/repos", &serde_json::json!({ "document": doc }));
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(
        resp.text().contains("signed by its owner"),
        "{}",
        resp.text()
    );

    // Tampered after signing.
    let good = genesis_document(alice, "demo", &["alice"]);
    let mut bytes = b64.decode(&good).expect("b64");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let resp = node.post_json(
        "/api/v1/repos",
        &serde_json::json!({ "document": b64.encode(&bytes) }),
    );
    assert_eq!(resp.status, 400, "{}", resp.text());

    // The genuine document creates it; an alias already taken is refused.
    let resp = node.post_json("/api/v1/repos", &serde_json::json!({ "document": good }));
    assert_eq!(resp.status, 201, "{}", resp.text());
    let taken = genesis_document(&bob(), "demo", &["alice"]);
    let resp = node.post_json("/api/v1/repos", &serde_json::json!({ "document": taken }));
    assert_eq!(resp.status, 409, "{}", resp.text());
    assert!(
        node.get(&format!("/api/v1/repos/{}/demo", bob().owner_id()))
            .status
            == 404
    );
}
