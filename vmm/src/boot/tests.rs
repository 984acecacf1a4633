use super::*;
use crate::memory::create_guest_memory;
use crate::testing::tiny_elf;
use std::io::Write;

fn temp_file(name: &str, bytes: &[u8]) -> (tempdir::Dir, PathBuf) {
    let dir = tempdir::Dir::new();
    let p = dir.path().join(name);
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    (dir, p)
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "vmm-boot-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn elf_kernel_loads_at_its_address() {
    let mem = create_guest_memory(16).unwrap();
    let (_d, p) = temp_file("vmlinux", &tiny_elf(0x20_0000, &[0xf4, 0xeb, 0xfd], 0x1000));
    let k = load_kernel(&mem, &p).unwrap();
    assert_eq!(k.entry, 0x20_0000);
    assert_eq!(k.end, 0x20_1000);
    assert!(k.setup_header.is_none());
    let b: u8 = mem.read_obj(GuestAddress(0x20_0000)).unwrap();
    assert_eq!(b, 0xf4);
}

#[test]
fn kernel_errors_are_specific() {
    let mem = create_guest_memory(16).unwrap();
    let missing = load_kernel(&mem, Path::new("/nonexistent/vmlinux")).unwrap_err();
    assert!(matches!(missing, BootError::KernelMissing(_)), "{missing}");
    let (_d, p) = temp_file("junk", &[0x55; 4096]);
    let junk = load_kernel(&mem, &p).unwrap_err();
    assert!(matches!(junk, BootError::NotAKernel(_)), "{junk}");
    let (_d2, empty) = temp_file("empty", &[]);
    assert!(matches!(
        load_kernel(&mem, &empty),
        Err(BootError::NotAKernel(_))
    ));
}

