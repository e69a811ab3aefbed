//! Where `chordkv node` and `chordkv cluster` send their logs: the `tracing` subscriber,
//! installed once, on stderr, in text or JSON lines, at the level of `--log-level` unless
//! `RUST_LOG` gives a filter (see `chordkv_server::log` for what is logged at which level).

use std::io::IsTerminal;

use anyhow::anyhow;
use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

/// The environment variable whose filter, when set, wins over `--log-level`.
pub const FILTER_ENV: &str = "RUST_LOG";

/// The least severe level logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// How each event is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event: time, level, the node's span (`node{addr=.. id=..}`), the
    /// message and its fields.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`)
    /// and `span` (the node's `addr`, and `id` or `vnodes`).
    Json,
}

/// The log flags of `chordkv node` and `chordkv cluster` (which passes them to its nodes).
#[derive(Clone, Debug, Args)]
pub struct LogArgs {
    /// The least severe level logged: error, warn, info, debug (connections opened and
    /// closed) or trace. RUST_LOG, when set, wins: a filter such as `debug`,
    /// `chordkv_server=debug` or `warn,chordkv_server::event_loop=debug`.
    #[arg(long, value_name = "LEVEL", value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
    /// How log lines are written on stderr: `text` (readable lines) or `json` (one JSON
    /// object per line, with the node's address and id as span fields).
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// These flags as command-line arguments, for the nodes `chordkv cluster` starts.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--log-level".into(),
            flag_value(&self.log_level),
            "--log-format".into(),
            flag_value(&self.log_format),
        ]
    }

    /// The filter: `RUST_LOG` when set and not blank, else `--log-level`. Errors: a `RUST_LOG`
    /// that is not a valid filter.
    fn filter(&self) -> anyhow::Result<EnvFilter> {
        match std::env::var(FILTER_ENV) {
            Ok(text) if !text.trim().is_empty() => {
                EnvFilter::try_new(&text).map_err(|e| anyhow!("invalid {FILTER_ENV}={text:?}: {e}"))
            }
            _ => Ok(EnvFilter::new(flag_value(&self.log_level))),
        }
    }

    /// Installs the process's subscriber: stderr, the filter, the format. Errors: an invalid
    /// `RUST_LOG`, or a subscriber already installed.
    pub fn init(&self) -> anyhow::Result<()> {
        let builder = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(self.filter()?);
        let installed = match self.log_format {
            LogFormat::Text => builder
                .with_target(false)
                .with_ansi(std::io::stderr().is_terminal())
                .try_init(),
            LogFormat::Json => builder
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .try_init(),
        };
        installed.map_err(|e| anyhow!("cannot install the log subscriber: {e}"))
    }
}

/// A value as its flag spells it (`warn`, `json`).
fn flag_value<T: ValueEnum>(value: &T) -> String {
    value
        .to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default() // every variant has one
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        logs: LogArgs,
    }

    #[test]
    fn to_args_parses_back_to_the_same_flags() {
        let cli = Cli::try_parse_from(["node", "--log-level", "warn", "--log-format", "json"]).unwrap();
        assert_eq!(
            cli.logs.to_args(),
            ["--log-level", "warn", "--log-format", "json"]
        );
        let defaults = Cli::try_parse_from(["node"]).unwrap();
        assert_eq!(defaults.logs.log_level, LogLevel::Info);
        assert_eq!(defaults.logs.log_format, LogFormat::Text);
    }

    #[test]
    fn bad_values_are_refused_with_the_possible_ones() {
        let e = Cli::try_parse_from(["node", "--log-level", "loud"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("error, warn, info, debug, trace"), "{e}");
        let e = Cli::try_parse_from(["node", "--log-format", "xml"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("text, json"), "{e}");
    }
}
