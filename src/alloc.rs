//! The global allocator: the system's (glibc) by default; mimalloc, tuned to give memory
//! back promptly, with `--features mimalloc`.
//!
//! sled copies a leaf node on every write and hickory builds owned messages, names and
//! records per DNS message, so every stage of dnsledger allocates and frees at a high rate.
//! glibc's malloc spent about 30% of the sensor's store thread in `_int_malloc`,
//! `malloc_consolidate` and `unlink_chunk` (perf); with mimalloc the same workload runs
//! 1.5-1.7x as fast (docs/BENCHMARKS.md, "Sensor"). mimalloc's defaults keep freed memory
//! for a while and commit its arenas eagerly, which cost the sensor 40-80 MiB of peak RSS
//! against glibc; [`configure`] turns both off (161 MiB against glibc's 151-188 on 200,000
//! names), but at 1M RRsets it still peaks at 283 MiB against glibc's 246, past the
//! sensor's memory goal: hence a feature, off by default.
//!
//! For the sensor, [`sensor_heap`] fixes glibc's size from which an allocation gets a mapping
//! of its own at 128 KiB (`M_MMAP_THRESHOLD`). glibc starts there but raises it to the size of each
//! mapped block freed, up to 32 MiB, and from then on serves blocks of a few hundred KiB
//! (sled's nodes hold the store's 16 KiB blocks, several to a node) from its heap, where
//! the small allocations living between them keep the freed space from going back: the
//! sensor peaked at 244-261 MiB at 1M RRsets, and at 175-184 MiB with the threshold fixed
//! (docs/BENCHMARKS.md, thirteenth session), for about 6% more CPU. Not for the other
//! roles: the collector's merges took 20% more CPU with it.

/// mimalloc for every binary that links this crate (the CLI, examples, tests).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "mimalloc")]
/// `mi_option_arena_eager_commit` in mimalloc v3's `mi_option_e` (mimalloc.h); default 2.
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
#[cfg(feature = "mimalloc")]
/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (mimalloc.h); default 1000 (ms, options.c).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// glibc: allocations from this size up get their own mapping, given back when freed.
#[cfg(all(not(feature = "mimalloc"), target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 << 10;

/// glibc (the default build): the mapping threshold fixed at 128 KiB, for the sensor's
/// process (its memory bound). Call before the sensor starts; glibc's `MALLOC_MMAP_THRESHOLD_`
/// in the environment is left as it is. Nothing with mimalloc.
pub fn sensor_heap() {
    #[cfg(all(not(feature = "mimalloc"), target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt sets one of malloc's parameters under malloc's own lock; valid at
        // any time. M_MMAP_THRESHOLD takes a size up to 32 MiB on 64-bit glibc.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    }
}

/// mimalloc: freed memory goes back to the system at once, arenas are committed as used.
/// Call once, first thing in `main`. An environment setting (`MIMALLOC_PURGE_DELAY`,
/// `MIMALLOC_ARENA_EAGER_COMMIT`) is left as it is.
pub fn configure() {
    #[cfg(feature = "mimalloc")]
    for (option, env) in [(PURGE_DELAY, "MIMALLOC_PURGE_DELAY"), (ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT")] {
        if std::env::var_os(env).is_none() {
            // SAFETY: mi_option_set stores a value in mimalloc's option table, which
            // mimalloc reads as it goes; valid at any time. Both numbers are options of the
            // mimalloc built (checked by the test below).
            unsafe { libmimalloc_sys::mi_option_set(option, 0) }
        }
    }
}

#[cfg(all(test, feature = "mimalloc"))]
mod tests {
    use super::*;

    /// The option numbers are those of the mimalloc built: their defaults (1000 ms
    /// and 2) read back before [`configure`], and its values after.
    #[test]
    fn options_are_the_ones_meant() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
            || std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_some()
        {
            return;
        }
        // SAFETY: reads of mimalloc's option table.
        let get = |o| unsafe { libmimalloc_sys::mi_option_get(o) };
        assert_eq!((get(PURGE_DELAY), get(ARENA_EAGER_COMMIT)), (1000, 2));
        configure();
        assert_eq!((get(PURGE_DELAY), get(ARENA_EAGER_COMMIT)), (0, 0));
    }
}

#[cfg(all(test, not(feature = "mimalloc"), target_os = "linux", target_env = "gnu"))]
mod glibc_tests {
    use super::*;

    /// Whether glibc gave the block at `p` a mapping of its own: bit 1 (`IS_MMAPPED`) of the
    /// size word in front of it (malloc.c's chunk layout). Read per block, not from malloc's
    /// process-wide statistics, which the tests running beside this one change.
    fn mapped(p: *const u8) -> bool {
        // SAFETY: `p` is a live block from glibc's malloc (the global allocator of this
        // build); the word before it is its chunk's size field, part of the same chunk.
        unsafe { *(p as *const usize).sub(1) & 2 != 0 }
    }

    /// After a large mapped block is freed (which raises glibc's own threshold to its size),
    /// a 256 KiB allocation still gets a mapping of its own; a small one does not.
    #[test]
    fn blocks_of_a_few_hundred_kib_stay_mapped() {
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
            return;
        }
        sensor_heap();
        drop(std::hint::black_box(vec![1u8; 4 << 20]));
        let block = std::hint::black_box(vec![1u8; 256 << 10]);
        let small = std::hint::black_box(vec![1u8; 4 << 10]);
        assert!(mapped(block.as_ptr()), "a 256 KiB block from the heap");
        assert!(!mapped(small.as_ptr()));
    }
}
