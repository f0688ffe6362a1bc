//! Which peer-to-peer options a node runs with: the flags over the `[p2p]`
//! table of the config file over the defaults (replication on, TCP and QUIC
//! on [`DEFAULT_P2P_PORT`] on every interface, mDNS and the DHT on), and the
//! fallback of a taken default port to a free one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::time::Duration;

use guts_p2p::multiaddr::Protocol;
use guts_p2p::Multiaddr;

use crate::config::{P2pFileConfig, DEFAULT_P2P_PORT};
use crate::error::NodeError;
use crate::p2p::P2pOptions;

/// Seconds between log comparisons with peers unless configured.
pub const DEFAULT_SYNC_INTERVAL: u64 = 60;

/// The p2p flags of `guts-node run`, as given.
pub struct P2pFlags<'a> {
    /// `--no-p2p`.
    pub no_p2p: bool,
    /// `--p2p-listen`.
    pub listen: &'a [Multiaddr],
    /// `--bootstrap`.
    pub bootstrap: &'a [Multiaddr],
    /// `--no-mdns`.
    pub no_mdns: bool,
    /// `--no-dht`.
    pub no_dht: bool,
    /// `--sync-interval`.
    pub sync_interval: Option<u64>,
    /// `--no-relay-service` and `--autonat-private-ips` (ADR 0015).
    pub nat: guts_p2p::network::NatConfig,
}

/// The options replication runs with, or None when it is off (`--no-p2p`,
/// or `enabled = false` in the file without `--p2p-listen`).
pub fn resolve(flags: &P2pFlags, file: &P2pFileConfig) -> Result<Option<P2pOptions>, NodeError> {
    let explicit = !flags.listen.is_empty();
    if flags.no_p2p || (!explicit && file.enabled == Some(false)) {
        return Ok(None);
    }
    let (listen, fallback) = if explicit {
        (flags.listen.to_vec(), false)
    } else if let Some(listen) = &file.listen {
        (parse_addrs("p2p.listen", listen)?, false)
    } else {
        (default_listen(DEFAULT_P2P_PORT), true)
    };
    if listen.is_empty() {
        return Err(NodeError::Config(
            "p2p.listen is empty: set p2p.enabled = false (or --no-p2p) to turn replication off"
                .into(),
        ));
    }
    let mut bootstrap = parse_addrs("p2p.bootstrap", &file.bootstrap)?;
    bootstrap.extend(flags.bootstrap.iter().cloned());
    let sync = flags
        .sync_interval
        .or(file.sync_interval)
        .unwrap_or(DEFAULT_SYNC_INTERVAL);
    Ok(Some(P2pOptions {
        listen,
        bootstrap,
        mdns: !flags.no_mdns && file.mdns.unwrap_or(true),
        dht: !flags.no_dht && file.dht.unwrap_or(true),
        sync_interval: (sync > 0).then(|| Duration::from_secs(sync)),
        fallback,
        nat: flags.nat,
    }))
}

fn parse_addrs(key: &str, addrs: &[String]) -> Result<Vec<Multiaddr>, NodeError> {
    addrs
        .iter()
        .map(|a| {
            a.parse()
                .map_err(|e| NodeError::Config(format!("{key}: invalid multiaddr {a:?}: {e}")))
        })
        .collect()
}

/// TCP and QUIC on `port` on every IPv4 and IPv6 interface.
pub fn default_listen(port: u16) -> Vec<Multiaddr> {
    let v4 = Protocol::Ip4(Ipv4Addr::UNSPECIFIED);
    let v6 = Protocol::Ip6(Ipv6Addr::UNSPECIFIED);
    let mut out = Vec::new();
    for ip in [v4, v6] {
        out.push(
            Multiaddr::empty()
                .with(ip.clone())
                .with(Protocol::Tcp(port)),
        );
        out.push(
            Multiaddr::empty()
                .with(ip)
                .with(Protocol::Udp(port))
                .with(Protocol::QuicV1),
        );
    }
    out
}

/// The kind of a listen address: (IPv6, QUIC), for matching a configured
/// address with the ones the network reports.
pub fn kind(addr: &Multiaddr) -> Option<(bool, bool)> {
    let mut it = addr.iter();
    let v6 = match it.next()? {
        Protocol::Ip4(_) => false,
        Protocol::Ip6(_) => true,
        _ => return None,
    };
    match it.next()? {
        Protocol::Tcp(_) => Some((v6, false)),
        Protocol::Udp(_) => Some((v6, true)),
        _ => None,
    }
}

/// Human name of a kind, for logs.
pub fn kind_name((v6, quic): (bool, bool)) -> &'static str {
    match (v6, quic) {
        (false, false) => "TCP/IPv4",
        (false, true) => "QUIC/IPv4",
        (true, false) => "TCP/IPv6",
        (true, true) => "QUIC/IPv6",
    }
}

/// The socket address of `/ip4|ip6/A/tcp|udp/P...`.
fn socket_addr(addr: &Multiaddr) -> Option<(SocketAddr, bool)> {
    let mut it = addr.iter();
    let ip: IpAddr = match it.next()? {
        Protocol::Ip4(a) => a.into(),
        Protocol::Ip6(a) => a.into(),
        _ => return None,
    };
    match it.next()? {
        Protocol::Tcp(p) => Some((SocketAddr::new(ip, p), false)),
        Protocol::Udp(p) => Some((SocketAddr::new(ip, p), true)),
        _ => None,
    }
}

