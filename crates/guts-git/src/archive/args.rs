//! The arguments of `git archive` as `git upload-archive` receives them,
//! parsed with git's rules (`archive.c`'s `parse_archive_args` over
//! `parse_options`): long options by unique prefix, `--opt=value` or
//! `--opt value`, bundled short options, `-<digits>` for the compression
//! level, `--` before paths. Refusals carry git's own messages.

use super::{fatal, Format};
use crate::{Error, Result};

/// Most `argument` lines git's upload-archive takes (its `MAX_ARGS`).
pub const MAX_ARGS: usize = 64;

const USAGE: &str = "usage: git archive [<options>] <tree-ish> [<path>...]\n   or: git archive --list\n   or: git archive --remote <repo> [--exec <cmd>] [<options>] <tree-ish> [<path>...]\n   or: git archive --remote <repo> [--exec <cmd>] --list\n";

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Args {
    /// `--format`, `None` for the default (tar).
    pub format: Option<String>,
    /// `--prefix`.
    pub prefix: String,
    /// `-<n>`: the compression level.
    pub level: Option<u32>,
    /// `-v`: list the archived paths on the progress band.
    pub verbose: bool,
    /// `--worktree-attributes`: a bare repository then has no attributes.
    pub worktree_attributes: bool,
    /// `--mtime`.
    pub mtime: Option<String>,
    /// `-l`: list the formats instead.
    pub list: bool,
    /// The tree-ish, then the pathspecs.
    pub rest: Vec<String>,
    remote: bool,
    exec: bool,
    output: bool,
    add_file: bool,
}

/// What an option takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Takes {
    Value,
    Flag,
}

const LONG: [(&str, Takes); 12] = [
    ("format", Takes::Value),
    ("prefix", Takes::Value),
    ("add-file", Takes::Value),
    ("add-virtual-file", Takes::Value),
    ("output", Takes::Value),
    ("worktree-attributes", Takes::Flag),
    ("verbose", Takes::Flag),
    ("mtime", Takes::Value),
    ("list", Takes::Flag),
    ("remote", Takes::Value),
    ("exec", Takes::Value),
    ("help-all", Takes::Flag),
];

fn usage(message: &str) -> Error {
    Error::Archive(format!("error: {message}\n{USAGE}"))
}

impl Args {
    /// Parse `args` (without the command name).
    pub fn parse(args: &[String]) -> Result<Args> {
        let mut out = Args::default();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if arg == "--" {
                out.rest.extend(it.by_ref().cloned());
                break;
            }
            if let Some(long) = arg.strip_prefix("--") {
                out.long(long, &mut it)?;
            } else if arg.len() > 1 && arg.starts_with('-') {
                out.short(&arg[1..], &mut it)?;
            } else {
                out.rest.push(arg.clone());
            }
        }
        Ok(out)
    }

    fn long(&mut self, given: &str, it: &mut std::slice::Iter<'_, String>) -> Result<()> {
        let (name, inline) = match given.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (given, None),
        };
        let (negated, bare) = match name.strip_prefix("no-") {
            Some(rest) => (true, rest),
            None => (false, name),
        };
        let (option, takes) = find_long(bare, given)?;
        if takes == Takes::Flag || negated {
            if inline.is_some() {
                return Err(usage(&format!("option `{option}' takes no value")));
            }
            return self.flag(option, !negated);
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| usage(&format!("option `{option}' requires a value")))?,
        };
        self.value(option, value)
    }

    fn short(&mut self, mut chars: &str, it: &mut std::slice::Iter<'_, String>) -> Result<()> {
        while let Some(c) = chars.chars().next() {
            if c.is_ascii_digit() {
                let end = chars
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(chars.len());
                // git keeps the last level; strtol saturates, so does this.
                self.level = Some(chars[..end].parse().unwrap_or(u32::MAX));
                chars = &chars[end..];
                continue;
            }
            chars = &chars[c.len_utf8()..];
            match c {
                'l' => self.list = true,
                'v' => self.verbose = true,
                'o' => {
                    if chars.is_empty() && it.next().is_none() {
                        return Err(usage("switch `o' requires a value"));
                    }
                    self.output = true;
                    return Ok(());
                }
                other => return Err(usage(&format!("unknown switch `{other}'"))),
            }
        }
        Ok(())
    }

    fn flag(&mut self, option: &str, on: bool) -> Result<()> {
        match option {
            "worktree-attributes" => self.worktree_attributes = on,
            "verbose" => self.verbose = on,
            "list" => self.list = on,
            "format" => self.format = None,
            "prefix" => self.prefix.clear(),
            "mtime" => return Err(usage("option `no-mtime' isn't available")),
            "help-all" => return Err(Error::Archive(USAGE.to_owned())),
            _ => {}
        }
        Ok(())
    }

    fn value(&mut self, option: &str, value: String) -> Result<()> {
        match option {
            "format" => self.format = Some(value),
            "prefix" => self.prefix = value,
            "mtime" => self.mtime = Some(value),
            "output" => self.output = true,
            "remote" => self.remote = true,
            "exec" => self.exec = true,
            // git looks for the file when it parses the option; the node
            // shows none of its files, so none is found.
            "add-file" => return Err(fatal(format!("File not found: {value}"))),
            _ => {
                if !value.starts_with('"') {
                    match value.find(':') {
                        None => return Err(fatal(format!("missing colon: '{value}'"))),
                        Some(0) => return Err(fatal(format!("empty file name: '{value}'"))),
                        Some(_) => {}
                    }
                }
                self.add_file = true;
            }
        }
        Ok(())
    }

    /// The checks `parse_archive_args` makes after parsing, in its order:
    /// what a remote may not ask, then the format and level.
    pub fn check(&self, remote: bool) -> Result<Format> {
        if self.remote {
            return Err(fatal("Unexpected option --remote".into()));
        }
        if self.exec {
            return Err(fatal("the option '--exec' requires '--remote'".into()));
        }
        if self.output {
            return Err(fatal("Unexpected option --output".into()));
        }
        if self.add_file {
            let message = if remote {
                "options '--add-file' and '--remote' cannot be used together"
            } else {
                "--add-file is not supported by this server"
            };
            return Err(fatal(message.into()));
        }
        if self.list {
            if let Some(extra) = self.rest.first() {
                return Err(fatal(format!("extra command line parameter '{extra}'")));
            }
            return Ok(Format::Tar);
        }
        let name = self.format.as_deref().unwrap_or("tar");
        if self.rest.is_empty() {
            return Err(Error::Archive(USAGE.to_owned()));
        }
        let format = Format::from_name(name)
            .ok_or_else(|| fatal(format!("Unknown archive format '{name}'")))?;
        if let Some(level) = self.level {
            let ok = match format {
                Format::Tar => false,
                Format::Zip => level <= 9,
                Format::Tgz | Format::TarGz => true,
            };
            if !ok {
                return Err(fatal(format!(
                    "Argument not supported for format '{name}': -{level}"
                )));
            }
        }
        Ok(format)
    }
}

