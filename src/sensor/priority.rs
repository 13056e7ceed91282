//! The store thread's CPU priority (`[store] idle_priority`): idle (Linux `SCHED_IDLE`) while
//! it is ahead of the stages, normal while a window waits for it.
//!
//! Under a burst the stages and the process sending (a resolver, `fstrm_replay`) keep the
//! cores busy; a store thread of the same priority takes its turns on them, and the sender
//! waits. At idle priority it writes in the CPU time they leave, and it lowers nothing that
//! matters for counts: windows are written in order, and as soon as the stages have a window
//! for it while it is still writing the last one (they would wait), it is raised to normal
//! priority until it takes that window. On a host whose cores other work keeps busy it
//! writes little until it is raised, so the stages wait for most of each write instead of
//! filling the next window beside it: less overlap, the same counts.
//!
//! A thread may lower itself to `SCHED_IDLE`, but raising it back needs `CAP_SYS_NICE` or an
//! `RLIMIT_NICE` of at least 20 (nice 0): without them a lowered thread could never be raised,
//! so the sensor probes this once, on a thread of its own, and stays at normal priority when
//! it cannot (logged).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::SeqCst};

/// The store thread's priority, shared by the thread and the stages. Lock-free: the stages
/// never wait on the store thread to raise it. Windows are numbered from 1 as they are
/// handed over.
#[derive(Debug)]
pub(crate) struct StorePriority {
    /// Lowering is configured and possible.
    enabled: bool,
    /// The store thread's id while it runs, registered at normal priority (0: never lowered).
    tid: AtomicI32,
    /// The highest window that had to wait for the store thread (0: none).
    wanted: AtomicU64,
    /// The last window the store thread took.
    taken: AtomicU64,
    /// Closing: normal priority from here on.
    closing: AtomicBool,
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
        Self {
            enabled,
            tid: AtomicI32::new(0),
            wanted: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            closing: AtomicBool::new(false),
        }
    }

    /// Called once on the store thread as it starts. A thread that starts with another policy
    /// than the normal one (the process's, set by `chrt` or systemd's `CPUSchedulingPolicy=`)
    /// is left with it.
    pub(crate) fn register(&self) {
        if self.enabled && policy(0) == libc::SCHED_OTHER {
            self.tid.store(gettid(), SeqCst);
        }
    }

    /// Called on the store thread as it ends: its id is not raised any more.
    pub(crate) fn unregister(&self) {
        self.tid.store(0, SeqCst);
    }

    /// Called on the store thread as it takes window `seq`: ahead, unless a later window
    /// waits already.
    pub(crate) fn took(&self, seq: u64) {
        self.taken.store(seq, SeqCst);
        self.lower();
    }

    /// Called on the store thread when it works with nothing waiting for it: idle priority,
    /// unless a window waits (or the sensor is closing).
    pub(crate) fn lower(&self) {
        let tid = self.tid.load(SeqCst);
        if tid == 0 || self.waited_for() {
            return;
        }
        set_policy(tid, libc::SCHED_IDLE);
        // A raise between the check and the change may have come before it: undo it.
        if self.waited_for() {
            set_policy(tid, libc::SCHED_OTHER);
        }
    }

    fn waited_for(&self) -> bool {
        self.closing.load(SeqCst) || self.wanted.load(SeqCst) > self.taken.load(SeqCst)
    }

    /// Called by the stages when window `seq` is about to wait for the store thread: normal
    /// priority until it takes it.
    pub(crate) fn raise(&self, seq: u64) {
        self.wanted.fetch_max(seq, SeqCst);
        self.set_normal();
    }

    /// Called when closing, before the last window is handed over: normal priority from here on.
    pub(crate) fn raise_for_good(&self) {
        self.closing.store(true, SeqCst);
        self.set_normal();
    }

    fn set_normal(&self) {
        let tid = self.tid.load(SeqCst);
        if tid != 0 {
            set_policy(tid, libc::SCHED_OTHER);
        }
    }
}

fn gettid() -> libc::pid_t {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// The scheduling policy of thread `tid` (0: the calling thread).
fn policy(tid: libc::pid_t) -> libc::c_int {
    // SAFETY: no preconditions; an unknown thread gives -1.
    unsafe { libc::sched_getscheduler(tid) }
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
    use std::sync::Arc;
    use std::sync::mpsc::{Receiver, Sender, channel};

    use super::*;

    type Step = Box<dyn FnOnce(&StorePriority) + Send>;

    /// A thread standing in for the store thread: runs each step sent to it on `p`.
    fn store_thread(p: Arc<StorePriority>) -> (libc::pid_t, Sender<Step>, Receiver<()>) {
        let (to_thread, steps) = channel::<Step>();
        let (to_test, done) = channel();
        let (tid_tx, tid_rx) = channel();
        std::thread::spawn(move || {
            tid_tx.send(gettid()).unwrap();
            while let Ok(step) = steps.recv() {
                step(&p);
                to_test.send(()).unwrap();
            }
        });
        (tid_rx.recv().unwrap(), to_thread, done)
    }

    /// Idle while ahead; normal from a raise until the window that waited is taken, whatever
    /// the thread does meanwhile (taking an earlier window included); normal for good once
    /// closing; never lowered without the setting, where it could not be raised back, or
    /// when it starts with another policy.
    #[test]
    fn the_store_thread_is_idle_only_while_nothing_waits_for_it() {
        let raisable = can_raise();
        for configured in [true, false] {
            let p = Arc::new(StorePriority::new(configured));
            let (tid, steps, done) = store_thread(p.clone());
            let on_thread = |step: Step| {
                steps.send(step).unwrap();
                done.recv().unwrap();
            };
            let idle = if configured && raisable { libc::SCHED_IDLE } else { libc::SCHED_OTHER };
            on_thread(Box::new(|p| p.register()));
            assert_eq!(policy(tid), libc::SCHED_OTHER, "normal until it is ahead");
            on_thread(Box::new(|p| p.took(1)));
            assert_eq!(policy(tid), idle);
            p.raise(2);
            assert_eq!(policy(tid), libc::SCHED_OTHER, "raised while window 2 waits");
            on_thread(Box::new(|p| p.lower()));
            assert_eq!(policy(tid), libc::SCHED_OTHER, "still waited for: not lowered");
            // Window 3 waits before the thread has run past taking window 2.
            p.raise(3);
            on_thread(Box::new(|p| p.took(2)));
            assert_eq!(policy(tid), libc::SCHED_OTHER, "window 3 still waits");
            on_thread(Box::new(|p| p.took(3)));
            assert_eq!(policy(tid), idle, "the windows taken: idle again");
            p.raise_for_good();
            assert_eq!(policy(tid), libc::SCHED_OTHER);
            on_thread(Box::new(|p| p.took(4)));
            on_thread(Box::new(|p| p.lower()));
            assert_eq!(policy(tid), libc::SCHED_OTHER, "closing: never lowered again");
        }
        // A thread that starts at another policy keeps it.
        if raisable {
            let p = Arc::new(StorePriority::new(true));
            let (tid, steps, done) = store_thread(p.clone());
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: a valid sched_param for the call.
            assert_eq!(unsafe { libc::sched_setscheduler(tid, libc::SCHED_BATCH, &param) }, 0);
            let run: [Step; 3] = [Box::new(|p| p.register()), Box::new(|p| p.took(1)), Box::new(|p| p.lower())];
            for step in run {
                steps.send(step).unwrap();
                done.recv().unwrap();
            }
            p.raise(2);
            assert_eq!(policy(tid), libc::SCHED_BATCH);
        }
    }
}
