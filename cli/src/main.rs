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

    /// Export the spans of root, leaf, merger and search over OTLP/gRPC to
    /// this collector (http://host:4317); off when unset. `fanout up`
    /// passes it to the processes it starts.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "OTEL_EXPORTER_OTLP_ENDPOINT"
    )]
    otlp_endpoint: Option<String>,

    /// The share of new traces kept, 0 to 1 (parent-based: a caller's
    /// sampled traceparent is always obeyed); default: as
    /// OTEL_TRACES_SAMPLER says, else every trace.
    #[arg(
        long,
        global = true,
        value_name = "RATIO",
        env = "FANOUT_TRACE_SAMPLE_RATIO"
    )]
    trace_sample_ratio: Option<f64>,

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
    let role = cli.command.traced_role();
    let traces = fanout_runtime::telemetry::TraceSettings {
        otlp_endpoint: cli
            .otlp_endpoint
            .clone()
            .filter(|endpoint| !endpoint.is_empty()),
        sample_ratio: cli.trace_sample_ratio,
        service_name: format!("fanout-{}", role.unwrap_or("cli")),
        role: role.unwrap_or("cli").to_owned(),
    };
    // Only the services and the search client make spans worth sending;
    // `up` passes the settings on to the processes it starts.
    let exported = fanout_runtime::telemetry::TraceSettings {
        otlp_endpoint: role.and(traces.otlp_endpoint.clone()),
        ..traces.clone()
    };
    if let Err(error) = traces.validate() {
        eprintln!("error: {error}");
        return ExitCode::from(EXIT_BAD_CONFIGURATION);
    }
    let validated = match cli.command.validate() {
        Ok(validated) => validated,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(EXIT_BAD_CONFIGURATION);
        }
    };

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
    // The OTLP exporter's channel lives on the runtime.
    let telemetry = {
        let _runtime = runtime.enter();
        fanout_runtime::telemetry::init(cli.log_format.into(), &exported)
    };
    let telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_BAD_CONFIGURATION);
        }
    };
    let outcome = runtime.block_on(validated.run(cli.log_format, &traces));
    telemetry.shutdown();
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
