//! The signals that stop a run or an `up`: SIGINT (Ctrl-C), SIGTERM (a CI
//! timeout or cancel), SIGHUP (the terminal closed).

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Listens for SIGINT, SIGTERM and SIGHUP from creation on.
pub(crate) struct Signals {
    int: Option<Signal>,
    term: Option<Signal>,
    hup: Option<Signal>,
}

impl Signals {
    /// Installs the handlers; one that cannot be installed is never received.
    pub(crate) fn new() -> Self {
        Signals {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
        }
    }

    /// The next of the three to arrive, as its number.
    pub(crate) async fn recv(&mut self) -> i32 {
        async fn one(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = one(&mut self.int) => libc::SIGINT,
            _ = one(&mut self.term) => libc::SIGTERM,
            _ = one(&mut self.hup) => libc::SIGHUP,
        }
    }
}
