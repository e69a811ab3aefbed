//! Ctrl-C (SIGINT) and SIGTERM during a run.
//!
//! The first signal asks the run to stop: the load threads and the fault schedule stop, what
//! was written is verified, the summary and plots of the partial run are written (marked
//! `interrupted`), and a local cluster loadgen started is killed as the run ends. loadgen then
//! exits with 128 + the signal (130 for SIGINT, 143 for SIGTERM), as a shell reports a process
//! a signal ended. A second signal exits at once, with the same code, after killing the
//! processes loadgen started (the nodes of a local cluster, which run in their own process
//! groups so that a terminal's Ctrl-C reaches loadgen only and the nodes do not start slow
//! graceful leaves of their own).
//!
//! Signals are taken by a thread of `signal-hook`'s iterator (the handler itself only records
//! them), so nothing but async-signal-safe code runs in the handler.

use std::sync::atomic::{AtomicI32, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The first signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// Takes SIGINT and SIGTERM from now on (see the module docs).
///
/// # Errors
/// When the handlers cannot be installed or the thread started.
pub fn install() -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("loadgen-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                match RECEIVED.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) => eprintln!(
                        "\nloadgen: {} received: stopping the load, verifying what was written and \
                         writing the partial results (again to exit at once)",
                        name(sig)
                    ),
                    Err(first) => {
                        eprintln!("\nloadgen: {} again: killing the nodes and exiting", name(sig));
                        kill_children();
                        std::process::exit(exit_code(first).into());
                    }
                }
            }
        })?;
    Ok(())
}

/// The signal that asked the run to stop, if one did.
pub fn requested() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

/// 128 + `sig`: 130 for SIGINT, 143 for SIGTERM.
pub fn exit_code(sig: i32) -> u8 {
    u8::try_from(128 + sig).unwrap_or(1)
}

/// `SIGINT`, `SIGTERM`, or the number.
pub fn name(sig: i32) -> String {
    match sig {
        SIGINT => "SIGINT".into(),
        SIGTERM => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}

/// Kills (SIGKILL) every process whose parent is this one: the nodes of a local cluster.
fn kill_children() {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so split after
        // its last `)`.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(me) {
            // SAFETY: kill(2) with a pid and a signal number has no memory-safety
            // preconditions; a pid that exited meanwhile gives ESRCH, which is ignored.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}
