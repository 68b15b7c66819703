//! `portcullis netfilter …`: render, check, apply and remove the firewall rules.
//!
//! The rules are pure text from [`portcullis_policy::netfilter`]; this module is the edge that
//! runs the real tools (`nft`, `iptables-save`, `iptables-restore`, and their ip6 twins), so
//! `anyhow` is used here and nowhere deeper.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use portcullis_policy::netfilter::{
    self, iptables, nft, Family, Mode, NetfilterFacts, NetfilterSpec,
};

use crate::cli::load_config;

#[derive(Debug, Subcommand)]
pub enum NetfilterCommand {
    /// Print the rules: an nft script, or iptables-restore / ip6tables-restore input.
    Render {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_enum, default_value_t = RenderFormat::Nft)]
        format: RenderFormat,
    },
    /// Validate the rules with the real tools without loading them (`nft -c -f`,
    /// `iptables-restore --test`). Needs CAP_NET_ADMIN, like loading.
    Check {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_enum, default_value_t = Backend::Nft)]
        format: Backend,
    },
    /// Load the rules atomically, replacing only Portcullis' own table or chains; running it
    /// twice leaves one copy.
    Apply {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_enum, default_value_t = Backend::Nft)]
        format: Backend,
    },
    /// Delete Portcullis' own table or chains (and the jumps to them); nothing else.
    Remove {
        #[arg(long, value_enum, default_value_t = Backend::Nft)]
        format: Backend,
    },
}

/// Options shared by the subcommands that build rules.
#[derive(Debug, Args)]
pub struct Common {
    /// TOML config file; without it the embedded default is used.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Overrides `netfilter.mode` from the config.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RenderFormat {
    /// One nft script for IPv4 and IPv6 (`table inet portcullis`).
    Nft,
    /// iptables-restore input (IPv4).
    Iptables,
    /// ip6tables-restore input (IPv6).
    Ip6tables,
}

/// Which tool set loads the rules. `iptables` covers both iptables-restore and ip6tables-restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Nft,
    Iptables,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// The proxy host routes the LAN (FORWARD).
    Gateway,
    /// The proxy host itself (INPUT/OUTPUT).
    Host,
}

pub(crate) fn run(cmd: NetfilterCommand) -> anyhow::Result<()> {
    match cmd {
        NetfilterCommand::Render { common, format } => {
            let spec = spec(&common)?;
            let text = match format {
                RenderFormat::Nft => nft::render(&spec),
                RenderFormat::Iptables => iptables::render(&spec, Family::V4),
                RenderFormat::Ip6tables => iptables::render(&spec, Family::V6),
            };
            print!("{text}");
            Ok(())
        }
        NetfilterCommand::Check { common, format } => {
            let spec = spec(&common)?;
            match format {
                Backend::Nft => {
                    tool("nft", &["-c", "-f", "-"], Some(&nft::render(&spec)))?;
                }
                Backend::Iptables => {
                    for (fam, _, restore) in IPTABLES {
                        let input = iptables::render(&spec, fam);
                        tool(restore, &["--noflush", "--test"], Some(&input))?;
                    }
                }
            }
            eprintln!("netfilter rules ({format:?}) are valid");
            Ok(())
        }
        NetfilterCommand::Apply { common, format } => {
            let spec = spec(&common)?;
            match format {
                Backend::Nft => {
                    tool("nft", &["-f", "-"], Some(&nft::render(&spec)))?;
                }
                Backend::Iptables => {
                    for (fam, save, restore) in IPTABLES {
                        let current = iptables::SavedState::parse(&tool(save, &[], None)?);
                        let input = iptables::restore_input(Some(&spec), fam, &current);
                        tool(restore, &["--noflush"], Some(&input))?;
                    }
                }
            }
            eprintln!("netfilter rules applied ({format:?}, mode {:?})", spec.mode);
            Ok(())
        }
        NetfilterCommand::Remove { format } => {
            match format {
                Backend::Nft => {
                    tool("nft", &["-f", "-"], Some(&nft::removal()))?;
                }
                Backend::Iptables => {
                    for (fam, save, restore) in IPTABLES {
                        let current = iptables::SavedState::parse(&tool(save, &[], None)?);
                        let input = iptables::removal(fam, &current);
                        if !input.is_empty() {
                            tool(restore, &["--noflush"], Some(&input))?;
                        }
                    }
                }
            }
            eprintln!("netfilter rules removed ({format:?})");
            Ok(())
        }
    }
}

