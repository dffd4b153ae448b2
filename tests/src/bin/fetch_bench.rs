//! Image fetch throughput for docs/benchmarks.md, with three real daemons on
//! loopback: an image uploaded on site-1 is copied to site-2 (one holder),
//! then to site-3 (two holders: site-1 and site-2), and compared with a plain
//! TCP copy of the same file over loopback into a file that is then synced.
//!
//!     cargo build --release -p atoll -p atoll-e2e && ./target/release/fetch-bench [MIB]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use atoll_e2e::{Daemon, eventually, http, loopback_realm, padded_process_image};

fn mib_per_s(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / t.as_secs_f64()
}

/// A plain copy: the file streamed over a loopback TCP connection into a new
/// file, synced to disk, as a baseline for the same bytes.
fn plain_copy(file: &Path, dest: &Path) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dest = dest.to_owned();
    let started = Instant::now();
    let receiver = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut out = std::fs::File::create(dest).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = conn.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).unwrap();
        }
        out.sync_all().unwrap();
    });
    let mut conn = TcpStream::connect(addr).unwrap();
    let mut src = std::fs::File::open(file).unwrap();
    std::io::copy(&mut src, &mut conn).unwrap();
    drop(conn);
    receiver.join().unwrap();
    started.elapsed()
}

fn copy_to(site: &Daemon, token: &str) -> Duration {
    let started = Instant::now();
    let reply = http(&site.addr(), "POST", "/v1/images/default/blob/copy?wait=600", Some(token), b"");
    assert_eq!(reply.status, 200, "{}", reply.body);
    started.elapsed()
}

fn main() {
    let mib: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(256);
    let root = tempfile::tempdir().unwrap();
    let (sites, token) = loopback_realm(root.path(), 3);

    let file = padded_process_image(root.path(), "blob", "sleep 1\n", mib << 20);
    let size = std::fs::metadata(&file).unwrap().len();
    sites[0].cli().ok(&["image", "add", file.to_str().unwrap(), "--name", "blob"]);
    let catalogued = || {
        sites
            .iter()
            .all(|d| http(&d.addr(), "GET", "/v1/images/default/blob", Some(&token), b"").status == 200)
    };
    assert!(eventually(Duration::from_secs(30), catalogued), "the catalog did not spread");

    let one = copy_to(&sites[1], &token);
    let two = copy_to(&sites[2], &token);
    let plain = plain_copy(&file, &root.path().join("plain-copy"));
    println!(
        "image: {:.1} MiB in {} chunks of 4 MiB",
        size as f64 / (1 << 20) as f64,
        size.div_ceil(4 << 20)
    );
    println!("fetch from 1 holder:  {:>7.2} s  {:>7.1} MiB/s", one.as_secs_f64(), mib_per_s(size, one));
    println!("fetch from 2 holders: {:>7.2} s  {:>7.1} MiB/s", two.as_secs_f64(), mib_per_s(size, two));
    println!("plain TCP copy:       {:>7.2} s  {:>7.1} MiB/s", plain.as_secs_f64(), mib_per_s(size, plain));
}
