//! The crate's one error type. The load generator is a client, so nothing here
//! maps to a `tonic::Status`: failed calls are data in the report, not errors.

use std::path::PathBuf;

/// Why a load run (or a plot) could not be set up or its output not written.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("invalid option: {0}")]
    InvalidOption(String),

    #[error("cannot read queries from {path}: {source}")]
    ReadQueries {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{source_name}:{line}: {reason}")]
    BadQueryLine {
        source_name: String,
        line: u64,
        reason: String,
    },

    #[error("no queries in {source_name}")]
    NoQueries { source_name: String },

    #[error("invalid target address {addr:?}: {reason}")]
    InvalidAddress { addr: String, reason: String },

    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },

    #[error("cannot read payload file {path}: {reason}")]
    PayloadFile { path: PathBuf, reason: String },

    #[error("cannot write the {what} to {path}: {reason}")]
    WriteOutput {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },

    #[error("cannot read the report {path}: {reason}")]
    ReadReport { path: PathBuf, reason: String },

    #[error("cannot draw the plot {path}: {reason}")]
    Plot { path: PathBuf, reason: String },

    #[error("scenario {path}: {reason}")]
    Scenario { path: PathBuf, reason: String },

    #[error("the launcher thread failed: {0}")]
    Launcher(String),
}
