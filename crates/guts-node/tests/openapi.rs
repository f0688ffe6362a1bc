//! `GET /api/v1/openapi.json` from a live node: a well-formed OpenAPI 3
//! document whose every operation the node answers (no route-missing 404,
//! no 405), that documents every REST route the node has, and that a real
//! validator (openapi-spec-validator, installed by
//! `tests/interop/install.sh`) accepts.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Every REST route the node registers (router.rs, rest/, rest_p2p.rs,
/// maintenance.rs, events.rs, openapi.rs): each must be documented.
const KNOWN_ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/health"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/events"),
    ("get", "/api/v1/node"),
    ("get", "/api/v1/repos"),
    ("post", "/api/v1/repos"),
    ("get", "/api/v1/repos/{owner}/{name}"),
    ("patch", "/api/v1/repos/{owner}/{name}"),
    ("delete", "/api/v1/repos/{owner}/{name}"),
    ("get", "/api/v1/repos/{owner}/{name}/identity"),
    ("put", "/api/v1/repos/{owner}/{name}/identity"),
    ("get", "/api/v1/repos/{owner}/{name}/updates"),
    ("get", "/api/v1/repos/{owner}/{name}/nonce"),
    ("post", "/api/v1/repos/{owner}/{name}/seed"),
    ("delete", "/api/v1/repos/{owner}/{name}/seed"),
    ("post", "/api/v1/repos/{owner}/{name}/maintain"),
];

/// Status and, for a 404 or 405, the body of `method path`: the response
/// head only otherwise (the event stream never ends).
fn probe(addr: &str, method: &str, path: &str) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    write!(
        stream,
        "{} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        method.to_ascii_uppercase()
    )
    .expect("send");
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad status line {status_line:?}"));
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header");
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().expect("content-length");
            }
        }
    }
    let mut body = vec![0u8; length];
    if status == 404 || status == 405 {
        reader.read_exact(&mut body).expect("body");
    }
    (status, body)
}

/// Whether a 404 body is the node's own (`{"error": ...}`, a missing
/// resource) rather than a missing route's.
/// A 404 for a missing resource: the node's JSON error, not the one of
/// the fallback for addresses no route matches (`no API route ...`).
fn is_node_404(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| {
        v["error"]
            .as_str()
            .is_some_and(|e| !e.starts_with("no API route"))
    })
}

/// Every `$ref` in `v`.
fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", serde_json::Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// A Python with openapi-spec-validator: the interop venv's, else the system's.
fn validator_python() -> Option<PathBuf> {
    let dir = std::env::var_os("GUTS_INTEROP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/interop"));
    [dir.join("venv/bin/python"), PathBuf::from("python3")]
        .into_iter()
        .find(|py| {
            Command::new(py)
                .args(["-c", "import openapi_spec_validator"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

#[test]
fn the_description_is_valid_and_matches_the_routes() {
    let node = Node::start();
    node.create_repo("alice", "demo");
    let resp = node.get("/api/v1/openapi.json");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let doc = resp.json();

    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc["info"]["title"].as_str().is_some_and(|t| !t.is_empty()));
    for scheme in ["operator", "gutsAction"] {
        assert!(
            doc["components"]["securitySchemes"][scheme].is_object(),
            "{scheme}"
        );
    }

    // Every `$ref` resolves inside the document.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external $ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "unresolved $ref {r}");
    }

    // Every documented operation has a response and is answered by the
    // node: never 405, and a 404 only as the node's own JSON error.
    let paths = doc["paths"].as_object().expect("paths");
    let mut operations = Vec::new();
    for (path, item) in paths {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} has no response"
            );
            operations.push((method, path.clone()));
            let concrete = path
                .replace("{owner}", "nobody")
                .replace("{name}", "nothing");
            let (status, body) = probe(node.addr(), method, &concrete);
            assert_ne!(status, 405, "{method} {concrete}: no such method");
            if status == 404 {
                assert!(
                    is_node_404(&body),
                    "{method} {concrete}: 404 without the node's JSON error (a missing route): {}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
    }
    // The probe tells a missing route from a missing resource.
    let (status, body) = probe(node.addr(), "get", "/api/v1/no-such-route");
    assert_eq!(status, 404);
    assert!(!is_node_404(&body));
    let (status, _) = probe(node.addr(), "put", "/api/v1/repos");
    assert_eq!(status, 405);

    // Every route the node has is documented.
    for (method, path) in KNOWN_ROUTES {
        assert!(
            operations.iter().any(|(m, p)| m == method && p == path),
            "{method} {path} is not documented"
        );
        assert!(
            doc["paths"][path][method]["responses"].is_object(),
            "{method} {path}"
        );
    }
    assert_eq!(operations.len(), KNOWN_ROUTES.len(), "{operations:?}");

    // Operations that need a credential say which.
    for (method, path) in [
        ("delete", "/api/v1/repos/{owner}/{name}"),
        ("post", "/api/v1/repos/{owner}/{name}/seed"),
        ("post", "/api/v1/repos/{owner}/{name}/maintain"),
    ] {
        assert!(
            doc["paths"][path][method]["security"].is_array(),
            "{method} {path} names no security scheme"
        );
    }

    // A real validator agrees.
    match validator_python() {
        None => println!(
            "SKIP openapi-spec-validator: not installed (run crates/guts-node/tests/interop/install.sh)"
        ),
        Some(python) => {
            let file = tempfile::NamedTempFile::new().expect("tmp");
            std::fs::write(file.path(), &resp.body).expect("write");
            let out = Command::new(&python)
                .args([
                    "-c",
                    "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))\nprint('valid')",
                ])
                .arg(file.path())
                .output()
                .expect("run the validator");
            assert!(
                out.status.success(),
                "openapi-spec-validator ({}) refuses the description: {}",
                python.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
