//! A small internet in Linux network namespaces, for the NAT tests: an
//! "internet" namespace routing between a public host and two home routers,
//! each router masquerading a private LAN with one host behind it and
//! dropping unsolicited inbound traffic, as home routers do.
//!
//! ```text
//!   pub 198.51.100.2 ── inet ──┬── ra 203.0.113.2 (NAT) ── a 10.0.1.2
//!                              └── rb 192.0.2.2   (NAT) ── b 10.0.2.2
//! ```
//!
//! Addresses are documentation and private ranges, used only inside the
//! namespaces this module creates; every namespace is deleted on drop.
//! Needs root, `ip` (iproute2) and `iptables`.

use std::fs::File;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;

/// The public host's address.
pub const PUBLIC_IP: &str = "198.51.100.2";
/// Router A's public (WAN) address.
pub const ROUTER_A_WAN: &str = "203.0.113.2";
/// Router B's public (WAN) address.
pub const ROUTER_B_WAN: &str = "192.0.2.2";

/// The hosts of the lab.
#[derive(Clone, Copy, Debug)]
pub enum Host {
    /// On the internet, no NAT.
    Public,
    /// Behind router A.
    A,
    /// Behind router B.
    B,
}

/// The namespaces; deleted on drop.
pub struct Lab {
    prefix: String,
    created: Vec<String>,
}

/// Why the lab cannot run here, if it cannot (not root, a tool missing,
/// namespaces not allowed).
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, iptables)".into());
    }
    for (tool, arg) in [("ip", "-V"), ("iptables", "-V")] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// Run a command, panicking with its output if it fails.
fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    /// Build the lab, or say why it cannot be built here.
    pub fn new() -> Result<Lab, String> {
        if let Some(why) = unavailable() {
            return Err(why);
        }
        let mut lab = Lab {
            prefix: format!("gnat{}", std::process::id()),
            created: Vec::new(),
        };
        let probe = lab.ns("inet");
        let out = Command::new("ip")
            .args(["netns", "add", &probe])
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot create a network namespace: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        lab.created.push(probe);
        lab.build();
        Ok(lab)
    }

    /// The full name of namespace `role`.
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// The namespace of a host.
    pub fn host_ns(&self, host: Host) -> String {
        self.ns(match host {
            Host::Public => "pub",
            Host::A => "a",
            Host::B => "b",
        })
    }

    /// Run `command` (words separated by spaces) inside namespace `role`.
    fn exec(&self, role: &str, command: &str) {
        let ns = self.ns(role);
        let mut all = vec!["ip", "netns", "exec", &ns];
        all.extend(command.split_whitespace());
        run(&all);
    }

    /// A veth pair between two namespaces, each end addressed (`addr/24`).
    fn link(&self, (r1, if1, ip1): (&str, &str, &str), (r2, if2, ip2): (&str, &str, &str)) {
        let (n1, n2) = (self.ns(r1), self.ns(r2));
        run(&[
            "ip", "link", "add", if1, "netns", &n1, "type", "veth", "peer", "name", if2, "netns",
            &n2,
        ]);
        for (ns, ifname, ip) in [(&n1, if1, ip1), (&n2, if2, ip2)] {
            let addr = format!("{ip}/24");
            run(&["ip", "-n", ns, "addr", "add", &addr, "dev", ifname]);
            run(&["ip", "-n", ns, "link", "set", ifname, "up"]);
        }
    }

    fn build(&mut self) {
        for role in ["pub", "ra", "a", "rb", "b"] {
            let ns = self.ns(role);
            run(&["ip", "netns", "add", &ns]);
            self.created.push(ns);
        }
        for role in ["inet", "pub", "ra", "a", "rb", "b"] {
            self.exec(role, "ip link set lo up");
        }
        self.link(("inet", "p0", "198.51.100.1"), ("pub", "eth0", PUBLIC_IP));
        self.link(("inet", "a0", "203.0.113.1"), ("ra", "wan", ROUTER_A_WAN));
        self.link(("inet", "b0", "192.0.2.1"), ("rb", "wan", ROUTER_B_WAN));
        self.link(("ra", "lan", "10.0.1.1"), ("a", "eth0", "10.0.1.2"));
        self.link(("rb", "lan", "10.0.2.1"), ("b", "eth0", "10.0.2.2"));
        for (role, gw) in [
            ("pub", "198.51.100.1"),
            ("ra", "203.0.113.1"),
            ("rb", "192.0.2.1"),
            ("a", "10.0.1.1"),
            ("b", "10.0.2.1"),
        ] {
            self.exec(role, &format!("ip route add default via {gw}"));
        }
        for role in ["inet", "ra", "rb"] {
            let ns = self.ns(role);
            let forward = "echo 1 > /proc/sys/net/ipv4/ip_forward";
            run(&["ip", "netns", "exec", &ns, "sh", "-c", forward]);
        }
        for router in ["ra", "rb"] {
            // Masquerade the LAN; let in only replies to what went out, to
            // the LAN and to the router itself (whose kernel would otherwise
            // answer an early hole-punching SYN with a reset).
            self.exec(
                router,
                "iptables -t nat -A POSTROUTING -o wan -j MASQUERADE",
            );
            for chain in ["FORWARD -i wan -o lan", "INPUT -i wan"] {
                self.exec(
                    router,
                    &format!(
                        "iptables -A {chain} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
                    ),
                );
                self.exec(router, &format!("iptables -A {chain} -j DROP"));
            }
        }
    }

    /// Cut (or restore) the internet between the two routers: while cut,
    /// A and B reach each other only through the public host. TCP
    /// connection attempts are refused at once (a reset) rather than left
    /// to time out, so hole punching fails fast.
    pub fn cut_between_routers(&self, cut: bool) {
        let op = if cut { "-I" } else { "-D" };
        for (src, dst) in [(ROUTER_A_WAN, ROUTER_B_WAN), (ROUTER_B_WAN, ROUTER_A_WAN)] {
            // Inserted in this order, the reset rule comes first.
            let rule = format!("iptables {op} FORWARD -s {src} -d {dst}");
            self.exec("inet", &format!("{rule} -j DROP"));
            self.exec(
                "inet",
                &format!("{rule} -p tcp -j REJECT --reject-with tcp-reset"),
            );
        }
    }

    /// A TCP port on loopback of this (the test's) namespace that leads to
    /// `target` inside `ns`: each connection is made from a thread that
    /// entered `ns`, and bytes are copied both ways. Lets the test's HTTP
    /// client and stock git reach a node whose HTTP listens on the
    /// loopback of its namespace.
    pub fn forward(&self, ns: &str, target: SocketAddr) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("forwarder listen");
        let local = listener.local_addr().expect("forwarder address");
        let (connect_tx, connect_rx) = mpsc::channel::<mpsc::Sender<io::Result<TcpStream>>>();
        let path = Path::new("/run/netns").join(ns);
        std::thread::spawn(move || {
            let f = File::open(&path).expect("open the namespace");
            // SAFETY: setns on a valid namespace fd changes only this
            // thread's network namespace.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
            for reply in connect_rx {
                let _ = reply.send(TcpStream::connect(target));
            }
        });
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let (tx, rx) = mpsc::channel();
                if connect_tx.send(tx).is_err() {
                    return;
                }
                if let Ok(Ok(server)) = rx.recv() {
                    pump(client, server);
                }
            }
        });
        local
    }
}

/// Copy bytes both ways between two streams until each side closes.
fn pump(a: TcpStream, b: TcpStream) {
    for (mut from, mut to) in [
        (a.try_clone().expect("clone"), b.try_clone().expect("clone")),
        (b, a),
    ] {
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
