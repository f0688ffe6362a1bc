//! `GET /metrics`: two replicating nodes scraped before and after a signed
//! push, a clone and the push's replication; the text must parse as
//! OpenMetrics and the counters move by what happened. Also: who may read
//! the metrics, and that random paths add one `unmatched` series at most.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::p2p::*;
use common::*;
use tempfile::TempDir;

/// One scrape: each series (`name{labels}` with labels sorted) and its value.
#[derive(Debug, Default)]
struct Scrape {
    series: BTreeMap<String, f64>,
}

impl Scrape {
    /// The value of the series `name` with exactly `labels` (0 if absent).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series
            .get(&series_key(name, labels))
            .copied()
            .unwrap_or(0.0)
    }

    /// The sum of every series of sample name `name`.
    fn sum(&self, name: &str) -> f64 {
        self.all(name).map(|(_, v)| v).sum()
    }

    /// Every series of sample name `name`.
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a String, f64)> + 'a {
        self.series
            .iter()
            .filter(move |(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
            .map(|(k, v)| (k, *v))
    }
}

fn series_key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<_> = labels.to_vec();
    labels.sort();
    if labels.is_empty() {
        return name.to_owned();
    }
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// Parse OpenMetrics text strictly: `# TYPE`/`# HELP`/`# UNIT` lines, each
/// family declared once; every sample of a declared family (name plus an
/// allowed suffix), labels `key="value"` with escapes, a float value; one
/// series once; `# EOF` last.
fn parse(text: &str) -> Scrape {
    assert!(text.ends_with("# EOF\n"), "no final # EOF:\n{text}");
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut scrape = Scrape::default();
    let body = &text[..text.len() - "# EOF\n".len()];
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            assert!(valid_name(name), "bad family name in {line:?}");
            match kind {
                "TYPE" => {
                    let t = parts.next().unwrap_or("");
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "info",
                            "unknown",
                            "summary",
                            "stateset"
                        ]
                        .contains(&t),
                        "bad type in {line:?}"
                    );
                    assert!(
                        types.insert(name.to_owned(), t.to_owned()).is_none(),
                        "family {name} declared twice"
                    );
                }
                "HELP" | "UNIT" => {}
                _ => panic!("unexpected comment {line:?}"),
            }
            continue;
        }
        let (name, labels, value) = parse_sample(line);
        let family = types
            .iter()
            .find(|(f, t)| {
                let suffixes: &[&str] = match t.as_str() {
                    "counter" => &["_total", "_created"],
                    "histogram" => &["_bucket", "_count", "_sum", "_created"],
                    "info" => &["_info"],
                    _ => &[""],
                };
                suffixes.iter().any(|s| name == format!("{f}{s}"))
            })
            .map(|(f, _)| f.clone());
        assert!(family.is_some(), "sample {name} of no declared family");
        let key = series_key(
            &name,
            &labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
        );
        assert!(
            scrape.series.insert(key.clone(), value).is_none(),
            "series {key} twice"
        );
    }
    scrape
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{k="v",...} value`.
fn parse_sample(line: &str) -> (String, Vec<(String, String)>, f64) {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value in {line:?}"));
    let name = &line[..name_end];
    assert!(valid_name(name), "bad sample name in {line:?}");
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest
                .find("=\"")
                .unwrap_or_else(|| panic!("bad label in {line:?}"));
            let key = &rest[..eq];
            assert!(valid_name(key), "bad label name in {line:?}");
            let mut value = String::new();
            let mut chars = rest[eq + 2..].char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break eq + 2 + i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('"' | '\\'))) => value.push(c),
                        other => panic!("bad escape {other:?} in {line:?}"),
                    },
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value in {line:?}"),
                }
            };
            labels.push((key.to_owned(), value));
            rest = &rest[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let value = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no space before the value in {line:?}"));
    let value = value.split(' ').next().unwrap_or("");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse::<f64>()
            .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}")),
    };
    (name.to_owned(), labels, value)
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Scrape `addr` (with `auth`, if any), asserting 200 and the content type.
fn scrape_at(addr: &str, auth: Option<&str>) -> Scrape {
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
    let resp = http_request(addr, "GET", "/metrics", &headers, &[]);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some(CONTENT_TYPE));
    parse(&resp.text())
}

fn scrape(node: &Node) -> Scrape {
    scrape_at(node.addr(), None)
}

const UPLOAD: &str = "/{owner}/{name}/git-upload-pack";
const RECEIVE: &str = "/{owner}/{name}/git-receive-pack";
const INFO_REFS: &str = "/{owner}/{name}/info/refs";

fn requests(s: &Scrape, route: &str, status: &str) -> f64 {
    s.value(
        "guts_http_requests_total",
        &[("route", route), ("status", status)],
    )
}

/// Bytes of the pack files in a bare repository.
fn pack_bytes(git_dir: &Path) -> u64 {
    std::fs::read_dir(git_dir.join("objects/pack"))
        .expect("pack dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
        .map(|e| e.metadata().expect("metadata").len())
        .sum()
}

#[test]
fn counters_move_by_what_two_peering_nodes_did() {
    let tmp = TempDir::new().expect("tmp");
    let a = peer_node(&tmp.path().join("a"), None, false);
    let b = peer_node(&tmp.path().join("b"), Some(&p2p_addr(&a)), false);
    wait_connected(&b, 1);
    a.create_repo("alice", "demo");
    let work = tmp.path().join("work");
    init_work_repo(&work);
    git_ok(&work, &["push", "-q", &a.repo_url("alice", "demo"), "main"]);
    let owner = test_identity().owner_id();
    seed(&b, &owner, "demo");
    eventually(30, "B has A's refs", || same_refs(&a, &b, &owner, "demo"));

    // A clone from before, fetched from after the push.
    let early = tmp.path().join("early.git");
    clone_refs(&a, "alice", "demo", &early);
    let (a0, b0) = (scrape(&a), scrape(&b));
    let lag = "guts_p2p_replication_lag_seconds_count";
    // A signed push to A, replicated to B; a clone from A.
    let head = commit_file(&work, "README.md", "metrics\n", "second");
    git_ok(&work, &["push", "-q", &a.repo_url("alice", "demo"), "main"]);
    eventually(30, "B has the pushed commit", || {
        b.server_refs(&owner, "demo").get("refs/heads/main") == Some(&head)
    });
    // The lag is recorded just after the refs move: wait for it, then
    // check it moved by exactly one.
    eventually(30, "B records the replication lag", || {
        scrape(&b).value(lag, &[]) > b0.value(lag, &[])
    });
    let clone = tmp.path().join("clone.git");
    clone_refs(&a, "alice", "demo", &clone);
    git_ok(
        &early,
        &["fetch", "-q", "origin", "+refs/heads/*:refs/heads/*"],
    );
    assert_eq!(rev_parse(&early, "refs/heads/main"), head);
    let (a1, b1) = (scrape(&a), scrape(&b));

    let delta = |name: &str| a1.value(name, &[]) - a0.value(name, &[]);
    assert_eq!(delta("guts_git_pushes_total"), 1.0);
    assert_eq!(delta("guts_git_clones_total"), 1.0);
    assert_eq!(delta("guts_git_fetches_total"), 1.0);
    assert!(
        delta("guts_git_received_objects_total") >= 3.0,
        "commit, tree, blob"
    );
    assert!(delta("guts_git_received_bytes_total") > 0.0);
    let pack = pack_bytes(&clone) as f64;
    assert!(
        delta("guts_git_sent_bytes_total") >= pack,
        "sent {} bytes, the clone's pack has {pack}",
        delta("guts_git_sent_bytes_total")
    );
    assert!(delta("guts_git_sent_objects_total") >= 6.0, "two commits");
    for route in [UPLOAD, RECEIVE, INFO_REFS] {
        assert!(
            requests(&a1, route, "200") > requests(&a0, route, "200"),
            "no 200 counted for {route}"
        );
        assert!(
            a1.value(
                "guts_http_request_duration_seconds_count",
                &[("route", route)]
            ) >= 1.0,
            "no latency observed for {route}"
        );
    }
    assert_eq!(b1.value(lag, &[]) - b0.value(lag, &[]), 1.0);
    for (s, who) in [(&a1, "A"), (&b1, "B")] {
        assert!(
            s.sum("libp2p_swarm_connections_established_total") >= 1.0,
            "{who}: no libp2p connection metric"
        );
        assert!(
            s.sum("libp2p_bandwidth_bytes_total") > 0.0,
            "{who}: no bandwidth"
        );
        assert!(s.value("guts_p2p_peers_connected", &[]) >= 1.0, "{who}");
        assert_eq!(s.value("guts_repositories", &[]), 1.0, "{who}");
        assert!(s.value("guts_packs", &[]) >= 1.0, "{who}");
        assert!(s.value("guts_pack_bytes", &[]) > 0.0, "{who}");
        assert!(
            s.value("guts_process_resident_memory_bytes", &[]) > 0.0,
            "{who}"
        );
    }
    assert!(
        b1.value("guts_p2p_gossip_messages_total", &[("direction", "in")])
            > b0.value("guts_p2p_gossip_messages_total", &[("direction", "in")]),
        "B received the announcement"
    );
    assert!(
        a1.value("guts_p2p_gossip_messages_total", &[("direction", "out")])
            > a0.value("guts_p2p_gossip_messages_total", &[("direction", "out")]),
        "A published the announcement"
    );
    assert_eq!(a1.sum("guts_p2p_peer_strikes_total"), 0.0);
    assert_eq!(b1.sum("guts_p2p_gossip_rejected_total"), 0.0);
}

#[test]
fn random_paths_add_at_most_one_unmatched_series() {
    let tmp = TempDir::new().expect("tmp");
    let node = Node::start_with(tmp.path(), &["--rate-limit", "0"]);
    // The first scrape counts itself under `/metrics`.
    scrape(&node);
    let before = scrape(&node);
    let mut rng = Rng(0x5eed);
    for _ in 0..1000 {
        let path = format!(
            "/no-{:x}/{:x}/{:x}/{:x}",
            rng.next(),
            rng.next(),
            rng.next(),
            rng.next()
        );
        let resp = node.get(&path);
        assert_eq!(resp.status, 404, "{path}");
    }
    let after = scrape(&node);
    let names = |s: &Scrape| -> BTreeSet<String> {
        s.series
            .keys()
            .filter(|k| k.starts_with("guts_http_"))
            .cloned()
            .collect()
    };
    let new: Vec<String> = names(&after).difference(&names(&before)).cloned().collect();
    // The counter's series for (unmatched, 404) and the latency histogram of
    // `unmatched` (its buckets, count and sum); nothing per path.
    assert!(
        new.iter().all(|k| k.contains("route=\"unmatched\"")),
        "{new:?}"
    );
    let counters: Vec<_> = after
        .all("guts_http_requests_total")
        .filter(|(k, _)| k.contains("unmatched"))
        .collect();
    assert_eq!(counters.len(), 1, "{counters:?}");
    assert_eq!(requests(&after, "unmatched", "404"), 1000.0);
    assert!(!after.series.keys().any(|k| k.contains("/no-")));
}

/// The first non-loopback IPv4 address of this machine (`hostname -I`).
fn local_address() -> Option<String> {
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|a| a.parse::<std::net::Ipv4Addr>().ok())
        .find(|a| !a.is_loopback())
        .map(|a| a.to_string())
}

/// A node whose HTTP listens on every interface (the test helpers give
/// `--http-listen 127.0.0.1:0`; a shell wrapper swaps the address).
fn node_on_all_interfaces(dir: &Path, extra: &[&str]) -> Node {
    let swap = r#"prog=$1; shift; for a in "$@"; do [ "$a" = 127.0.0.1:0 ] && a=0.0.0.0:0; set -- "$@" "$a"; shift; done; exec "$prog" "$@""#;
    Node::start_under(dir, &["sh", "-c", swap, "sh"], extra)
}

#[test]
fn other_addresses_need_the_operator_token_unless_the_metrics_are_public() {
    let Some(ip) = local_address() else {
        eprintln!("SKIPPED: this machine has no non-loopback address to connect from");
        return;
    };
    let tmp = TempDir::new().expect("tmp");
    let node = node_on_all_interfaces(&tmp.path().join("private"), &["--create-policy", "open"]);
    let port = node.addr().rsplit(':').next().expect("port").to_owned();
    let outside = format!("{ip}:{port}");
    let refused = http_request(&outside, "GET", "/metrics", &[], &[]);
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert!(!refused.text().contains("guts_"), "{}", refused.text());
    let wrong = http_request(
        &outside,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer nope")],
        &[],
    );
    assert_eq!(wrong.status, 401);
    let auth = format!("Bearer {}", node.operator_token());
    let s = scrape_at(&outside, Some(&auth));
    assert_eq!(s.value("guts_repositories", &[]), 0.0);
    // Loopback needs no token.
    scrape_at(&format!("127.0.0.1:{port}"), None);
    // The refusals were counted under /metrics.
    assert!(requests(&s, "/metrics", "401") >= 2.0, "{:?}", s.series);

    let public = node_on_all_interfaces(
        &tmp.path().join("public"),
        &["--create-policy", "open", "--metrics-public"],
    );
    let port = public.addr().rsplit(':').next().expect("port").to_owned();
    scrape_at(&format!("{ip}:{port}"), None);
}

#[test]
fn the_config_file_can_make_the_metrics_public() {
    let Some(ip) = local_address() else {
        eprintln!("SKIPPED: this machine has no non-loopback address to connect from");
        return;
    };
    let tmp = TempDir::new().expect("tmp");
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, "[metrics]\npublic = true\n").expect("config");
    let node = node_on_all_interfaces(
        &tmp.path().join("data"),
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--create-policy",
            "open",
        ],
    );
    let port = node.addr().rsplit(':').next().expect("port").to_owned();
    scrape_at(&format!("{ip}:{port}"), None);
}
