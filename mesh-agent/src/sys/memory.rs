//! Giving freed heap back to the kernel.
//!
//! After a burst of connections the allocator keeps the freed memory in its arenas, so the
//! process stays at its peak size although nothing uses it (measured: 33 MiB after a burst
//! of 10,000 connections against 8.6 MiB idle; one trim brought it to 7.3 MiB).

/// Returns free heap memory at the top of each arena and unused whole pages to the kernel.
pub fn trim() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
