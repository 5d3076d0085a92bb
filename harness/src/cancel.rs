//! Stopping a long run between steps: a flag a front end raises (on Ctrl-C) and a runner checks
//! before each trial or step. Nothing already started is cut short, and a stopped run says so in
//! its type, so that no caller writes it as if it were whole.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the run should stop starting new work.
#[derive(Debug, Default)]
pub struct Cancel(AtomicBool);

impl Cancel {
    pub const fn new() -> Cancel {
        Cancel(AtomicBool::new(false))
    }

    /// Asks the run to stop; true when it had already been asked.
    pub fn request(&self) -> bool {
        self.0.swap(true, Ordering::SeqCst)
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// How a cancellable run ended.
#[derive(Debug)]
pub enum Ran<T> {
    /// Every planned step ran.
    Complete(T),
    /// Stopped between steps: `partial` holds the `ran` steps that finished, of `planned`.
    Interrupted { partial: T, ran: usize, planned: usize },
}

impl<T> Ran<T> {
    /// What ran, whole or not (to print; only a complete run may be written).
    pub fn result(&self) -> &T {
        match self {
            Ran::Complete(t) | Ran::Interrupted { partial: t, .. } => t,
        }
    }

    /// The line a front end prints for a stopped run; `None` for a complete one.
    pub fn interrupted_line(&self, what: &str) -> Option<String> {
        match self {
            Ran::Complete(_) => None,
            Ran::Interrupted { ran, planned, .. } => {
                Some(format!("interrupted: {ran} of {planned} {what} ran; nothing was written"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_seen_and_a_second_one_knows_it_is_the_second() {
        let c = Cancel::new();
        assert!(!c.requested());
        assert!(!c.request());
        assert!(c.requested());
        assert!(c.request());
    }

    #[test]
    fn only_an_interrupted_run_has_an_interrupted_line() {
        assert_eq!(Ran::Complete(()).interrupted_line("trials"), None);
        let stopped = Ran::Interrupted { partial: (), ran: 3, planned: 159 };
        assert_eq!(
            stopped.interrupted_line("trials").as_deref(),
            Some("interrupted: 3 of 159 trials ran; nothing was written")
        );
    }
}
