//! What a process and its descendants use, read from `/proc`: CPU time
//! (user and system, their own and that of the children they reaped) and
//! resident memory. The process driver measures its instances this way,
//! sandboxed or not (`GET /metrics`, `atoll_instance_*`).

use std::collections::HashMap;

use super::Usage;

/// One process as `/proc/PID/stat` tells: its parent and its CPU ticks.
struct Stat {
    ppid: i32,
    ticks: u64,
}

/// Fields after the command name (which may hold spaces and parentheses).
fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok());
    let ticks = [n(11)?, n(12)?, n(13)?, n(14)?].iter().map(|t| t.max(&0).unsigned_abs()).sum();
    Some(Stat { ppid: n(1)? as i32, ticks })
}

fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    kib * 1024
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The usage of each `(key, root pid)`: the root and every descendant, from
/// one pass over `/proc`. A root that is gone is left out.
pub fn usage(roots: &[(String, i32)]) -> Vec<Usage> {
    if roots.is_empty() {
        return Vec::new();
    }
    let mut procs: HashMap<i32, Stat> = HashMap::new();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if let Some(s) = stat(pid) {
            children.entry(s.ppid).or_default().push(pid);
            procs.insert(pid, s);
        }
    }
    let hz = ticks_per_second();
    roots
        .iter()
        .filter(|(_, root)| procs.contains_key(root))
        .map(|(key, root)| {
            let (mut ticks, mut rss, mut todo) = (0u64, 0u64, vec![*root]);
            // A bounded walk: /proc is a tree, but a pid reused mid-scan could loop.
            let mut seen = 0usize;
            while let Some(pid) = todo.pop() {
                seen += 1;
                if seen > procs.len() {
                    break;
                }
                if let Some(s) = procs.get(&pid) {
                    ticks += s.ticks;
                    rss += rss_bytes(pid);
                }
                todo.extend(children.get(&pid).into_iter().flatten().copied());
            }
            Usage { key: key.clone(), cpu_seconds: ticks as f64 / hz, memory_bytes: rss }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test's own process: some CPU time, some memory; a dead pid: nothing.
    #[test]
    fn a_live_tree_is_measured_and_a_gone_one_left_out() {
        let me = std::process::id() as i32;
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        let got = usage(&[("me".into(), me), ("gone".into(), i32::MAX)]);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].key, "me");
        assert!(got[0].cpu_seconds > 0.0 && got[0].memory_bytes > 1 << 20, "{got:?}");
    }
}
