//! `guts-node`: a Guts peer node serving git smart HTTP.
//!
//! This binary wires `guts-git`, `guts-identity` and `guts-p2p` together:
//! a domain layer over storage, identities and signed logs (`repos`), an
//! axum HTTP server around it, replication, and a CLI (`run`, `repo ...`).
//! It holds no git protocol logic of its own.
#![deny(clippy::unwrap_used)]

mod archive;
mod auth;
mod body;
mod cli_progress;
mod client;
mod client_p2p;
mod clients;
mod config;
mod error;
mod events;
mod http;
mod identity;
mod lfs;
mod limits;
mod log;
mod maintenance;
mod memory;
mod metrics;
mod openapi;
mod p2p;
mod p2p_config;
mod policy;
mod progress;
mod push;
mod replica;
mod replica_lfs;
mod repos;
mod rest;
mod rest_p2p;
mod rules;
mod server;
mod serving;
mod token_cli;
mod tokens;
mod web;
mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use guts_git::receive_pack::ReceiveOptions;
use guts_git::storage::Storage;

use crate::config::{default_data_dir, Config, FileConfig, DEFAULT_HTTP_LISTEN};
use crate::error::NodeError;

/// A Guts node: a git server that stock `git` clones from and pushes to over HTTP.
#[derive(Parser, Debug)]
#[command(name = "guts-node", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the node and serve git smart HTTP and the REST API until stopped.
    Run(Box<RunArgs>),
    /// Manage repositories on a running node (over its REST API).
    Repo {
        #[command(subcommand)]
        action: RepoAction,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Manage your identity: an Ed25519 key (OpenSSH format) whose DID owns repositories and signs pushes.
    Id {
        #[command(subcommand)]
        action: IdAction,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the node's peer id, listen addresses and connected peers.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Follow a repository from peers: fetch its identity, objects and refs, and keep it up to date. Returns once the log and objects are here, with a progress bar on a terminal. Needs the operator token (--data-dir of the node).
    Seed {
        /// Canonical name OWNER/NAME (OWNER is the owner's z6Mk... id).
        repo: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop following a repository (its data stays on this node).
    Unseed {
        /// Repository, OWNER/NAME.
        repo: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Push tokens, for clients that cannot sign pushes (libgit2, dulwich, isomorphic-git, JGit, or git without a key): a delegate grants a new key the right to push some refs until a time.
    Token {
        #[command(subcommand)]
        action: TokenAction,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A git credential helper that gives git the tokens saved with `token save` (git runs it as `guts-node credential get|store|erase`).
    Credential {
        /// get, store or erase (gitcredentials(7)); attributes are read from standard input.
        operation: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Configure git to sign pushes with your identity (gpg.format=ssh, user.signingkey, push.gpgSign=if-asked).
    GitSetup {
        /// Configure this repository (its local config) instead of your global git config.
        #[arg(long)]
        repo: Option<PathBuf>,
        /// Also point a remote of --repo at this URL.
        #[arg(long, requires = "repo")]
        remote_url: Option<String>,
        /// Name of the remote --remote-url sets.
        #[arg(long, default_value = "origin")]
        remote_name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Options shared by the commands that talk to a node or use your key.
#[derive(clap::Args, Debug, Clone)]
struct ClientArgs {
    /// Base URL of the node [default: the address in DATA_DIR/http.addr, else http://127.0.0.1:8080].
    #[arg(long, global = true, env = "GUTS_NODE")]
    node: Option<String>,
    /// Data dir used to find the node's address and your default key [default: $GUTS_HOME, else ~/.local/share/guts].
    #[arg(long, global = true, env = "GUTS_HOME")]
    data_dir: Option<PathBuf>,
    /// Your identity key (OpenSSH Ed25519 private key) [default: DATA_DIR/identity/id_ed25519].
    #[arg(long, global = true, env = "GUTS_KEY")]
    key: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum IdAction {
    /// Create a new identity key and print its DID.
    New,
    /// Print your DID, key file and public key.
    Show,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Where repositories and metadata are stored [default: $GUTS_HOME, else ~/.local/share/guts].
    #[arg(long, env = "GUTS_HOME")]
    data_dir: Option<PathBuf>,
    /// HTTP listen address; port 0 picks a free port. The bound address is logged and written to DATA_DIR/http.addr [default: 127.0.0.1:8080].
    #[arg(long, env = "GUTS_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// TOML config file with `http_listen`, `max_pack_bytes`, `push_cert_nonce_slop`, the limits below (same names with `_`), a `[rules]` table (create policy, quotas, public URLs, seeding), a `[p2p]` table (`enabled`, `listen`, `bootstrap`, `mdns`, `dht`, `sync_interval`) and a `[metrics]` table (`public`; see the operator guide) [default: DATA_DIR/config.toml if present]. Flags and environment variables win over the file.
    #[arg(long, env = "GUTS_CONFIG")]
    config: Option<PathBuf>,
    /// Largest pack a push may send, in bytes [default: 4 GiB].
    #[arg(long, env = "GUTS_MAX_PACK_BYTES")]
    max_pack_bytes: Option<u64>,
    /// How long a push-certificate nonce from the ref advertisement stays valid, in seconds [default: 600].
    #[arg(long, env = "GUTS_PUSH_CERT_NONCE_SLOP")]
    push_cert_nonce_slop: Option<u64>,
    /// Listen for peers on this libp2p address instead of the default (repeatable), e.g. /ip4/0.0.0.0/tcp/4101 or /ip4/0.0.0.0/udp/4101/quic-v1; an address that cannot be bound is an error. Also `p2p.listen` [default: TCP and QUIC on port 4101 on every IPv4 and IPv6 interface; if that port is taken, a free port, with a warning].
    #[arg(long = "p2p-listen", env = "GUTS_P2P_LISTEN", value_delimiter = ',')]
    p2p_listen: Vec<guts_p2p::Multiaddr>,
    /// Peer to connect to at start, with its peer id: /ip4/1.2.3.4/tcp/4101/p2p/12D3Koo... (repeatable; added to `p2p.bootstrap`).
    #[arg(long, env = "GUTS_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<guts_p2p::Multiaddr>,
    /// Do not discover peers on the local network with mDNS (multicast on UDP 5353). Also `p2p.mdns = false`.
    #[arg(long, env = "GUTS_NO_MDNS")]
    no_mdns: bool,
    /// Do not join the Kademlia DHT: connect only to --bootstrap peers (and mDNS ones), and find repositories only among them. Also `p2p.dht = false`.
    #[arg(long, env = "GUTS_NO_DHT")]
    no_dht: bool,
    /// Do not relay for peers behind NAT (circuit relay v2; limits in ADR 0015). The node still uses other peers' relays.
    #[arg(long, env = "GUTS_NO_RELAY_SERVICE")]
    no_relay_service: bool,
    /// Let AutoNAT probe with peers at private addresses (10/8, 192.168/16, ...): for networks whose peers reach each other only at such addresses.
    #[arg(long, env = "GUTS_AUTONAT_PRIVATE_IPS")]
    autonat_private_ips: bool,
    /// Do not replicate: no peer-to-peer listening, discovery or node key; the node only serves HTTP. Also `p2p.enabled = false`.
    #[arg(long, env = "GUTS_NO_P2P", conflicts_with_all = ["p2p_listen", "bootstrap"])]
    no_p2p: bool,
    /// Every this many seconds, compare signed-update logs with connected peers and fetch what is missing (updates whose announcement was lost); 0 turns it off. Also `p2p.sync_interval` [default: 60].
    #[arg(long, env = "GUTS_SYNC_INTERVAL")]
    sync_interval: Option<u64>,
    /// A public URL of this node, e.g. https://git.example.org (repeatable): push certificates may name it as pushee, besides the host a request was sent to. Also `rules.public_urls` in the config file.
    #[arg(long = "public-url", env = "GUTS_PUBLIC_URL", value_delimiter = ',')]
    public_url: Vec<String>,
    /// Who may create repositories: open, allowlist (the --create-allow DIDs) or closed [default: open while HTTP listens on loopback only, allowlist otherwise]. Also `rules.create`.
    #[arg(long, env = "GUTS_CREATE_POLICY", value_parser = ["open", "allowlist", "closed"])]
    create_policy: Option<String>,
    /// A DID allowed to create repositories under the allowlist policy (repeatable). Also `rules.create_allow`.
    #[arg(
        long = "create-allow",
        env = "GUTS_CREATE_ALLOW",
        value_delimiter = ','
    )]
    create_allow: Vec<String>,
    /// Log filter, e.g. `info` or `guts_git=debug` (RUST_LOG syntax).
    #[arg(long, env = "GUTS_LOG", default_value = "info")]
    log: String,
    /// How log lines are written to stderr: `text` for people, `json` (one object per line, with the time, level, target, message and fields) for journald readers and log shippers.
    #[arg(long, env = "GUTS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    limits: limits::LimitArgs,
    #[command(flatten)]
    serve: serving::ServeArgs,
    #[command(flatten)]
    metrics: metrics::MetricsArgs,
}

#[derive(Subcommand, Debug)]
enum TokenAction {
    /// Grant a new key the right to push to OWNER/NAME and print its token (you must be a delegate; your key signs the grant).
    New {
        /// Repository, OWNER/NAME (OWNER may be an alias).
        repo: String,
        /// Refs the token may create, move or delete: a full name or a pattern with one `*` (repeatable).
        #[arg(long = "refs", default_value = "refs/heads/*")]
        refs: Vec<String>,
        /// How long the token is valid: 30d, 12h, 90m, 3600s (at most 10 years).
        #[arg(long, default_value = "30d")]
        expires: String,
        /// A label for people, e.g. who the token is for (carried in the grant).
        #[arg(long)]
        note: Option<String>,
    },
    /// Revoke a token: publish a new identity document that lists its grant as revoked (nodes refuse it at once, peers as the document reaches them).
    Revoke {
        /// Repository, OWNER/NAME.
        repo: String,
        /// The token, or its grant id (64 hex digits, printed by `token new` and `token show`).
        grant: String,
        /// More key files to co-sign the document with (when the threshold is above 1).
        #[arg(long = "cosign")]
        cosign: Vec<PathBuf>,
    },
    /// Print what a token allows: repository, refs, validity, grant id, who granted it.
    Show {
        /// The token.
        token: String,
    },
    /// Remember a token for stock git: saves it (DATA_DIR/credentials.json, mode 0600) and configures git to use `guts-node credential` for URL (credential.URL.helper, useHttpPath, and http.URL.proactiveAuth=basic for git 2.46+).
    Save {
        /// The repository URL, e.g. http://127.0.0.1:8080/alice/demo.git.
        url: String,
        /// The token.
        token: String,
        /// Configure this repository (its local config) instead of your global git config.
        #[arg(long)]
        repo: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum DelegateAction {
    /// Add a delegate.
    Add(DelegateChange),
    /// Remove a delegate (the threshold is lowered if it would exceed the delegates left).
    Remove(DelegateChange),
}

#[derive(clap::Args, Debug)]
struct DelegateChange {
    /// Repository, OWNER/NAME (OWNER may be an alias).
    repo: String,
    /// The delegate's DID (did:key:z6Mk... or z6Mk...).
    did: String,
    /// New threshold [default: unchanged].
    #[arg(long)]
    threshold: Option<u32>,
    /// More key files to co-sign with (when the current threshold is above 1).
    #[arg(long = "cosign")]
    cosign: Vec<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum RepoAction {
    /// Create an empty repository owned by your identity, with a first identity document signed by you.
    Create {
        /// NAME, or ALIAS/NAME to also declare ALIAS as a human owner name (URLs /ALIAS/NAME.git).
        name: String,
        /// More owner aliases to declare.
        #[arg(long = "alias")]
        aliases: Vec<String>,
        /// Default branch (HEAD).
        #[arg(long, default_value = "main")]
        default_branch: String,
    },
    /// Change who may push: issue a new identity document signed by the needed threshold of current delegates.
    Delegates {
        #[command(subcommand)]
        action: DelegateAction,
    },
    /// List repositories.
    List,
    /// Show refs, HEAD, object count and size of OWNER/NAME.
    Show {
        /// Repository name, OWNER/NAME.
        name: String,
    },
    /// Delete OWNER/NAME with all its refs and objects.
    Delete {
        /// Repository name, OWNER/NAME.
        name: String,
    },
    /// Consolidate OWNER/NAME's packs and write its commit-graph now (the node also does this in the background after pushes). Shows a progress bar of each phase on a terminal. Needs the operator token (--data-dir of the node).
    Maintain {
        /// Repository name, OWNER/NAME.
        name: String,
    },
    /// Change repository settings.
    Set {
        /// Repository name, OWNER/NAME.
        name: String,
        /// Refuse pushes that are not fast-forwards (true/false).
        #[arg(long)]
        deny_non_fast_forwards: Option<bool>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Repo { action, client } => client::repo_command(action, &client),
        Command::Id { action, client } => client::id_command(action, &client),
        Command::Status { client } => client_p2p::status(&client),
        Command::Token { action, client } => token_cli::token_command(action, &client),
        Command::Credential { operation, client } => token_cli::credential(&operation, &client),
        Command::Seed { repo, client } => client_p2p::seed(&repo, true, &client),
        Command::Unseed { repo, client } => client_p2p::seed(&repo, false, &client),
        Command::GitSetup {
            repo,
            remote_url,
            remote_name,
            client,
        } => client::git_setup(
            repo.as_deref(),
            remote_url.as_deref(),
            &remote_name,
            &client,
        ),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn resolve(args: &RunArgs) -> Result<Config, NodeError> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let file = match &args.config {
        Some(path) => FileConfig::load(path, true)?,
        None => FileConfig::load(&data_dir.join("config.toml"), false)?,
    };
    let default_listen: SocketAddr = DEFAULT_HTTP_LISTEN
        .parse()
        .map_err(|e| NodeError::Config(format!("bad default address: {e}")))?;
    Ok(Config {
        http_listen: args
            .http_listen
            .or(file.http_listen)
            .unwrap_or(default_listen),
        max_pack_bytes: args
            .max_pack_bytes
            .or(file.max_pack_bytes)
            .unwrap_or(guts_git::limits::DEFAULT_MAX_PACK_BYTES),
        push_cert_nonce_slop: args
            .push_cert_nonce_slop
            .or(file.push_cert_nonce_slop)
            .unwrap_or(policy::DEFAULT_NONCE_SLOP_SECS),
        http: args.limits.resolve(&file)?,
        serve: args.serve.resolve(
            &file,
            file.rules
                .min_free_bytes
                .unwrap_or(rules::DEFAULT_MIN_FREE_BYTES),
        )?,
        p2p: p2p_config::resolve(
            &p2p_config::P2pFlags {
                no_p2p: args.no_p2p,
                listen: &args.p2p_listen,
                bootstrap: &args.bootstrap,
                no_mdns: args.no_mdns,
                no_dht: args.no_dht,
                sync_interval: args.sync_interval,
                nat: guts_p2p::network::NatConfig {
                    relay_service: !args.no_relay_service,
                    autonat_private_ips: args.autonat_private_ips,
                },
            },
            &file.p2p,
        )?,
        metrics_public: args.metrics.public(&file.metrics),
        rules: rules_config(args, file.rules)?,
        data_dir,
    })
}

/// The `[rules]` table with the flags applied over it.
fn rules_config(
    args: &RunArgs,
    mut rules: rules::RulesConfig,
) -> Result<rules::RulesConfig, NodeError> {
    rules.public_urls.extend(args.public_url.iter().cloned());
    rules.create_allow.extend(args.create_allow.iter().cloned());
    if let Some(p) = &args.create_policy {
        rules.create = Some(match p.as_str() {
            "open" => rules::CreatePolicy::Open,
            "allowlist" => rules::CreatePolicy::Allowlist,
            "closed" => rules::CreatePolicy::Closed,
            other => return Err(NodeError::Config(format!("unknown create policy {other}"))),
        });
    }
    Ok(rules)
}

/// The format of the node's log lines (`--log-format`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn init_logging(filter: &str, format: LogFormat) -> Result<(), NodeError> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| NodeError::Config(format!("invalid --log filter: {e}")))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    Ok(())
}

/// Start peer-to-peer replication unless it is off; its metrics go into
/// `metrics`, and it shares the HTTP API's LFS store and size limit.
async fn start_p2p(
    config: &Config,
    repos: &Arc<repos::Repos>,
    lfs: &lfs::Lfs,
    board: &Arc<progress::Board>,
    metrics: &mut metrics::Metrics,
) -> Result<Option<Arc<p2p::P2p>>, NodeError> {
    let Some(opts) = config.p2p.clone() else {
        tracing::info!("peer-to-peer replication off (--no-p2p or p2p.enabled = false)");
        return Ok(None);
    };
    let p2p_metrics = guts_p2p::metrics::P2pMetrics::new(metrics.guts_registry());
    let peer_lfs = replica_lfs::PeerLfs::open(
        lfs.store.clone(),
        repos.storage().db(),
        &config.data_dir,
        lfs.max_object_bytes,
    )?;
    let replica = replica::NodeReplica::new(
        Arc::clone(repos),
        config.max_pack_bytes,
        Arc::clone(board),
        p2p_metrics,
        peer_lfs,
    )?;
    let p2p = p2p::P2p::start(&config.data_dir, opts, replica).await?;
    metrics.also(p2p.net.metrics());
    Ok(Some(p2p))
}

fn run(args: RunArgs) -> Result<(), NodeError> {
    memory::limit_arenas();
    init_logging(&args.log, args.log_format)?;
    let config = resolve(&args)?;
    std::fs::create_dir_all(&config.data_dir)?;
    let storage = Storage::open_with(&config.data_dir, config.serve.serving(&config.data_dir)?)?;
    tracing::info!(data_dir = %config.data_dir.display(), repos = storage.list()?.len(), "storage opened");
    let public = !config.http_listen.ip().is_loopback();
    let rules = rules::Rules::resolve(config.rules.clone(), public, &config.data_dir)?;
    tracing::info!(public, "{}", rules.describe());
    let token = auth::OperatorToken::load_or_create(&config.data_dir)?;
    let repos = repos::Repos::open(
        storage,
        config.push_cert_nonce_slop,
        ReceiveOptions::for_max_pack_bytes(config.max_pack_bytes),
        rules,
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let board = Arc::new(progress::Board::default());
    runtime.block_on(async move {
        let slots = limits::WorkSlots::new(&config.http);
        let mut metrics = metrics::Metrics::new(slots.metrics(), config.metrics_public);
        let lfs = lfs::Lfs::open(&config.data_dir, repos.storage().db(), config.max_pack_bytes)?;
        let p2p = start_p2p(&config, &repos, &lfs, &board, &mut metrics).await?;
        let maintenance = maintenance::Maintenance::new(Arc::clone(&repos));
        if config.serve.auto_maintenance {
            maintenance.spawn_auto();
        } else {
            tracing::info!("background maintenance off (--no-auto-maintenance)");
        }
        let events = Arc::new(events::EventHub::default());
        let state = Arc::new(http::AppState {
            lfs: Arc::new(lfs),
            events: Arc::clone(&events),
            maintenance,
            repos,
            p2p,
            token,
            transfer: config.http.transfer,
            slots,
            seeds: board,
            metrics: Arc::new(metrics),
        });
        let listener = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .map_err(|e| NodeError::Config(format!("cannot listen on {}: {e}", config.http_listen)))?;
        let addr = listener.local_addr()?;
        let addr_file = config.data_dir.join("http.addr");
        let tmp = config.data_dir.join("http.addr.tmp");
        std::fs::write(&tmp, addr.to_string())?;
        std::fs::rename(&tmp, &addr_file)?;
        tracing::info!(%addr, "serving git smart HTTP on http://{addr}/OWNER/NAME.git and the REST API on http://{addr}/api/v1");
        // Event streams never end by themselves: they end when the node stops.
        let shutdown = async move {
            shutdown_signal().await;
            events.close();
        };
        server::serve(listener, http::router(state), &config.http, shutdown).await;
        let _ = std::fs::remove_file(&addr_file);
        tracing::info!("node stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
