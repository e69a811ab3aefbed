//! What the whole-cluster measurement binaries (`recovery`, `ack_latency`) share: finding the
//! `chordkv` binary, describing the machine, the date and the exact command of a run, so that
//! every results file says what produced its numbers.

// Each binary uses a part of this module.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

/// The `chordkv` binary: `explicit` if given, else the one next to this executable
/// ([`chordkv_harness::cluster::chordkv_binary`]).
pub fn chordkv_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match explicit {
        Some(path) if path.is_file() => Ok(path),
        Some(path) => bail!("--chordkv {}: no such file", path.display()),
        None => chordkv_harness::cluster::chordkv_binary().context("or pass --chordkv PATH"),
    }
}

/// The command that started this process, as a person would type it again: the `cargo run`
/// form when cargo started us, else the executable path and its arguments.
pub fn command_line(bin_name: &str) -> String {
    let args: Vec<String> = std::env::args().skip(1).map(|a| shell_quote(&a)).collect();
    let under_cargo = std::env::var_os("CARGO_PKG_NAME").is_some();
    let head = if under_cargo {
        let profile = if cfg!(debug_assertions) { "" } else { " --release" };
        format!("cargo run{profile} -p chordkv-bench --bin {bin_name} --")
    } else {
        std::env::args().next().unwrap_or_else(|| bin_name.to_string())
    };
    if args.is_empty() {
        head.trim_end_matches(" --").to_string()
    } else {
        format!("{head} {}", args.join(" "))
    }
}

fn shell_quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// "2 CPUs (model name), 23.4 GiB memory, Linux 6.1.0": what the numbers were measured on.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| {
        l.strip_prefix("model name")?
            .split_once(':')
            .map(|(_, m)| m.trim().to_string())
    });
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: Option<u64> = meminfo.lines().find_map(|l| {
        l.strip_prefix("MemTotal:")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut s = format!("nproc {cpus}");
    if let Some(model) = model {
        s.push_str(&format!(" ({model})"));
    }
    if let Some(kib) = mem_kib {
        s.push_str(&format!(", {:.1} GiB memory", kib as f64 / (1024.0 * 1024.0)));
    }
    if !kernel.trim().is_empty() {
        s.push_str(&format!(", Linux {}", kernel.trim()));
    }
    s
}

/// The current time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let iso = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    format!("{} {} UTC", &iso[..10], &iso[11..16])
}

/// The source the `chordkv` binary was presumably built from: `git describe` of the working
/// tree, `-dirty` when it has uncommitted changes; "unknown" outside a git checkout.
pub fn source_version() -> String {
    Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// A seed from the clock, for runs not given `--seed` (printed, so the run can be repeated).
pub fn clock_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
}

/// Seconds with millisecond precision, for tables.
pub fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let now = utc_now();
        assert_eq!(now.len(), "2024-02-29 12:00 UTC".len(), "{now}");
        assert!(now.ends_with(" UTC") && now.as_bytes()[4] == b'-', "{now}");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("--keys"), "--keys");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