/// The TCP or UDP port of `addr`.
pub fn port(addr: &Multiaddr) -> Option<u16> {
    socket_addr(addr).map(|(s, _)| s.port())
}

/// `addr` with its TCP or UDP port set to `port`.
fn with_port(addr: &Multiaddr, port: u16) -> Multiaddr {
    addr.iter()
        .map(|p| match p {
            Protocol::Tcp(_) => Protocol::Tcp(port),
            Protocol::Udp(_) => Protocol::Udp(port),
            other => other,
        })
        .collect()
}

/// What probing the default addresses changed.
#[derive(Debug, Default)]
pub struct Fallbacks {
    /// Kinds whose default port was taken and that listen on a free port.
    pub moved: Vec<(bool, bool)>,
}

/// The default addresses with every taken port replaced by 0 (a free port;
/// every port if `force_free`), and IPv6 ones dropped where this host has no
/// IPv6. Each address is
/// probed by binding it (and letting go at once); the network binds it again
/// just after, so a port taken in between makes that start fail and the
/// caller retries (see `P2p::start`).
pub fn available(addrs: &[Multiaddr], force_free: bool) -> (Vec<Multiaddr>, Fallbacks) {
    let mut out = Vec::new();
    let mut fallbacks = Fallbacks::default();
    for addr in addrs {
        let Some((sock, udp)) = socket_addr(addr) else {
            out.push(addr.clone());
            continue;
        };
        let probe = if udp {
            UdpSocket::bind(sock).map(drop)
        } else {
            TcpListener::bind(sock).map(drop)
        };
        match probe {
            Ok(()) if !force_free => out.push(addr.clone()),
            Ok(()) => out.push(with_port(addr, 0)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if let Some(k) = kind(addr) {
                    fallbacks.moved.push(k);
                }
                out.push(with_port(addr, 0));
            }
            Err(e) if sock.is_ipv6() => {
                tracing::info!(%addr, error = %e, "no IPv6 here: not listening on it");
            }
            // Let the network report it.
            Err(_) => out.push(addr.clone()),
        }
    }
    (out, fallbacks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(listen: &[Multiaddr]) -> P2pFlags<'_> {
        P2pFlags {
            no_p2p: false,
            listen,
            bootstrap: &[],
            no_mdns: false,
            no_dht: false,
            sync_interval: None,
            nat: Default::default(),
        }
    }

    #[test]
    fn defaults_listen_everywhere_on_the_default_port() -> Result<(), NodeError> {
        let opts = resolve(&flags(&[]), &P2pFileConfig::default())?
            .ok_or(NodeError::Internal("p2p off".into()))?;
        assert!(opts.fallback && opts.mdns && opts.dht);
        let text: Vec<String> = opts.listen.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            text,
            [
                "/ip4/0.0.0.0/tcp/4101",
                "/ip4/0.0.0.0/udp/4101/quic-v1",
                "/ip6/::/tcp/4101",
                "/ip6/::/udp/4101/quic-v1"
            ]
        );
        assert_eq!(opts.sync_interval, Some(Duration::from_secs(60)));
        Ok(())
    }

    #[test]
    fn flags_win_over_the_file() -> Result<(), NodeError> {
        let file: crate::config::FileConfig = toml::from_str(
            "[p2p]\nenabled = false\nlisten = [\"/ip4/127.0.0.1/tcp/5000\"]\nbootstrap = [\"/ip4/127.0.0.1/tcp/5001\"]\nmdns = false\nsync_interval = 0\n",
        )
        .map_err(|e| NodeError::Config(e.to_string()))?;
        assert!(resolve(&flags(&[]), &file.p2p)?.is_none());
        let listen: Vec<Multiaddr> = vec![Multiaddr::empty()
            .with(Protocol::Ip4(Ipv4Addr::LOCALHOST))
            .with(Protocol::Tcp(0))];
        let opts =
            resolve(&flags(&listen), &file.p2p)?.ok_or(NodeError::Internal("p2p off".into()))?;
        assert_eq!(opts.listen, listen);
        assert_eq!(opts.bootstrap.len(), 1);
        assert!(!opts.mdns && opts.dht && !opts.fallback);
        assert_eq!(opts.sync_interval, None);
        let mut no = flags(&listen);
        no.no_p2p = true;
        assert!(resolve(&no, &file.p2p)?.is_none());
        Ok(())
    }

    #[test]
    fn a_taken_port_falls_back_to_a_free_one() -> Result<(), NodeError> {
        let taken = TcpListener::bind("127.0.0.1:0")?;
        let port = taken.local_addr()?.port();
        let addr = Multiaddr::empty()
            .with(Protocol::Ip4(Ipv4Addr::LOCALHOST))
            .with(Protocol::Tcp(port));
        let (out, fb) = available(std::slice::from_ref(&addr), false);
        assert_eq!(out[0].to_string(), "/ip4/127.0.0.1/tcp/0");
        assert_eq!(fb.moved, [(false, false)]);
        drop(taken);
        Ok(())
    }

    #[test]
    fn bad_file_addresses_are_config_errors() {
        let file = P2pFileConfig {
            bootstrap: vec!["not an address".into()],
            ..Default::default()
        };
        assert!(matches!(
            resolve(&flags(&[]), &file),
            Err(NodeError::Config(_))
        ));
    }
}
