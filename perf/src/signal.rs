//! Ctrl-C: the first SIGINT asks the run to stop, as in `spdk_nvme_perf`; the main
//! thread sees it on its next tick, stops the workers, and the results measured so
//! far are printed and written. The handler is installed with `SA_RESETHAND`, so a
//! second Ctrl-C kills the process the usual way (a target that hangs the drain
//! cannot trap the user).
//!
//! The handler only stores to an atomic, which is async-signal-safe; everything
//! else happens on the main thread.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the SIGINT handler (once per Ctrl-C: the next SIGINT is fatal again).
pub fn install() -> std::io::Result<()> {
    // SAFETY: `sigaction` is a plain C struct for which all-zero bytes are a valid
    // value; every field the kernel reads is set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t;
    action.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
    // SAFETY: `sa_mask` is a valid, exclusively borrowed sigset_t.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: the action points at a handler that only touches an atomic (async-signal
    // -safe) and lives for the whole program; the old action is not wanted (null).
    let rc = unsafe { libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a SIGINT arrived since the handler was installed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigint_sets_the_flag_and_the_next_one_is_default_again() {
        install().expect("sigaction");
        assert!(!interrupted());
        // SAFETY: raising a signal whose handler was just installed.
        assert_eq!(unsafe { libc::raise(libc::SIGINT) }, 0);
        assert!(interrupted(), "the handler ran before raise returned");
        let mut old: libc::sigaction = {
            // SAFETY: all-zero bytes are a valid sigaction, overwritten by the call.
            unsafe { std::mem::zeroed() }
        };
        // SAFETY: reading the current action into a valid struct.
        assert_eq!(unsafe { libc::sigaction(libc::SIGINT, std::ptr::null(), &mut old) }, 0);
        assert_eq!(old.sa_sigaction, libc::SIG_DFL, "SA_RESETHAND restored the default action");
    }
}
