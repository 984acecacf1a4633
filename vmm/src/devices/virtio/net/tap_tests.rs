//! A real TAP in a network namespace of our own (needs root and /dev/net/tun; fails with
//! the reason otherwise, as CI runs as root with both).

use std::io;

use super::*;
use crate::devices::virtio::net::VNET_HDR_LEN;

fn raw_socket(ifindex: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex;
    // SAFETY: the address pointer and length describe `sll`.
    let r = unsafe {
        libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn set_up(name: &str) -> io::Result<i32> {
    // SAFETY: plain socket(2) call; the result is checked.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, &b) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = b as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads one ifreq, which `ifr` is.
    let r = unsafe { libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr) };
    // SAFETY: SIOCGIFINDEX reads and writes one ifreq.
    let r2 = unsafe { libc::ioctl(s, libc::SIOCGIFINDEX, &mut ifr) };
    // SAFETY: `s` is our socket.
    unsafe { libc::close(s) };
    if r < 0 || r2 < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
    Ok(unsafe { ifr.ifr_ifru.ifru_ifindex })
}

#[test]
fn invalid_names_are_refused() {
    assert!(matches!(Tap::open(""), Err(TapError::InvalidName(_))));
    assert!(matches!(
        Tap::open("a-very-long-interface"),
        Err(TapError::InvalidName(_))
    ));
}

#[test]
fn frames_cross_a_real_tap_in_a_private_netns() {
    // Own thread: unshare(CLONE_NEWNET) moves only the calling thread.
    let r = std::thread::spawn(|| -> Result<(), String> {
        // SAFETY: unshare only changes this thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "unshare(CLONE_NEWNET) (needs root): {}",
                io::Error::last_os_error()
            ));
        }
        let mut tap =
            Tap::open("sbvmtap0").map_err(|e| format!("open a tap (needs /dev/net/tun): {e}"))?;
        // A tap with a virtio-net header can hand us checksum and TSO offloads.
        if tap.offload_capability() != super::ALL_OFFLOADS {
            return Err(format!("offloads {:#x}", tap.offload_capability()));
        }
        tap.set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4)
            .map_err(|e| format!("TUNSETOFFLOAD: {e}"))?;
        let ifindex = set_up(tap.name()).map_err(|e| format!("up: {e}"))?;
        let sock = raw_socket(ifindex).map_err(|e| format!("packet socket: {e}"))?;
        use std::os::fd::AsRawFd;

        // Host -> guest direction: a frame sent on the interface is read from the TAP.
        let mut eth = vec![0xffu8; 6];
        eth.extend([2, 0, 0, 0, 0, 9, 0x88, 0xb5]); // local experimental ethertype
        eth.extend([0x42; 50]);
        // SAFETY: pointer and length describe `eth`.
        let n = unsafe { libc::send(sock.as_raw_fd(), eth.as_ptr().cast(), eth.len(), 0) };
        if n != eth.len() as isize {
            return Err(format!("send: {}", io::Error::last_os_error()));
        }
        let mut buf = vec![0u8; 2048];
        let mut got = None;
        for _ in 0..100 {
            match tap.read_frame(&mut buf) {
                Ok(n) if buf[VNET_HDR_LEN..n].ends_with(&[0x42; 50]) => {
                    got = Some(n);
                    break;
                }
                Ok(_) => {} // e.g. IPv6 router solicitations
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => return Err(format!("tap read: {e}")),
            }
        }
        let n = got.ok_or("frame never reached the tap")?;
        assert_eq!(n, VNET_HDR_LEN + eth.len());

        // Guest -> host direction: a frame written to the TAP shows up on the interface.
        let mut out = vec![0u8; VNET_HDR_LEN];
        out.extend([0xff; 6]);
        out.extend([2, 0, 0, 0, 0, 7, 0x88, 0xb5]);
        out.extend([0x24; 50]);
        tap.write_frame(&out)
            .map_err(|e| format!("tap write: {e}"))?;
        for _ in 0..100 {
            // SAFETY: pointer and length describe `buf`.
            let n = unsafe {
                libc::recv(
                    sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 && buf[..n as usize].ends_with(&[0x24; 50]) {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err("frame written to the tap never reached the interface".into())
    })
    .join()
    .unwrap();
    if let Err(e) = r {
        panic!("{e}");
    }
}
