//! Ctrl-C for long runs (conform, model-check): the first stops new trials or steps from starting
//! (the run then prints what completed, writes nothing and exits 130); a second exits at once,
//! except while results are being written, which is never cut in the middle.

use fusegate_harness::cancel::Cancel;
use std::sync::atomic::{AtomicBool, Ordering};

/// The exit code of a run stopped by Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

static CANCEL: Cancel = Cancel::new();
static WRITING: AtomicBool = AtomicBool::new(false);

/// Installs the handler and returns the flag runs check. A failure to install is reported and
/// leaves Ctrl-C as it was (the run still works; only its interruption is abrupt).
pub fn install() -> &'static Cancel {
    let handler = || {
        if CANCEL.request() && !WRITING.load(Ordering::SeqCst) {
            std::process::exit(EXIT_INTERRUPTED.into());
        }
        if !WRITING.load(Ordering::SeqCst) {
            eprintln!("interrupt: finishing the trials that are running (Ctrl-C again to quit now)");
        }
    };
    if let Err(e) = ctrlc::set_handler(handler) {
        eprintln!("note: Ctrl-C handler not installed ({e}): an interruption loses the run");
    }
    &CANCEL
}

/// Runs `write` with Ctrl-C deferred: neither a first nor a second one stops it midway.
pub fn uninterrupted<T>(write: impl FnOnce() -> T) -> T {
    WRITING.store(true, Ordering::SeqCst);
    let out = write();
    WRITING.store(false, Ordering::SeqCst);
    out
}
