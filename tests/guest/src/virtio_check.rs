//! Guest half of the virtio e2e test, run as PID 1 of a test initramfs.
//!
//! Each step prints one line `VC <step> ok <details>` or `VC <step> FAIL <why>` on the
//! console; the host half (`runtime-cli/tests/e2e_virtio.rs`) checks them and what the guest
//! left behind. The constants here are the contract between the two halves.
//!
//! With `bench` on the kernel command line after `--`, it instead measures virtio-blk
//! sequential read and vsock round trips and throughput, printing `VB <what> <result>` lines
//! (sizes from `bench_blk_mib=`, `bench_rtt_rounds=`, `bench_vsock_kib=` on the command line;
//! the host half is `tests/bench-virtio.py`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Instant;

/// Bytes at the start of the disk the host filled; the guest reports their FNV-1a hash.
const BLK_HOST_BYTES: usize = 1 << 20;
/// Where the guest writes its pattern, and how much.
const BLK_GUEST_OFFSET: u64 = 1 << 20;
const BLK_GUEST_BYTES: usize = 64 << 10;
/// The host listens on `<uds>_5000`; the guest listens on 6000.
const HOST_PORT: u32 = 5000;
const GUEST_PORT: u32 = 6000;
const VMADDR_CID_HOST: u32 = 2;

/// The pattern byte at offset `i` of the guest's write (the host checks the same formula).
fn pattern(i: usize) -> u8 {
    (i * 7 % 251) as u8
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn report(step: &str, r: Result<String, String>) {
    match r {
        Ok(d) => println!("VC {step} ok {d}"),
        Err(e) => println!("VC {step} FAIL {e}"),
    }
}

fn errno(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn mount_devtmpfs() -> Result<(), String> {
    let _ = std::fs::create_dir("/dev");
    // SAFETY: all pointers are NUL-terminated literals valid for the call.
    let r = unsafe {
        libc::mount(
            c"devtmpfs".as_ptr(),
            c"/dev".as_ptr(),
            c"devtmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(errno("mount devtmpfs"));
    }
    Ok(())
}

fn blk_read() -> Result<String, String> {
    let mut f = File::open("/dev/vda").map_err(|e| format!("open /dev/vda: {e}"))?;
    let mut buf = vec![0u8; BLK_HOST_BYTES];
    f.read_exact(&mut buf).map_err(|e| format!("read: {e}"))?;
    Ok(format!("fnv={:016x}", fnv1a(&buf)))
}

fn blk_write() -> Result<String, String> {
    let mut f = OpenOptions::new()
        .write(true)
        .open("/dev/vda")
        .map_err(|e| format!("open /dev/vda: {e}"))?;
    let data: Vec<u8> = (0..BLK_GUEST_BYTES).map(pattern).collect();
    f.seek(SeekFrom::Start(BLK_GUEST_OFFSET))
        .and_then(|_| f.write_all(&data))
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("write: {e}"))?;
    Ok(format!("bytes={BLK_GUEST_BYTES}"))
}

fn rng() -> Result<String, String> {
    let mut f = File::open("/dev/hwrng").map_err(|e| format!("open /dev/hwrng: {e}"))?;
    let mut buf = [0u8; 64];
    f.read_exact(&mut buf).map_err(|e| format!("read: {e}"))?;
    let mut seen = [false; 256];
    buf.iter().for_each(|b| seen[usize::from(*b)] = true);
    Ok(format!(
        "bytes=64 distinct={}",
        seen.iter().filter(|s| **s).count()
    ))
}

fn vsock_socket() -> Result<OwnedFd, String> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(errno("socket(AF_VSOCK)"));
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

fn vsock_connect(cid: u32, port: u32) -> Result<File, String> {
    let fd = vsock_socket()?;
    let a = vsock_addr(cid, port);
    // SAFETY: `a` is a valid sockaddr_vm of the given length for the call's duration.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&a as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as u32,
        )
    };
    if r != 0 {
        return Err(errno("connect"));
    }
    Ok(File::from(fd))
}

fn vsock_listen(port: u32) -> Result<OwnedFd, String> {
    let fd = vsock_socket()?;
    let a = vsock_addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: `a` is a valid sockaddr_vm of the given length for the call's duration.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&a as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as u32,
        )
    };
    if r != 0 {
        return Err(errno("bind"));
    }
    // SAFETY: listen(2) on a descriptor we own.
    if unsafe { libc::listen(fd.as_raw_fd(), 4) } != 0 {
        return Err(errno("listen"));
    }
    Ok(fd)
}

