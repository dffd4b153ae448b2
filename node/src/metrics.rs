//! Host figures sampled for the peer: load, free memory, free disk.

use std::path::Path;
use std::time::Duration;

use atoll_proto::api::HostMetrics;

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

#[cfg(test)]
mod tests {
    #[test]
    fn samples_this_host() {
        let m = super::sample(std::path::Path::new("/"), 1);
        assert!(m.free_memory_mib > 0 && m.free_disk_mib > 0, "{m:?}");
        let (total, free) = super::disk_mib(std::path::Path::new("/"));
        assert!(total >= free && free > 0);
    }
}
