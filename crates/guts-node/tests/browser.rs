//! The web view in a real browser: headless Chromium renders the node,
//! repository, file, commit and updates pages of the ripgrep fixture, and
//! the error pages; the DOM after scripts ran must show what the
//! repository holds, and a screenshot of each page is saved under
//! `target/browser-screenshots/` to be looked at.
//!
//! Prints `SKIP browser: ...` when Chromium or the fixture is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use tempfile::TempDir;

/// The Chromium binary, if installed.
fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = Command::new("which").arg(name).output().ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
}

struct Browser {
    bin: PathBuf,
    profile: TempDir,
    shots: PathBuf,
}

impl Browser {
    fn cmd(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", self.profile.path().display()));
        cmd
    }

    /// The DOM of `url` after its scripts ran.
    fn dom(&self, url: &str) -> String {
        let out = self
            .cmd()
            .arg("--dump-dom")
            .arg(url)
            .output()
            .expect("run chromium");
        assert!(
            out.status.success(),
            "chromium --dump-dom {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A 1280x1600 screenshot of `url` saved as `NAME.png`.
    fn screenshot(&self, name: &str, url: &str) -> PathBuf {
        let path = self.shots.join(format!("{name}.png"));
        let _ = std::fs::remove_file(&path);
        let out = self
            .cmd()
            .arg(format!("--screenshot={}", path.display()))
            .arg("--window-size=1280,1600")
            .arg(url)
            .output()
            .expect("run chromium");
        assert!(
            out.status.success() && path.exists(),
            "chromium --screenshot {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let png = std::fs::read(&path).expect("read screenshot");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{name}.png is not a picture of a page"
        );
        path
    }

    /// Render `url`: its DOM, and a screenshot named `name`.
    fn visit(&self, name: &str, url: &str) -> String {
        self.screenshot(name, url);
        self.dom(url)
    }
}

/// The text of a DOM without tags (for phrases split by markup).
fn text_of(dom: &str) -> String {
    let mut out = String::with_capacity(dom.len());
    let mut in_tag = false;
    for c in dom.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
        .replace("&quot;", "\"")
}

/// An added line of `commit`'s diff against its first parent made only of
/// characters that read the same in HTML.
fn plain_added_line(bare: &Path, commit: &str) -> Option<String> {
    let diff = git_ok(
        bare,
        &["show", "--format=", "--no-color", "--first-parent", commit],
    );
    diff.lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .map(|l| l[1..].trim().to_owned())
        .find(|l| {
            l.len() > 12
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || " _.,:;()=\"-".contains(c))
        })
}

#[test]
fn pages_render_in_chromium() {
    let Some(bin) = chromium() else {
        println!("SKIP browser: chromium is not installed (apt-get install chromium)");
        return;
    };
    let tmp = TempDir::new().expect("temp dir");
    let Some(src) = ripgrep_bare(&tmp.path().join("src.git")) else {
        println!("SKIP browser: the ripgrep fixture is missing");
        return;
    };
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("..")
        .join("browser-screenshots");
    std::fs::create_dir_all(&shots).expect("create screenshot dir");
    let browser = Browser {
        bin,
        profile: TempDir::new().expect("profile dir"),
        shots: shots.clone(),
    };

    let node = Node::start();
    let owner = test_identity().owner_id();
    node.create_repo(&owner, "ripgrep");
    git_ok(
        &src,
        &[
            "push",
            "-q",
            &node.repo_url(&owner, "ripgrep"),
            "refs/heads/master:refs/heads/main",
            "refs/tags/*:refs/tags/*",
        ],
    );
    let tip = rev_parse(&src, "master");
    let base = format!("{}/{owner}/ripgrep", node.url());

    let dom = browser.visit("node", &format!("{}/", node.url()));
    assert!(text_of(&dom).contains("ripgrep"), "{dom}");

    let dom = browser.visit("repository", &base);
    let text = text_of(&dom);
    assert!(
        text.contains("ripgrep is a line-oriented search tool"),
        "README missing:\n{text}"
    );
    assert!(
        text.contains("Cargo.toml") && text.contains("crates/"),
        "root tree missing:\n{text}"
    );
    assert!(
        dom.contains(&format!("/commit/{tip}")),
        "recent commits missing"
    );

    let cargo_toml = git_ok(&src, &["show", "master:Cargo.toml"]);
    let dom = browser.visit("file", &format!("{base}/blob/main/Cargo.toml"));
    let text = text_of(&dom);
    let line = cargo_toml
        .lines()
        .find(|l| l.starts_with("name"))
        .expect("a name line");
    assert!(
        text.contains(line),
        "file content missing ({line}):\n{text}"
    );
    assert!(dom.contains("id=\"L1\""), "line numbers missing");

    let added = plain_added_line(&src, &tip).expect("tip commit adds a plain line");
    let dom = browser.visit("commit", &format!("{base}/commit/{tip}"));
    assert!(
        text_of(&dom).contains(&added),
        "diff line {added:?} missing"
    );
    assert!(dom.contains("class=\"add\""), "no added lines marked");

    let dom = browser.visit("updates", &format!("{base}/updates"));
    let text = text_of(&dom);
    assert!(
        text.contains(&test_identity().key.did().to_string()),
        "signer missing:\n{text}"
    );
    assert!(text.contains("✓ verified"), "{text}");

    for (name, path, status) in [
        // Chromium resolves `..` and `%2e%2e` itself (the request then
        // names no page: 404); an encoded slash keeps the traversal in the
        // request, which the node refuses (400).
        (
            "error-traversal",
            format!("{base}/blob/main/..%2F..%2Fetc%2Fpasswd"),
            "400",
        ),
        (
            "error-traversal-resolved",
            format!("{base}/blob/main/%2e%2e/%2e%2e/%2e%2e/etc/passwd"),
            "404",
        ),
        (
            "error-html-ref",
            format!("{base}/tree/%3Cimg%20src=x%20onerror=alert(1)%3E"),
            "404",
        ),
        (
            "error-missing",
            format!("{base}/blob/main/no-such-file.txt"),
            "404",
        ),
    ] {
        let dom = browser.visit(name, &path);
        let text = text_of(&dom);
        assert!(
            text.contains(status),
            "{name}: status {status} not shown:\n{dom}"
        );
        assert!(
            !dom.contains("<img src=\"x\""),
            "{name}: injected markup:\n{dom}"
        );
    }
    println!("screenshots in {}", shots.display());
}