/// Per family: the save and restore tools. IPv4 and IPv6 are separate transactions; each is
/// atomic on its own.
const IPTABLES: [(Family, &str, &str); 2] = [
    (Family::V4, "iptables-save", "iptables-restore"),
    (Family::V6, "ip6tables-save", "ip6tables-restore"),
];

/// Loads the config and compiles its `[netfilter]` section with the proxy's listeners as facts.
fn spec(common: &Common) -> anyhow::Result<NetfilterSpec> {
    let config = load_config(common.config.as_deref())?;
    let mode = common.mode.map(|m| match m {
        ModeArg::Gateway => Mode::Gateway,
        ModeArg::Host => Mode::Host,
    });
    let origin = common.config.as_ref().map_or_else(
        || "<embedded default>".to_owned(),
        |p| p.display().to_string(),
    );
    compile(&config, mode).with_context(|| format!("invalid config {origin}"))
}

/// Compiles `[netfilter]` with the proxy's listeners as facts: what `render` prints (and
/// `portcullis doctor` compares with the live ruleset).
pub(crate) fn compile(
    config: &crate::config::Config,
    mode: Option<Mode>,
) -> Result<NetfilterSpec, netfilter::CompileError> {
    let facts = NetfilterFacts {
        proxy_listen: config.server.listen.clone(),
        transparent_http: config.server.transparent_http_listen.clone(),
        transparent_tls: config.server.transparent_tls_listen.clone(),
    };
    netfilter::compile(&config.netfilter, &facts, mode)
}

/// Runs `program args`, feeding `stdin`, and returns its standard output. A failure names the
/// program and carries its standard error (nft's errors point at the offending line).
pub(crate) fn tool(program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program} (is it installed and on PATH?)"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("cannot write to {program}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use crate::config::Config;

    #[test]
    fn netfilter_section_parses_and_keeps_unknown_key_errors() {
        let c = Config::parse(
            "[netfilter]\nmode = \"host\"\nproxy_user = \"portcullis\"\n\
             [[netfilter.direct]]\nservices = [\"dns\"]\nto = [\"10.0.0.53/32\"]\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.netfilter.mode, Mode::Host);
        let err = Config::parse("[netfilter]\nlan_iface = []\n", "lab.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("key `netfilter.lan_iface`"), "{err}");
    }

    #[test]
    fn effective_config_with_netfilter_round_trips() {
        let text = "[server]\nlisten = [\"10.0.0.1:3128\"]\n[netfilter]\nproxy_user = 999\n\
                    [netfilter.services.erp]\ntcp = [3200, \"3300-3310\"]\n\
                    [[netfilter.direct]]\nservices = [\"erp\"]\n\
                    [[netfilter.one_to_one_nat]]\nname = \"ex\"\npublic = \"192.0.2.1\"\nprivate = \"10.0.0.25\"\n";
        let c = Config::parse(text, "t").unwrap();
        let again = Config::parse(&c.to_toml(), "t2").unwrap();
        assert_eq!(again.netfilter, c.netfilter);
    }

    #[test]
    fn embedded_default_compiles_and_reports_keys() {
        let common = Common {
            config: None,
            mode: None,
        };
        let compiled = spec(&common).unwrap();
        assert_eq!(compiled.mode, Mode::Gateway);
        assert!(
            compiled.proxy_ports.is_empty(),
            "default listener is loopback"
        );
        let err = spec(&Common {
            config: None,
            mode: Some(ModeArg::Host),
        })
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("<embedded default>"), "{msg}");
        assert!(msg.contains("netfilter.proxy_user"), "{msg}");
    }
}
