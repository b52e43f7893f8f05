//! Heap bytes in use, as glibc's allocator counts them (`mallinfo2`), for the benchmarks'
//! memory per object. Read on demand: nothing is added to any allocation.

/// Bytes in use right now: small chunks from the arenas plus large mmapped ones.
pub fn in_use() -> u64 {
    // SAFETY: mallinfo2 takes no arguments and only reads the allocator's statistics.
    let m = unsafe { libc::mallinfo2() };
    (m.uordblks + m.hblkhd) as u64
}
