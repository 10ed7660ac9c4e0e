//! The memory allocator of smsmesh's processes: mimalloc, and the one call
//! that hands back to the OS what a burst of work allocated and freed.
//!
//! glibc's malloc and free were a fifth of the coordinator's CPU under
//! many one-message submits (BENCHMARKS.md, "Issue 16: the allocator").
//! mimalloc returns freed pages to the OS only after a delay, from the
//! thread that owns them, when that thread allocates again: a thread that
//! did a large job and then idles (loading a store) would keep them.
//! [`release_freed`] is for the end of such a job. mimalloc is built
//! without transparent huge pages (`no_thp`): with them, first touches
//! zeroed 2 MiB at a time, and the 14M-message scenario was 8% slower
//! and a quarter bigger.

/// The allocator a binary names as its `#[global_allocator]`.
pub use mimalloc::MiMalloc;

/// Hands back to the OS the memory the calling thread's heap has freed and
/// still holds, at once. Harmless (and of no effect) in a process whose
/// global allocator is not [`MiMalloc`].
pub fn release_freed() {
    // SAFETY: `mi_collect` takes no pointer and touches only mimalloc's own
    // heaps, which it is always safe to collect from their owning thread.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true)
    };
}