#[test]
fn kernel_bigger_than_memory_is_reported() {
    let mem = create_guest_memory(4).unwrap();
    // Segment fits in the file but its memory (BSS) runs past the end of RAM.
    let (_d, p) = temp_file("vmlinux", &tiny_elf(0x20_0000, &[0x90; 16], 8 << 20));
    let e = load_kernel(&mem, &p).unwrap_err();
    assert!(
        matches!(e, BootError::KernelTooBig { mem_mib: 4, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("too small"), "{e}");
    // Segment that cannot even be copied in.
    let (_d2, p2) = temp_file("vmlinux2", &tiny_elf(0x3f_f000, &[0x90; 0x2000], 0x2000));
    let e2 = load_kernel(&mem, &p2).unwrap_err();
    assert!(matches!(e2, BootError::KernelTooBig { .. }), "{e2}");
}

#[test]
fn initrd_goes_to_the_top_of_low_ram() {
    assert_eq!(
        initrd_address(0x1800, 0x10_0000, 0x80_0000),
        Some(0x7f_e000)
    );
    assert_eq!(initrd_address(0x80_0000, 0x10_0000, 0x80_0000), None);
    assert_eq!(initrd_address(0x100, 0x10_0000, 0x50), None);
    let mem = create_guest_memory(16).unwrap();
    let (_d, p) = temp_file("initrd", &[7u8; 5000]);
    let k = LoadedKernel {
        entry: 0x100_0000,
        end: 0x20_0000,
        setup_header: None,
    };
    let i = load_initrd(&mem, &p, &k).unwrap();
    assert_eq!(
        i,
        LoadedInitrd {
            addr: (16 << 20) - 0x2000,
            size: 5000
        }
    );
    let b: u8 = mem.read_obj(GuestAddress(i.addr + 4999)).unwrap();
    assert_eq!(b, 7);
    let big = LoadedKernel { end: 16 << 20, ..k };
    assert!(matches!(
        load_initrd(&mem, &p, &big),
        Err(BootError::InitrdTooBig { .. })
    ));
}

#[test]
fn e820_skips_the_legacy_hole_and_mmio_gap() {
    let mem = create_guest_memory(128).unwrap();
    let m = e820_map(&mem);
    assert_eq!(m.len(), 2);
    assert_eq!((m[0].addr, m[0].size), (0, EBDA_START));
    assert_eq!(
        (m[1].addr, m[1].size),
        (HIMEM_START, (128 << 20) - HIMEM_START)
    );
    assert!(m.iter().all(|e| { e.r#type } == E820_RAM));
}

#[test]
fn cmdline_limits() {
    let mem = create_guest_memory(16).unwrap();
    assert_eq!(write_cmdline(&mem, "console=ttyS0").unwrap(), 13);
    let mut buf = [0u8; 14];
    mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
        .unwrap();
    assert_eq!(&buf, b"console=ttyS0\0");
    let long = "x".repeat(CMDLINE_MAX_SIZE);
    assert!(matches!(
        write_cmdline(&mem, &long),
        Err(BootError::CmdlineTooLong(_))
    ));
    assert!(matches!(
        write_cmdline(&mem, "a\0b"),
        Err(BootError::CmdlineNul)
    ));
}

#[test]
fn rng_seed_is_a_setup_data_entry() {
    let mem = create_guest_memory(16).unwrap();
    let seed = host_random_seed().unwrap();
    assert_ne!(seed, [0u8; RNG_SEED_LEN]);
    let at = write_rng_seed(&mem, &seed).unwrap();
    let next: u64 = mem.read_obj(GuestAddress(at)).unwrap();
    let ty: u32 = mem.read_obj(GuestAddress(at + 8)).unwrap();
    let len: u32 = mem.read_obj(GuestAddress(at + 12)).unwrap();
    let mut data = [0u8; RNG_SEED_LEN];
    mem.read_slice(&mut data, GuestAddress(at + 16)).unwrap();
    assert_eq!((next, ty, len as usize), (0, SETUP_RNG_SEED, RNG_SEED_LEN));
    assert_eq!(data, seed);
}

#[test]
fn boot_params_for_elf_kernel() {
    let e820 = [boot_e820_entry {
        addr: 0,
        size: 0x1000,
        r#type: E820_RAM,
    }];
    let k = LoadedKernel {
        entry: 0x100_0000,
        end: 0x200_0000,
        setup_header: None,
    };
    let p = build_boot_params(&BootParamsInput {
        kernel: &k,
        cmdline_len: 42,
        initrd: Some(LoadedInitrd {
            addr: 0x700_0000,
            size: 1234,
        }),
        setup_data: Some(SETUP_DATA_START),
        e820: &e820,
    });
    let hdr = p.hdr;
    assert_eq!({ hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
    assert_eq!({ hdr.header }, KERNEL_HDR_MAGIC);
    assert_eq!({ hdr.type_of_loader }, KERNEL_LOADER_OTHER);
    assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
    assert_eq!({ hdr.cmdline_size }, 42);
    assert_eq!(
        ({ hdr.ramdisk_image }, { hdr.ramdisk_size }),
        (0x700_0000, 1234)
    );
    assert_eq!({ hdr.setup_data }, SETUP_DATA_START);
    assert_eq!(p.e820_entries, 1);
    assert_eq!({ p.e820_table[0].size }, 0x1000);
}

/// A bzImage-shaped file: 4 setup sectors with a boot-protocol 2.15 header, then `payload`.
fn tiny_bzimage(payload: &[u8], init_size: u32, initrd_addr_max: u32) -> Vec<u8> {
    let setup_sects = 4u8;
    let mut f = vec![0u8; (usize::from(setup_sects) + 1) * 512];
    f[0x1f1] = setup_sects;
    f[0x1fe..0x200].copy_from_slice(&KERNEL_BOOT_FLAG_MAGIC.to_le_bytes());
    f[0x202..0x206].copy_from_slice(&KERNEL_HDR_MAGIC.to_le_bytes());
    f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    f[0x211] = 1; // LOADED_HIGH
    f[0x214..0x218].copy_from_slice(&(HIMEM_START as u32).to_le_bytes());
    f[0x22c..0x230].copy_from_slice(&initrd_addr_max.to_le_bytes());
    f[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn bzimage_loads_at_1mib_with_64bit_entry_and_header() {
    let mem = create_guest_memory(16).unwrap();
    let (_d, p) = temp_file(
        "bzImage",
        &tiny_bzimage(&[0xaa; 0x400], 0x40_0000, 0x7fff_ffff),
    );
    let k = load_kernel(&mem, &p).unwrap();
    assert_eq!(k.entry, HIMEM_START + BZIMAGE_64BIT_ENTRY_OFFSET);
    // The decompressor's init_size, not the file size, bounds the kernel.
    assert_eq!(k.end, HIMEM_START + 0x40_0000);
    let hdr = k.setup_header.expect("bzImage keeps its header");
    assert_eq!({ hdr.version }, 0x020f);
    let b: u8 = mem.read_obj(GuestAddress(HIMEM_START + 0x3ff)).unwrap();
    assert_eq!(b, 0xaa);
    // The header is carried into boot_params, with our fields on top.
    let p = build_boot_params(&BootParamsInput {
        kernel: &k,
        cmdline_len: 1,
        initrd: None,
        setup_data: None,
        e820: &[],
    });
    assert_eq!({ p.hdr.version }, 0x020f);
    assert_eq!({ p.hdr.type_of_loader }, KERNEL_LOADER_OTHER);
}

#[test]
fn bzimage_initrd_respects_initrd_addr_max() {
    let mem = create_guest_memory(16).unwrap();
    let (_d, p) = temp_file("bzImage", &tiny_bzimage(&[0; 512], 0x10_0000, 0x7f_ffff));
    let k = load_kernel(&mem, &p).unwrap();
    let (_d2, i) = temp_file("initrd", &[1u8; 100]);
    let placed = load_initrd(&mem, &i, &k).unwrap();
    assert_eq!(placed.addr, 0x80_0000 - 0x1000);
}

#[test]
fn bzimage_needing_more_than_ram_is_rejected() {
    let mem = create_guest_memory(4).unwrap();
    let (_d, p) = temp_file("bzImage", &tiny_bzimage(&[0; 512], 8 << 20, 0x7fff_ffff));
    assert!(matches!(
        load_kernel(&mem, &p),
        Err(BootError::KernelTooBig { .. })
    ));
}
