//! Hands memory freed after a burst back to the system.
//!
//! glibc's malloc keeps what the process frees in its arenas (one per worker thread) and
//! gives back only the free top of each heap. After a burst, the freed blocks lie between
//! ones still in use and stay resident: 8,000 connections that each sent half a head
//! (~160 MiB) left RSS at 164 MiB once all had closed, and three more such bursts took it
//! to 260 MiB, where it stayed. A sidecar's memory graph then never comes down, and its
//! limit counts those pages. `malloc_trim` releases the free pages inside the heaps too
//! (that process went to 7.6 MiB).
//!
//! No maintained crate wraps the two glibc calls; switching allocators (jemalloc returns
//! memory by itself) was measured and dropped (`benches/PERFORMANCE.md`): no CPU gained,
//! more RSS, and a C build. So the calls are made here, behind `cfg(target_env = "gnu")`;
//! elsewhere (musl) this does nothing.

use std::time::Instant;

/// Free memory kept resident without trimming: under it a trim is not worth its walk over
/// the heaps (an idle hookgate holds ~6 MiB that is not heap at all: code, stacks).
const KEPT_FREE: u64 = 16 * 1024 * 1024;

/// `heap_in_use` is exact below this; a process at least this big is not trimmed (only a
/// `max_buffered_bytes` of gigabytes makes one).
const TRUSTED_UP_TO: u64 = 4 << 30;

/// How a trim went, for the log line.
#[derive(Debug)]
pub struct Trimmed {
    pub resident_before: u64,
    pub resident_after: u64,
    pub micros: u128,
}

/// Whether memory resident but not in use by the heap is worth handing back: more than
/// `KEPT_FREE` of it, and more than what is in use (a busy process reuses its free blocks
/// for the next requests). And, after a trim that could not bring it under that, only once
/// the process has grown by `KEPT_FREE` past what that trim left (`bar`): free blocks that
/// hold no whole page cannot be handed back, and trimming them every tick would walk the
/// heaps for nothing.
fn worth_trimming(resident: u64, in_use: u64, bar: u64) -> bool {
    let free = resident.saturating_sub(in_use);
    free > KEPT_FREE && free > in_use && resident > bar.saturating_add(KEPT_FREE)
}

/// Trims the heaps after a burst; kept by the housekeeping task across its ticks.
#[derive(Debug, Default)]
pub struct Trimmer {
    /// What the last trim left, when it was still worth trimming (else 0).
    bar: u64,
}

impl Trimmer {
    /// Trims the heaps when `worth_trimming` says so. Called every housekeeping tick (10
    /// s), on the control thread: it reads `/proc/self/stat`, the heaps' totals only above
    /// 16 MiB of RSS, and trims only after a burst, so a steady process never pays for more
    /// than the check.
    /// A trim locks each worker's heap in turn while it walks it (21–31 ms for 250 MiB of
    /// 8,000 connections' blocks).
    pub fn tick(&mut self) -> Option<Trimmed> {
        let resident_before = resident_bytes().filter(|r| *r < TRUSTED_UP_TO)?;
        // `worth_trimming` cannot say yes below this, and the heaps' totals are a walk over
        // their free lists under each heap's lock: an idle hookgate never takes it.
        if resident_before <= self.bar.saturating_add(KEPT_FREE) {
            return None;
        }
        if !worth_trimming(resident_before, heap_in_use()?, self.bar) {
            return None;
        }
        let started = Instant::now();
        trim();
        let micros = started.elapsed().as_micros();
        let resident_after = resident_bytes().unwrap_or(resident_before);
        // A trim that left little free sets no bar: one taken while a burst was still
        // closing is followed by another once the rest has gone.
        let fruitless =
            heap_in_use().is_some_and(|in_use| worth_trimming(resident_after, in_use, 0));
        self.bar = if fruitless { resident_after } else { 0 };
        Some(Trimmed {
            resident_before,
            resident_after,
            micros,
        })
    }
}

/// The process's resident set in bytes.
#[cfg(target_os = "linux")]
fn resident_bytes() -> Option<u64> {
    use procfs::WithCurrentSystemInfo;
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    Some(stat.rss_bytes().get())
}

#[cfg(not(target_os = "linux"))]
fn resident_bytes() -> Option<u64> {
    None
}

/// Bytes the heaps hand out now: blocks in use in the arenas and blocks mapped on their own.
///
/// `mallinfo`, not `mallinfo2`: the latter came with glibc 2.33 and would keep hookgate from
/// linking on older ones (RHEL 8 has 2.28). `mallinfo`'s fields are C `int`s that glibc
/// fills from `size_t`s, so each is read back as unsigned: exact below 4 GiB, which is why
/// `Trimmer::tick` leaves a process that big alone.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn heap_in_use() -> Option<u64> {
    // SAFETY: mallinfo takes nothing and returns a struct by value.
    let info = unsafe { libc::mallinfo() };
    let unsigned = |field: libc::c_int| u64::from(field as u32);
    Some(unsigned(info.uordblks).saturating_add(unsigned(info.hblkhd)))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap_in_use() -> Option<u64> {
    None
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes a size and touches only the allocator's own state, under
    // its own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn only_much_free_memory_is_worth_trimming() {
        // Idle: code and stacks, a little heap.
        assert!(!worth_trimming(8 * MIB, 2 * MIB, 0));
        // Busy: much in use, its free blocks reused by the next requests.
        assert!(!worth_trimming(260 * MIB, 160 * MIB, 0));
        // After a burst: the connections gone, their pages still resident.
        assert!(worth_trimming(260 * MIB, 3 * MIB, 0));
        // The bounds are strict.
        assert!(!worth_trimming(KEPT_FREE + MIB, MIB, 0));
        assert!(worth_trimming(KEPT_FREE + MIB + 1, MIB, 0));
        assert!(!worth_trimming(80 * MIB, 40 * MIB, 0));
        assert!(worth_trimming(80 * MIB + 1, 40 * MIB, 0));
        // In use above resident (mapped but not touched): nothing free.
        assert!(!worth_trimming(MIB, 2 * MIB, 0));
    }

    #[test]
    fn a_trim_that_gave_little_back_is_not_repeated_until_the_process_grows() {
        // The last trim left 60 MiB of which only 5 is in use: blocks that hold no whole
        // page. Not again at the next tick…
        assert!(!worth_trimming(60 * MIB, 5 * MIB, 60 * MIB));
        assert!(!worth_trimming(60 * MIB + KEPT_FREE, 5 * MIB, 60 * MIB));
        // …but once another burst has come and gone.
        assert!(worth_trimming(60 * MIB + KEPT_FREE + 1, 5 * MIB, 60 * MIB));
        // No bar (the last trim left little free): the rest of a burst that was still
        // closing at that trim.
        assert!(worth_trimming(32 * MIB, 3 * MIB, 0));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_heap_in_use_counts_an_allocation() {
        let before = heap_in_use().expect("mallinfo");
        // Touched, so that it is surely allocated (and large: glibc maps it on its own).
        let held = vec![1u8; 64 * MIB as usize];
        let during = heap_in_use().expect("mallinfo");
        assert_eq!(held.iter().map(|b| u64::from(*b)).sum::<u64>(), 64 * MIB);
        drop(held);
        // Other tests allocate meanwhile: a margin both ways.
        assert!(
            during >= before + 48 * MIB && during < before + 128 * MIB,
            "{before} -> {during}"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_resident_set_is_read() {
        let rss = resident_bytes().expect("rss in /proc/self/stat");
        // A test binary holds at least its code, and not gigabytes.
        assert!(rss > MIB && rss < 4096 * MIB, "{rss}");
    }
}
