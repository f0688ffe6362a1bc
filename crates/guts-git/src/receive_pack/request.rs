//! Parsing a receive-pack request: commands (or a push certificate carrying
//! them), capabilities, shallow lines and push options (gitprotocol-pack,
//! "Reference Update Request and Packfile Transfer").

use std::collections::HashSet;
use std::io::BufRead;

use gix_hash::ObjectId;

use super::Command;
use crate::error::{Error, Result};
use crate::limits::{MAX_PUSH_CERT_BYTES, MAX_PUSH_COMMANDS, MAX_PUSH_OPTIONS, MAX_REQUEST_BYTES};
use crate::pktline::{Packet, PktReader};

/// Everything before the pack.
#[derive(Debug, Default)]
pub(super) struct Request {
    pub commands: Vec<Command>,
    pub caps: HashSet<String>,
    /// The push certificate text (payload and signature), if the push was signed.
    pub cert: Option<String>,
    /// The client is a shallow clone.
    pub shallow: bool,
    /// A command list was sent beside the certificate and differs from it.
    pub cert_mismatch: bool,
}

pub(super) fn read_request(reader: &mut PktReader<&mut dyn BufRead>) -> Result<Request> {
    let mut req = Request::default();
    let mut listed = Vec::new();
    let mut command_bytes = 0usize;
    loop {
        let packet = match reader.read()? {
            None | Some(Packet::Flush) => break,
            Some(Packet::Data(d)) => d.to_vec(),
            Some(other) => {
                return Err(Error::Protocol(format!(
                    "unexpected {other:?} in push commands"
                )))
            }
        };
        let (line, cap_part) = match packet.iter().position(|&b| b == 0) {
            Some(nul) => (&packet[..nul], Some(&packet[nul + 1..])),
            None => (&packet[..], None),
        };
        if req.commands.is_empty() && listed.is_empty() && req.cert.is_none() {
            if let Some(c) = cap_part {
                let c = std::str::from_utf8(c)
                    .map_err(|_| Error::Protocol("capabilities are not UTF-8".into()))?;
                req.caps.extend(c.split_whitespace().map(str::to_owned));
            }
        }
        let line = Packet::Data(line).as_text("push command")?;
        if line.starts_with("shallow ") {
            // A push from a shallow clone: accepted if its objects connect to
            // what is stored, which the connectivity check decides.
            req.shallow = true;
            continue;
        }
        if line == "push-cert" {
            if req.cert.is_some() {
                return Err(Error::Protocol("two push certificates".into()));
            }
            let text = read_cert(reader)?;
            req.commands = commands_from_cert(&text)?;
            req.cert = Some(text);
            continue;
        }
        if listed.len() >= MAX_PUSH_COMMANDS {
            return Err(Error::TooLarge(format!(
                "more than {MAX_PUSH_COMMANDS} ref updates"
            )));
        }
        command_bytes += line.len();
        if command_bytes > MAX_REQUEST_BYTES {
            return Err(Error::TooLarge(format!(
                "ref update commands over {MAX_REQUEST_BYTES} bytes"
            )));
        }
        listed.push(parse_command(line)?);
    }
    if req.cert.is_some() {
        // The protocol forbids a command list beside a certificate; if one
        // comes anyway it must say exactly what the signed lines say.
        req.cert_mismatch = !listed.is_empty() && listed != req.commands;
    } else {
        req.commands = listed;
    }
    Ok(req)
}

fn read_cert(reader: &mut PktReader<&mut dyn BufRead>) -> Result<String> {
    let mut text = String::new();
    loop {
        let line = match reader.read_required()? {
            Packet::Data(d) => std::str::from_utf8(d)
                .map_err(|_| Error::Protocol("push certificate is not UTF-8".into()))?
                .to_owned(),
            other => {
                return Err(Error::Protocol(format!(
                    "unterminated push certificate ({other:?})"
                )))
            }
        };
        if line == "push-cert-end\n" {
            return Ok(text);
        }
        if text.len() + line.len() > MAX_PUSH_CERT_BYTES {
            return Err(Error::TooLarge(format!(
                "push certificate over {MAX_PUSH_CERT_BYTES} bytes"
            )));
        }
        text.push_str(&line);
    }
}

/// The `old new ref` lines between the certificate header and its signature.
fn commands_from_cert(text: &str) -> Result<Vec<Command>> {
    let (_, rest) = text.split_once("\n\n").ok_or_else(|| {
        Error::Protocol("push certificate without a blank line after its header".into())
    })?;
    let mut commands = Vec::new();
    for line in rest.lines() {
        if line.starts_with("-----BEGIN") {
            break;
        }
        if commands.len() >= MAX_PUSH_COMMANDS {
            return Err(Error::TooLarge(format!(
                "more than {MAX_PUSH_COMMANDS} ref updates"
            )));
        }
        commands.push(parse_command(line)?);
    }
    Ok(commands)
}

/// The `push-option` lines of a certificate's header, in order.
pub(super) fn cert_push_options(text: &str) -> Vec<String> {
    let header = text.split_once("\n\n").map_or(text, |(h, _)| h);
    header
        .lines()
        .filter_map(|l| l.strip_prefix("push-option "))
        .map(str::to_owned)
        .collect()
}

fn parse_command(line: &str) -> Result<Command> {
    let mut parts = line.splitn(3, ' ');
    let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Error::Protocol(format!("malformed push command {line:?}")));
    };
    Ok(Command {
        old: parse_maybe_null(old)?,
        new: parse_maybe_null(new)?,
        name: name.to_owned(),
    })
}

pub(super) fn read_push_options(reader: &mut PktReader<&mut dyn BufRead>) -> Result<Vec<String>> {
    let mut options = Vec::new();
    loop {
        match reader.read()? {
            None | Some(Packet::Flush) => break,
            Some(p) => {
                if options.len() >= MAX_PUSH_OPTIONS {
                    return Err(Error::TooLarge(format!(
                        "more than {MAX_PUSH_OPTIONS} push options"
                    )));
                }
                options.push(p.as_text("push option")?.to_owned());
            }
        }
    }
    Ok(options)
}

fn parse_maybe_null(hex: &str) -> Result<Option<ObjectId>> {
    let id = ObjectId::from_hex(hex.as_bytes())
        .map_err(|_| Error::Protocol(format!("invalid object id {hex:?} in push command")))?;
    Ok(if id.is_null() { None } else { Some(id) })
}
