//! The command line every Weir binary takes, and what it does with it: read and check the
//! config, stop there with `--check-config`, otherwise start.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The arguments every Weir binary takes (flatten them into the binary's own `Parser`).
#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    /// The bootstrap config (YAML); the commented examples are in config/.
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
    /// Validate the config (reading the files and variables it names) and exit: 0 when valid,
    /// 1 with the offending key otherwise.
    #[arg(long)]
    pub check_config: bool,
}

/// Runs a binary: `check` reads and validates the config at `args.config`; with
/// `--check-config` the process stops there, otherwise `start` runs with what `check` returned.
/// Errors go to stderr prefixed with `binary`, and end the process with a failure code.
pub fn run_binary<C>(
    binary: &str,
    args: &ConfigArgs,
    check: impl FnOnce(&Path) -> anyhow::Result<C>,
    start: impl FnOnce(C) -> anyhow::Result<()>,
) -> ExitCode {
    let config = match check(&args.config) {
        Ok(c) => c,
        Err(e) => {
            // `{e}` rather than `{e:#}`: a config error already says the key and the reason.
            eprintln!("{binary}: invalid config {}: {e}", args.config.display());
            return ExitCode::FAILURE;
        }
    };
    if args.check_config {
        println!("{}: valid", args.config.display());
        return ExitCode::SUCCESS;
    }
    match start(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{binary}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
