//! `portcullis netfilter …`: placeholder until the netfilter module lands.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum NetfilterCommand {
    /// Print the rules (not implemented yet).
    Render,
}

pub fn run(cmd: NetfilterCommand) -> anyhow::Result<()> {
    match cmd {
        NetfilterCommand::Render => anyhow::bail!("netfilter rendering is not implemented yet"),
    }
}