/// The long option `name` abbreviates (exactly, or as the only prefix).
fn find_long(name: &str, given: &str) -> Result<(&'static str, Takes)> {
    if let Some(&(o, t)) = LONG.iter().find(|(o, _)| *o == name) {
        return Ok((o, t));
    }
    let mut found = LONG
        .iter()
        .filter(|(o, _)| !name.is_empty() && o.starts_with(name));
    match (found.next(), found.next()) {
        (Some(&(o, t)), None) => Ok((o, t)),
        (Some(&(a, _)), Some(&(b, _))) => Err(usage(&format!(
            "ambiguous option: {name} (could be --{a} or --{b})"
        ))),
        _ => Err(usage(&format!(
            "unknown option `{}'",
            given.split('=').next().unwrap_or(given)
        ))),
    }
}

/// `--mtime` as this node understands it: `@<seconds>` or plain seconds
/// since the epoch (git accepts any date `approxidate` reads).
pub fn parse_mtime(value: &str) -> Result<u64> {
    let digits = value.strip_prefix('@').unwrap_or(value);
    digits.parse().map_err(|_| {
        Error::Unsupported(format!(
            "--mtime={value}: this server takes only @<seconds since the epoch>"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args> {
        Args::parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_parse_as_git_parses_them() -> Result<()> {
        let a = parse(&["--form=zip", "-9", "--prefix", "p/", "HEAD", "--", "-x"])?;
        assert_eq!(a.format.as_deref(), Some("zip"));
        assert_eq!(a.level, Some(9));
        assert_eq!(a.prefix, "p/");
        assert_eq!(a.rest, ["HEAD", "-x"]);
        assert!(matches!(a.check(true)?, Format::Zip));
        Ok(())
    }

    #[test]
    fn refusals_carry_gits_messages() -> Result<()> {
        let err = |args: &[&str]| match parse(args).and_then(|a| a.check(true)) {
            Err(e) => e.to_string(),
            Ok(_) => String::new(),
        };
        assert_eq!(
            err(&["-9", "HEAD"]),
            "fatal: Argument not supported for format 'tar': -9"
        );
        assert_eq!(
            err(&["--format=zip", "-10", "HEAD"]),
            "fatal: Argument not supported for format 'zip': -10"
        );
        assert_eq!(
            err(&["--format=rar", "HEAD"]),
            "fatal: Unknown archive format 'rar'"
        );
        assert_eq!(
            err(&["--remote=x", "HEAD"]),
            "fatal: Unexpected option --remote"
        );
        assert_eq!(
            err(&["--output=x", "HEAD"]),
            "fatal: Unexpected option --output"
        );
        assert_eq!(err(&["--add-file=x", "HEAD"]), "fatal: File not found: x");
        assert_eq!(
            err(&["--add-virtual-file=x:y", "HEAD"]),
            "fatal: options '--add-file' and '--remote' cannot be used together"
        );
        assert!(err(&["--bogus", "HEAD"]).starts_with("error: unknown option `bogus'"));
        assert!(err(&[]).starts_with("usage: git archive"));
        assert!(parse(&["--list"])?.list);
        Ok(())
    }
}
