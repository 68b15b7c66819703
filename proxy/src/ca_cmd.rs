//! `portcullis ca …`: placeholder until the certificate authority lands.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a CA (not implemented yet).
    Init,
}

pub fn run(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init => anyhow::bail!("the CA is not implemented yet"),
    }
}
