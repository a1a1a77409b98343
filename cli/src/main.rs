//! `fanout`: one binary, one subcommand per role, over the fanout libraries.
//!
//! The flow is the same for every subcommand: clap parses the flags (each one
//! also readable from a `FANOUT_...` variable), the subcommand validates its
//! configuration *before* any runtime exists (a bad flag or config exits with
//! 64, `EX_USAGE`), telemetry starts, then a tokio runtime runs the command.
//! The commands live in [`cmd`], one module each.

mod cmd;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Exit status for a bad flag or configuration (`EX_USAGE` in sysexits.h).
const EXIT_BAD_CONFIGURATION: u8 = 64;

/// Scatter/gather search: a root fans each query out to every shard's leaf
/// replicas and streams their answers into a merger.
#[derive(Debug, Parser)]
#[command(name = "fanout", version, propagate_version = true)]
pub struct Cli {
    /// Log line format on stderr (filter with RUST_LOG, default info).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "FANOUT_LOG_FORMAT"
    )]
    log_format: cmd::LogFormatArg,

    #[command(subcommand)]
    command: cmd::Command,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version come this way too; they are not failures.
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(EXIT_BAD_CONFIGURATION)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let validated = match cli.command.validate() {
        Ok(validated) => validated,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(EXIT_BAD_CONFIGURATION);
        }
    };

    fanout_runtime::telemetry::init(cli.log_format.into());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(validated.run(cli.log_format));
    // Blocking work still running (an index build interrupted by Ctrl-C) must
    // not keep the process alive.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
