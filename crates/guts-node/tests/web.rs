//! The web view (ADR 0018) over HTTP: pages render what the repository
//! holds, everything from the repository or the URL is escaped, invalid
//! and missing paths get HTML error pages with the right status, and git's
//! smart HTTP under the same prefix keeps working.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use tempfile::TempDir;

const NAME: &str = "web";
const SCRIPT_MSG: &str = "Change <script>alert('msg')</script> value";
const HTML_BRANCH: &str = "<b>x";

/// A pushed repository: README with raw HTML, a source file, a binary
/// file, a commit whose message holds a script tag, a branch named `<b>x`.
struct Fixture {
    node: Node,
    owner: String,
    first: String,
    tip: String,
    _dir: TempDir,
}

fn fixture() -> Fixture {
    let node = Node::start();
    let owner = test_identity().owner_id();
    node.create_repo(&owner, NAME);
    let dir = TempDir::new().expect("temp dir");
    let work = dir.path().join("work");
    init_work_repo(&work);
    commit_file(
        &work,
        "README.md",
        "# Web test\n\nHello from the README.\n\n<script>alert('readme')</script>\n\n[bad](javascript:alert(1))\n",
        "readme",
    );
    let lib = "fn main() {\n    let value = 42;\n    println!(\"{value}\");\n}\n";
    commit_file(&work, "src/main.rs", lib, "add main");
    fs::write(work.join("logo.bin"), [0u8, 1, 2, 3, 0, 255]).expect("write binary");
    git_ok(&work, &["add", "logo.bin"]);
    git_ok(&work, &["commit", "-q", "-m", "binary"]);
    let first = rev_parse(&work, "HEAD");
    let tip = commit_file(&work, "src/main.rs", &lib.replace("42", "43"), SCRIPT_MSG);
    git_ok(&work, &["branch", HTML_BRANCH]);
    git_ok(
        &work,
        &["remote", "add", "origin", &node.repo_url(&owner, NAME)],
    );
    git_ok(&work, &["push", "-q", "origin", "main", HTML_BRANCH]);
    Fixture {
        node,
        owner,
        first,
        tip,
        _dir: dir,
    }
}

impl Fixture {
    fn page(&self, path: &str) -> String {
        let resp = self.node.get(path);
        assert_eq!(resp.status, 200, "GET {path}: {}", resp.text());
        assert_html(&resp, path);
        resp.text()
    }

    fn base(&self) -> String {
        format!("/{}/{NAME}", self.owner)
    }

    /// A clean HTML error page with `status`; its body.
    fn error(&self, path: &str, status: u16) -> String {
        let resp = self.node.get(path);
        assert_eq!(resp.status, status, "GET {path}: {}", resp.text());
        assert_html(&resp, path);
        let body = resp.text();
        assert!(
            body.contains(&format!("<h1>{status} ")),
            "GET {path}: {body}"
        );
        body
    }
}

fn assert_html(resp: &HttpResponse, path: &str) {
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8"),
        "GET {path}"
    );
    let csp = resp.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'none'"), "GET {path}: CSP {csp}");
    assert!(csp.contains("script-src 'nonce-"), "GET {path}: CSP {csp}");
    assert_eq!(resp.header("x-frame-options"), Some("DENY"), "GET {path}");
    assert_eq!(
        resp.header("x-content-type-options"),
        Some("nosniff"),
        "GET {path}"
    );
}

/// No `<script` in `body` but the page's own nonce-bearing one.
fn assert_no_injected_script(body: &str, what: &str) {
    let scripts = body.matches("<script").count();
    let own = body.matches("<script nonce=").count();
    assert_eq!(scripts, own, "{what}: an unescaped script tag:\n{body}");
    assert!(
        !body.contains("<script>alert"),
        "{what}: unescaped script:\n{body}"
    );
}

#[test]
fn pages_show_the_repository_escaped() {
    let f = fixture();
    let base = f.base();

    let node = f.page("/");
    assert!(node.contains(&format!("href=\"{base}\"")), "{node}");
    assert!(node.contains(env!("CARGO_PKG_VERSION")), "{node}");

    let repo = f.page(&base);
    assert!(repo.contains("Hello from the README."), "{repo}");
    assert!(
        repo.contains("&lt;script&gt;alert("),
        "README HTML not shown as text:\n{repo}"
    );
    assert!(!repo.contains("javascript:"), "{repo}");
    assert!(
        repo.contains(&format!("value=\"http://{}{base}.git\"", f.node.addr())),
        "clone URL:\n{repo}"
    );
    assert!(repo.contains("src/"), "root tree: {repo}");
    assert!(
        repo.contains("&lt;b&gt;x"),
        "HTML branch name not escaped:\n{repo}"
    );
    assert!(!repo.contains("<b>x"), "HTML branch name raw:\n{repo}");
    assert!(
        repo.contains("Change &lt;script&gt;"),
        "commit message not escaped:\n{repo}"
    );
    assert_no_injected_script(&repo, "repository page");

    // `.git` redirects to the page.
    let resp = f.node.get(&format!("{base}.git"));
    assert_eq!(resp.status, 308, "{}", resp.text());
    assert_eq!(resp.header("location"), Some(base.as_str()));

    let blob = f.page(&format!("{base}/blob/main/src/main.rs"));
    assert!(blob.contains("id=\"L2\""), "{blob}");
    assert!(blob.contains("<td>    let value = 43;</td>"), "{blob}");
    let old = f.page(&format!("{base}/blob/{}/src/main.rs", f.first));
    assert!(old.contains("<td>    let value = 42;</td>"), "{old}");
    let bin = f.page(&format!("{base}/blob/main/logo.bin"));
    assert!(bin.contains("Binary file"), "{bin}");

    let tree = f.page(&format!("{base}/tree/%3Cb%3Ex/src"));
    assert!(tree.contains("main.rs"), "{tree}");
    assert!(
        tree.contains("&lt;b&gt;x") && !tree.contains("<b>x"),
        "{tree}"
    );

    let commit = f.page(&format!("{base}/commit/{}", f.tip));
    assert!(
        commit.contains(">-    let value = 42;<"),
        "removed line:\n{commit}"
    );
    assert!(
        commit.contains(">+    let value = 43;<"),
        "added line:\n{commit}"
    );
    assert!(commit.contains("@@ -1,4 +1,4 @@"), "{commit}");
    assert!(commit.contains(&f.first), "parent:\n{commit}");
    assert!(commit.contains("Change &lt;script&gt;alert("), "{commit}");
    assert_no_injected_script(&commit, "commit page");

    let log = f.page(&format!("{base}/commits/main"));
    assert!(
        log.contains("add main") && log.contains("Change &lt;script&gt;"),
        "{log}"
    );
    assert_no_injected_script(&log, "log page");
    assert!(f.page(&format!("{base}/commits")).contains("add main"));

    let updates = f.page(&format!("{base}/updates"));
    let did = test_identity().key.did().to_string();
    assert!(updates.contains(&did), "signer missing:\n{updates}");
    assert!(updates.contains("✓ verified"), "{updates}");
    assert!(updates.contains("refs/heads/&lt;b&gt;x"), "{updates}");
    assert!(!updates.contains("✗"), "{updates}");
}

