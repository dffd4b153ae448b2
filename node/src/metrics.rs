//! Host figures sampled for the peer (load, free memory, free disk) and the
//! daemon's own memory.

use std::path::Path;
use std::time::Duration;

use atoll_proto::api::{HostMetrics, ProcessMemory};

pub const EVERY: Duration = Duration::from_secs(5);

/// (total, free) MiB of the file system holding `dir`.
pub fn disk_mib(dir: &Path) -> (i64, i64) {
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return (0, 0) };
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return (0, 0);
    }
    let unit = st.f_frsize as u128;
    let mib = |blocks: u128| ((blocks * unit) >> 20) as i64;
    (mib(st.f_blocks as u128), mib(st.f_bavail as u128))
}

fn meminfo_mib(field: &str) -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<i64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

pub fn sample(data_dir: &Path, now: u64) -> HostMetrics {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    HostMetrics {
        at: now,
        load,
        free_memory_mib: meminfo_mib("MemAvailable:"),
        free_disk_mib: disk_mib(data_dir).1,
    }
}

/// This process's memory: `/proc/self/status` and the C allocator's figures.
pub fn process_memory() -> ProcessMemory {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (heap_in_use_kib, heap_free_kib) = heap_kib();
    ProcessMemory {
        rss_kib: kib("VmRSS:"),
        anonymous_kib: kib("RssAnon:"),
        file_kib: kib("RssFile:"),
        heap_in_use_kib,
        heap_free_kib,
    }
}

/// (in use, freed but kept) by glibc's allocator, all arenas.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap_kib() -> (u64, u64) {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let m = unsafe { libc::mallinfo2() };
    (((m.uordblks + m.hblkhd) >> 10) as u64, (m.fordblks >> 10) as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap_kib() -> (u64, u64) {
    (0, 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_this_host() {
        let m = super::sample(std::path::Path::new("/"), 1);
        assert!(m.free_memory_mib > 0 && m.free_disk_mib > 0, "{m:?}");
        let (total, free) = super::disk_mib(std::path::Path::new("/"));
        assert!(total >= free && free > 0);
    }

    #[test]
    fn counts_this_process() {
        let held = vec![0u8; 4 << 20];
        let m = super::process_memory();
        assert!(m.rss_kib > 0 && m.rss_kib >= m.anonymous_kib && m.rss_kib >= m.file_kib, "{m:?}");
        assert!(m.heap_in_use_kib >= 4 << 10, "{m:?}");
        drop(held);
    }
}
