//! `git-remote-guts`: git's remote helper for `guts://` and `guts+tls://`
//! URLs (ADR 0023). It implements the `connect` capability: git's
//! upload-pack and receive-pack streams go over one WebSocket to the node
//! (`GET /OWNER/NAME/git-ws`), and a fetch whose connection drops in the
//! middle of its pack is resumed on a new connection, only the missing pack
//! bytes being sent again.
#![deny(clippy::unwrap_used)]

mod relay;
mod session;
mod url;

use std::io::{BufRead, Write};

const USAGE: &str = "\
usage: git-remote-guts <remote> [<url>]

git's remote helper for Guts nodes; git runs it for URLs such as
  guts://HOST:PORT/OWNER/NAME       (WebSocket, default port 8080)
  guts+tls://HOST[:PORT]/OWNER/NAME (WebSocket over TLS, default port 443)
e.g. `git clone guts://127.0.0.1:8080/alice/demo`. Put it on PATH.

A clone or fetch whose connection drops while the pack arrives is resumed
(up to 5 times): the node sends only the bytes git does not have yet.
Pushes: sign them (`guts-node git-setup`), or set GUTS_TOKEN to a push token.
guts+tls:// needs the helper also under the name git-remote-guts+tls
(`ln -s git-remote-guts git-remote-guts+tls` in its directory); it trusts
the webpki root certificates and those of the PEM file SSL_CERT_FILE names.
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        std::process::exit(if args.is_empty() { 2 } else { 0 });
    }
    if args.iter().any(|a| a == "--version") {
        println!("git-remote-guts {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let url = args.get(1).unwrap_or(&args[0]);
    let remote = match url::Remote::parse(url) {
        Ok(r) => r,
        Err(e) => fail(&e),
    };
    if let Err(e) = run(remote) {
        fail(&e);
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("git-remote-guts: {msg}");
    std::process::exit(1);
}

/// The helper's command loop: `capabilities`, then `connect SERVICE`.
fn run(remote: url::Remote) -> Result<(), String> {
    let mut input = std::io::BufReader::new(std::io::stdin());
    let mut stdout = std::io::stdout();
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Ok(());
        }
        let command = line.trim_end_matches('\n');
        if command == "capabilities" {
            stdout
                .write_all(b"connect\n\n")
                .and_then(|()| stdout.flush())
                .map_err(|e| e.to_string())?;
        } else if let Some(service) = command.strip_prefix("connect ") {
            if service != "git-upload-pack" && service != "git-receive-pack" {
                return Err(format!("unsupported service {service:?}"));
            }
            return connect(remote, service, input);
        } else if command.is_empty() {
            return Ok(());
        } else {
            return Err(format!("unsupported command {command:?}"));
        }
    }
}

fn connect(
    remote: url::Remote,
    service: &str,
    input: std::io::BufReader<std::io::Stdin>,
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let ws = session::connect(&remote, service, None).await?;
        // The empty line: connected, git's stream starts.
        let mut stdout = std::io::stdout();
        stdout
            .write_all(b"\n")
            .and_then(|()| stdout.flush())
            .map_err(|e| e.to_string())?;
        let from_git = session::stdin_pump(input);
        session::Session::new(remote, service, ws)
            .run(from_git)
            .await
    })
}
