//! CLI commands about the peer network: `status`, `seed`, `unseed`.

use crate::client::{agent, check, node_url, operator_auth, read_json, unreachable_node};
use crate::error::NodeError;
use crate::ClientArgs;

/// `guts-node status`
pub fn status(args: &ClientArgs) -> Result<(), NodeError> {
    let base = node_url(args);
    let resp = agent()
        .get(&format!("{base}/api/v1/node"))
        .call()
        .map_err(unreachable_node(&base))?;
    let v: crate::rest_p2p::NodeView = read_json(check(resp, "status")?)?;
    if !v.p2p {
        println!("node at {base}: peer-to-peer replication is off (started with --no-p2p or p2p.enabled = false)");
        return Ok(());
    }
    println!("peer id     {}", v.peer_id.unwrap_or_default());
    for a in v.listen_addrs {
        println!("listening   {a}");
    }
    if let Some(r) = &v.reachability {
        println!("reachable   {r} (AutoNAT)");
    }
    for a in v.external_addrs {
        println!("external    {a}");
    }
    println!("peers       {}", v.connected_peers.len());
    for p in v.connected_peers {
        println!("  {p}");
        for c in v.connections.iter().filter(|c| c.peer == p) {
            let how = if c.relayed { "relayed" } else { "direct" };
            println!("    {how:<8} {}", c.address);
        }
    }
    println!("hole punches {}", v.hole_punches);
    println!("seeding     {}", v.seeding.join(", "));
    Ok(())
}

/// `guts-node seed` / `unseed`
pub fn seed(repo: &str, on: bool, args: &ClientArgs) -> Result<(), NodeError> {
    let base = node_url(args);
    let url = format!("{base}/api/v1/repos/{repo}/seed");
    let auth = operator_auth(args)?;
    if !on {
        let resp = agent()
            .delete(&url)
            .header("Authorization", &auth)
            .call()
            .map_err(unreachable_node(&base))?;
        check(resp, "unseed")?;
        println!("stopped seeding {repo}");
        return Ok(());
    }
    let (accept, ndjson) = crate::cli_progress::accept();
    let resp = agent()
        .post(&url)
        .header("Authorization", &auth)
        .header(accept, ndjson)
        .send_empty()
        .map_err(unreachable_node(&base))?;
    let _: serde_json::Value = crate::cli_progress::follow(resp, "seed")?;
    println!("seeding {repo}");
    Ok(())
}
