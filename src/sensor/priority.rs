//! The store thread's CPU priority (`[store] idle_priority`): idle (Linux `SCHED_IDLE`) while
//! it is ahead of the stages, normal while a window waits for it.
//!
//! Under a burst the stages and the process sending (a resolver, `fstrm_replay`) keep the
//! cores busy; a store thread of the same priority takes its turns on them, and the sender
//! waits. At idle priority it writes in the CPU time they leave, and it lowers nothing that
//! matters for counts: windows are written in order, and as soon as the stages have a window
//! for it while it is still writing the last one (they would wait), it is raised to normal
//! priority until it takes that window. On a host too busy to leave it any CPU it therefore
//! writes as it did at normal priority, with the stages waiting for it instead of running
//! beside it.
//!
//! A thread may lower itself to `SCHED_IDLE`, but raising it back needs `CAP_SYS_NICE` or an
//! `RLIMIT_NICE` of at least 20 (nice 0): without them a lowered thread could never be raised,
//! so the sensor probes this once, on a thread of its own, and stays at normal priority when
//! it cannot (logged).

use std::sync::{Mutex, OnceLock};

/// The store thread's priority, shared by the thread and the stages.
#[derive(Debug)]
pub(crate) struct StorePriority {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Lowering is configured and possible.
    enabled: bool,
    /// The store thread's id, once it has registered.
    tid: Option<libc::pid_t>,
    idle: bool,
    /// Closing: normal priority from here on.
    for_good: bool,
}

impl StorePriority {
    /// With `idle`, the store thread is lowered whenever it is ahead (if the process may raise
    /// it back).
    pub(crate) fn new(idle: bool) -> Self {
        let enabled = idle && can_raise();
        if enabled {
            tracing::info!("the store thread runs at idle CPU priority while it is ahead");
        } else if idle {
            tracing::warn!(
                "the store thread stays at normal CPU priority: raising a thread back from idle \
                 needs CAP_SYS_NICE or RLIMIT_NICE of at least 20 (docs/OPERATIONS.md)"
            );
        }
        Self { state: Mutex::new(State { enabled, tid: None, idle: false, for_good: false }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called on the store thread when nothing waits for it (before it takes the next
    /// window): idle priority.
    pub(crate) fn lower(&self) {
        let mut s = self.lock();
        if !s.enabled || s.for_good || s.idle {
            return;
        }
        // SAFETY: gettid has no preconditions.
        let tid = *s.tid.get_or_insert_with(|| unsafe { libc::gettid() });
        if set_policy(tid, libc::SCHED_IDLE) {
            s.idle = true;
        }
    }

    /// Called by the stages when a window is about to wait for the store thread, and when
    /// closing (`for_good`: it stays at normal priority).
    pub(crate) fn raise(&self, for_good: bool) {
        let mut s = self.lock();
        s.for_good |= for_good;
        if let (true, Some(tid)) = (s.idle, s.tid)
            && set_policy(tid, libc::SCHED_OTHER)
        {
            s.idle = false;
        }
    }
}

/// Sets the scheduling policy of thread `tid` (priority 0, as the non-real-time policies take).
fn set_policy(tid: libc::pid_t, policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the duration of the call.
    let ok = unsafe { libc::sched_setscheduler(tid, policy, &param) } == 0;
    if !ok {
        tracing::debug!(tid, policy, error = %std::io::Error::last_os_error(), "sched_setscheduler failed");
    }
    ok
}

/// Whether a thread of this process lowered to `SCHED_IDLE` can be raised back: tried once,
/// on a thread that ends right after.
fn can_raise() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(|| {
        std::thread::spawn(|| set_policy(0, libc::SCHED_IDLE) && set_policy(0, libc::SCHED_OTHER))
            .join()
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(tid: libc::pid_t) -> libc::c_int {
        // SAFETY: no preconditions.
        unsafe { libc::sched_getscheduler(tid) }
    }

    /// The thread is idle after `lower`, normal after `raise`, and normal for good once
    /// closing; without the setting (or where it cannot be raised back) always normal.
    #[test]
    fn the_store_thread_is_idle_only_while_nothing_waits_for_it() {
        for configured in [true, false] {
            let p = std::sync::Arc::new(StorePriority::new(configured));
            let lowers = configured && can_raise();
            assert_eq!(p.lock().enabled, lowers);
            let (to_thread, steps) = std::sync::mpsc::channel::<()>();
            let (to_test, tids) = std::sync::mpsc::channel();
            let thread = {
                let p = p.clone();
                std::thread::spawn(move || {
                    // SAFETY: no preconditions.
                    to_test.send(unsafe { libc::gettid() }).unwrap();
                    while steps.recv().is_ok() {
                        p.lower();
                        to_test.send(0).unwrap();
                    }
                })
            };
            let tid = tids.recv().unwrap();
            let lower = || {
                to_thread.send(()).unwrap();
                tids.recv().unwrap();
            };
            let idle_if_lowered = if lowers { libc::SCHED_IDLE } else { libc::SCHED_OTHER };
            assert_eq!(policy(tid), libc::SCHED_OTHER);
            lower();
            assert_eq!(policy(tid), idle_if_lowered);
            lower();
            assert_eq!(policy(tid), idle_if_lowered);
            p.raise(false);
            assert_eq!(policy(tid), libc::SCHED_OTHER);
            lower();
            assert_eq!(policy(tid), idle_if_lowered);
            p.raise(true);
            assert_eq!(policy(tid), libc::SCHED_OTHER);
            lower();
            assert_eq!(policy(tid), libc::SCHED_OTHER, "closing: never lowered again");
            drop(to_thread);
            thread.join().unwrap();
        }
    }
}