#[test]
fn raw_files_are_never_html() {
    let f = fixture();
    let base = f.base();
    let text = f.node.get(&format!("{base}/raw/main/README.md"));
    assert_eq!(text.status, 200);
    assert_eq!(
        text.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(text.header("x-content-type-options"), Some("nosniff"));
    assert!(
        text.text().contains("<script>alert('readme')"),
        "raw is the bytes"
    );
    let bin = f.node.get(&format!("{base}/raw/main/logo.bin"));
    assert_eq!(bin.status, 200);
    assert_eq!(bin.header("content-type"), Some("application/octet-stream"));
    assert_eq!(
        bin.header("content-disposition"),
        Some("attachment; filename=\"logo.bin\"")
    );
    assert_eq!(bin.body, [0u8, 1, 2, 3, 0, 255]);
}

#[test]
fn bad_and_missing_paths_get_html_errors() {
    let f = fixture();
    let base = f.base();
    for path in [
        format!("{base}/blob/main/../../etc/passwd"),
        format!("{base}/blob/main/%2e%2e/%2e%2e/etc/passwd"),
        format!("{base}/blob/main/src/%2E%2E/README.md"),
        format!("{base}/raw/main/../../etc/passwd"),
        format!("{base}/blob/main/..%2F..%2Fetc%2Fpasswd"),
        format!("{base}/tree/main/src/%2e%2e"),
        format!("{base}/blob/main/src//main.rs"),
        format!("{base}/commit/not-an-id"),
        format!("{base}/commits/main?page=0"),
    ] {
        f.error(&path, 400);
    }
    let body = f.error(
        &format!("{base}/tree/%3Cscript%3Ealert('ref')%3C/script%3E"),
        404,
    );
    assert!(body.contains("&lt;script&gt;"), "{body}");
    assert_no_injected_script(&body, "unknown ref page");
    f.error(&format!("{base}/blob/main/missing.txt"), 404);
    f.error(&format!("{base}/raw/main/missing.txt"), 404);
    f.error(&format!("{base}/blob/main/src"), 404);
    f.error(&format!("{base}/commit/{}", "0".repeat(40)), 404);
    f.error(&format!("/{}/nope", f.owner), 404);
    f.error("/.bad/x", 400);
    // An empty repository: a page telling how to push; no log yet.
    f.node.create_repo(&f.owner, "empty");
    let empty = f.page(&format!("/{}/empty", f.owner));
    assert!(empty.contains("This repository is empty"), "{empty}");
    f.error(&format!("/{}/empty/commits", f.owner), 404);
    f.error(&format!("/{}/empty/tree/main", f.owner), 404);
    // What browsers send for `/OWNER/NAME/blob/main/../../etc/passwd`.
    f.error(&format!("{base}/etc/passwd"), 404);
    f.error("/no/such/page/at/all", 404);
    let api = f.node.get("/api/v1/nothing-here");
    assert_eq!(api.status, 404);
    assert!(api.json()["error"].is_string(), "{}", api.text());
}

#[test]
fn git_keeps_working_under_the_page_prefix() {
    let f = fixture();
    let base = f.base();
    let resp = f
        .node
        .get(&format!("{base}/info/refs?service=git-upload-pack"));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.header("content-type"),
        Some("application/x-git-upload-pack-advertisement")
    );
    assert!(resp.text().contains(&f.tip));
    let dir = TempDir::new().expect("temp dir");
    let dest = dir.path().join("clone");
    let url = format!("{}{base}", f.node.url());
    git_ok(
        dir.path(),
        &["clone", "-q", &url, dest.to_str().expect("utf-8")],
    );
    assert_eq!(rev_parse(&dest, "HEAD"), f.tip);
    let readme = fs::read_to_string(Path::new(&dest).join("README.md")).expect("README");
    assert!(readme.contains("Hello from the README."));
}
