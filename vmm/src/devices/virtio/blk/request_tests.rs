use std::io::{Read, Seek, SeekFrom, Write};

use virtio_bindings::virtio_blk::*;
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::devices::virtio::test_utils::{test_mem, MEM_SIZE, WRITE};
use crate::memory::GuestMemory;

const HDR: u64 = 0x1000;
const DATA: u64 = 0x2000;
const STATUS: u64 = 0x3000;

fn disk(sectors: u64, read_only: bool) -> (Disk, TempFile) {
    let tmp = TempFile::new().unwrap();
    let mut f = tmp.as_file().try_clone().unwrap();
    let content: Vec<u8> = (0..sectors * SECTOR_SIZE)
        .map(|i| (i / SECTOR_SIZE) as u8)
        .collect();
    f.write_all(&content).unwrap();
    (Disk::new(f, read_only, "sandbox-disk-0").unwrap(), tmp)
}

fn header(mem: &GuestMemory, t: u32, sector: u64) {
    mem.write_obj(t, GuestAddress(HDR)).unwrap();
    mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
    mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
}

fn d(addr: u64, len: u32, flags: u16) -> Descriptor {
    Descriptor::new(addr, len, flags, 0)
}

fn status(mem: &GuestMemory) -> u32 {
    u32::from(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap())
}

fn req(_t: u32, data: Descriptor) -> Vec<Descriptor> {
    vec![d(HDR, 16, 0), data, d(STATUS, 1, WRITE)]
}

#[test]
fn read_sectors() {
    let mem = test_mem();
    let (mut disk, _tmp) = disk(8, false);
    header(&mem, VIRTIO_BLK_T_IN, 2);
    let descs = req(0, d(DATA, 1024, WRITE));
    assert_eq!(handle(&mem, &descs, &mut disk), 1025);
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
    let mut buf = [0u8; 1024];
    mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert!(buf[..512].iter().all(|&b| b == 2));
    assert!(buf[512..].iter().all(|&b| b == 3));
}

#[test]
fn write_then_flush() {
    let mem = test_mem();
    let (mut disk, tmp) = disk(8, false);
    mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    header(&mem, VIRTIO_BLK_T_OUT, 7);
    assert_eq!(handle(&mem, &req(0, d(DATA, 512, 0)), &mut disk), 1);
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(
        handle(&mem, &[d(HDR, 16, 0), d(STATUS, 1, WRITE)], &mut disk),
        1
    );
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
    let mut f = tmp.as_file();
    f.seek(SeekFrom::Start(7 * 512)).unwrap();
    let mut buf = [0u8; 512];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf, [0xab; 512]);
}

#[test]
fn get_id() {
    let mem = test_mem();
    let (mut disk, _tmp) = disk(1, false);
    header(&mem, VIRTIO_BLK_T_GET_ID, 0);
    assert_eq!(handle(&mem, &req(0, d(DATA, 20, WRITE)), &mut disk), 21);
    let mut buf = [0u8; 20];
    mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert_eq!(&buf[..14], b"sandbox-disk-0");
    assert_eq!(buf[14..], [0; 6]);
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
}

#[test]
fn read_only_disk_refuses_writes_with_ioerr() {
    let mem = test_mem();
    let (mut disk, tmp) = disk(4, true);
    mem.write_slice(&[0xcd; 512], GuestAddress(DATA)).unwrap();
    header(&mem, VIRTIO_BLK_T_OUT, 0);
    assert_eq!(handle(&mem, &req(0, d(DATA, 512, 0)), &mut disk), 1);
    assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
    let mut buf = [0u8; 512];
    let mut f = tmp.as_file();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf, [0; 512]);
}

#[test]
fn out_of_range_and_partial_sectors_fail() {
    let mem = test_mem();
    let (mut disk, _tmp) = disk(4, false);
    for (sector, len) in [(4, 512), (3, 1024), (u64::MAX, 512), (0, 100)] {
        header(&mem, VIRTIO_BLK_T_IN, sector);
        assert_eq!(handle(&mem, &req(0, d(DATA, len, WRITE)), &mut disk), 1);
        assert_eq!(
            status(&mem),
            VIRTIO_BLK_S_IOERR,
            "sector {sector} len {len}"
        );
    }
}

#[test]
fn unsupported_type() {
    let mem = test_mem();
    let (mut disk, _tmp) = disk(4, false);
    header(&mem, VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(handle(&mem, &req(0, d(DATA, 16, 0)), &mut disk), 1);
    assert_eq!(status(&mem), VIRTIO_BLK_S_UNSUPP);
}

#[test]
fn malformed_chains() {
    let mem = test_mem();
    let (mut disk, _tmp) = disk(4, false);
    header(&mem, VIRTIO_BLK_T_IN, 0);
    let cases: Vec<(Vec<Descriptor>, RequestError)> = vec![
        (vec![], RequestError::TooShort(0)),
        (vec![d(HDR, 16, 0)], RequestError::TooShort(1)),
        // Status not writable.
        (
            vec![d(HDR, 16, 0), d(DATA, 512, WRITE), d(STATUS, 1, 0)],
            RequestError::BadStatus,
        ),
        // Status outside RAM.
        (
            vec![d(HDR, 16, 0), d(DATA, 512, WRITE), d(MEM_SIZE, 1, WRITE)],
            RequestError::BadStatus,
        ),
        // Header writable or too short.
        (
            req(0, d(DATA, 512, WRITE))
                .into_iter()
                .enumerate()
                .map(|(i, x)| if i == 0 { d(HDR, 16, WRITE) } else { x })
                .collect(),
            RequestError::BadHeader,
        ),
        (
            vec![d(HDR, 8, 0), d(DATA, 512, WRITE), d(STATUS, 1, WRITE)],
            RequestError::BadHeader,
        ),
        // Data readable for a read.
        (
            req(0, d(DATA, 512, 0)),
            RequestError::DataDirection(RequestType::In),
        ),
        // Data straddling the end of RAM, or far outside it.
        (
            req(0, d(MEM_SIZE - 256, 512, WRITE)),
            RequestError::OutsideMemory {
                addr: MEM_SIZE - 256,
                len: 512,
            },
        ),
        (
            req(0, d(u64::MAX - 10, 512, WRITE)),
            RequestError::OutsideMemory {
                addr: u64::MAX - 10,
                len: 512,
            },
        ),
    ];
    for (descs, err) in cases {
        assert_eq!(parse(&mem, &descs), Err(err.clone()), "{descs:?}");
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let used = handle(&mem, &descs, &mut disk);
        if status_address(&mem, &descs).is_some() {
            assert_eq!(used, 1);
            assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
        } else {
            assert_eq!(used, 0);
            assert_eq!(status(&mem), 0xff);
        }
    }
}

#[test]
fn header_outside_memory() {
    let mem = test_mem();
    let (mut disk, _tmp) = disk(4, false);
    let descs = vec![d(MEM_SIZE - 8, 16, 0), d(STATUS, 1, WRITE)];
    assert!(matches!(
        parse(&mem, &descs),
        Err(RequestError::OutsideMemory { .. })
    ));
    assert_eq!(handle(&mem, &descs, &mut disk), 1);
    assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
}