fn vsock_accept(l: &OwnedFd) -> Result<File, String> {
    // SAFETY: accept(2) without an address buffer.
    let fd = unsafe {
        libc::accept4(
            l.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(errno("accept"));
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Guest → host: send a greeting, read the host's reply to EOF.
fn vsock_out() -> Result<String, String> {
    let mut s = vsock_connect(VMADDR_CID_HOST, HOST_PORT)?;
    s.write_all(b"hello from the guest\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .map_err(|e| format!("read: {e}"))?;
    Ok(format!("reply={}", reply.trim_end()))
}

/// Host → guest: accept one connection, read a line, send it back upper-cased.
fn vsock_in(l: &OwnedFd) -> Result<String, String> {
    let mut s = vsock_accept(l)?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).map_err(|e| format!("read: {e}"))? == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    let got = String::from_utf8_lossy(&line).to_string();
    s.write_all(format!("{}\n", got.to_uppercase()).as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    Ok(format!("got={got}"))
}

/// A size from the environment (the kernel passes `name=value` words of its command line
/// to init as environment variables).
fn env_size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sequential O_DIRECT reads of 1 MiB: the device DMA-writes straight into the buffer, so the
/// number measures the virtio-blk path, not the guest kernel copying through its page cache.
fn bench_blk(total: usize) -> Result<String, String> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open("/dev/vda")
        .map_err(|e| format!("open /dev/vda: {e}"))?;
    let chunk = 1 << 20;
    let layout = std::alloc::Layout::from_size_align(chunk, 4096).map_err(|e| e.to_string())?;
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { std::alloc::alloc(layout) };
    if ptr.is_null() {
        return Err("out of memory".into());
    }
    let start = Instant::now();
    let mut done = 0usize;
    while done < total {
        // SAFETY: `ptr` points to `chunk` writable bytes, aligned for O_DIRECT.
        let n = unsafe { libc::pread(f.as_raw_fd(), ptr.cast(), chunk, done as i64) };
        if n <= 0 {
            break;
        }
        done += n as usize;
    }
    let secs = start.elapsed().as_secs_f64();
    // SAFETY: allocated above with the same layout.
    unsafe { std::alloc::dealloc(ptr, layout) };
    if done == 0 {
        return Err(errno("pread"));
    }
    Ok(format!(
        "{:.2} MiB/s ({done} bytes in {secs:.2} s)",
        done as f64 / f64::from(1 << 20) / secs
    ))
}

/// 1-byte round trips over a connection the host echoes.
fn bench_rtt(rounds: usize) -> Result<String, String> {
    let mut s = vsock_connect(VMADDR_CID_HOST, HOST_PORT)?;
    let mut b = [0u8; 1];
    let start = Instant::now();
    for _ in 0..rounds {
        s.write_all(b"p")
            .and_then(|_| s.read_exact(&mut b))
            .map_err(|e| format!("round trip: {e}"))?;
    }
    Ok(format!(
        "{:.0} us ({rounds} round trips)",
        start.elapsed().as_secs_f64() * 1e6 / rounds as f64
    ))
}

/// Bulk guest-to-host send over a second connection; the host counts and answers at EOF.
fn bench_throughput(total: usize) -> Result<String, String> {
    let mut s = vsock_connect(VMADDR_CID_HOST, HOST_PORT)?;
    let chunk = vec![0x5au8; 64 << 10];
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        let n = chunk.len().min(total - sent);
        s.write_all(&chunk[..n])
            .map_err(|e| format!("write: {e}"))?;
        sent += n;
    }
    // SAFETY: shutdown(2) on a descriptor we own.
    unsafe { libc::shutdown(s.as_raw_fd(), libc::SHUT_WR) };
    let mut ack = String::new();
    s.read_to_string(&mut ack)
        .map_err(|e| format!("read: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    Ok(format!(
        "{:.2} MiB/s ({sent} bytes in {secs:.2} s, host counted {})",
        sent as f64 / f64::from(1 << 20) / secs,
        ack.trim()
    ))
}

fn bench() {
    let show = |what: &str, r: Result<String, String>| match r {
        Ok(d) => println!("VB {what} {d}"),
        Err(e) => println!("VB {what} FAIL {e}"),
    };
    show(
        "blk-seq-read",
        bench_blk(env_size("bench_blk_mib", 16) << 20),
    );
    show("vsock-rtt", bench_rtt(env_size("bench_rtt_rounds", 200)));
    show(
        "vsock-throughput",
        bench_throughput(env_size("bench_vsock_kib", 4096) << 10),
    );
}

fn main() {
    if let Err(e) = mount_devtmpfs() {
        println!("VC mount FAIL {e}");
    }
    if std::env::args().any(|a| a == "bench") {
        bench();
    } else {
        // Listen first, so the host can connect in while the other steps run.
        let listener = vsock_listen(GUEST_PORT);
        report("blk-read", blk_read());
        report("blk-write", blk_write());
        report("rng", rng());
        report("vsock-out", vsock_out());
        match &listener {
            Ok(l) => {
                println!("VC vsock-listening {GUEST_PORT}");
                report("vsock-in", vsock_in(l));
            }
            Err(e) => report("vsock-in", Err(e.clone())),
        }
    }
    println!("VC done");
    let _ = std::io::stdout().flush();
    // SAFETY: sync and reboot take no pointers; PID 1 ending the VM is the point.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
}
