//! The zero page (`struct boot_params`) of the Linux x86 boot protocol: setup header, command line,
//! initramfs location and the e820 memory map.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{ram_regions, CMDLINE_START, EBDA_START, HIMEM_START, ZERO_PAGE_START};

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
/// Highest initramfs end address for kernels that do not say (boot protocol < 2.03, ELF vmlinux).
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// `boot_params` wrapped so it can be written to guest memory as plain bytes.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);

// SAFETY: boot_params is a repr(C, packed) struct of integers and arrays of integers: every bit pattern
// is a valid value and it has no padding that could leak uninitialised bytes.
unsafe impl ByteValued for ZeroPage {}

/// Where the initramfs was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub addr: u64,
    pub size: u64,
}

/// Failure to build or write the zero page.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    #[error("writing the zero page: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    #[error("too many e820 entries")]
    TooManyE820Entries,
}

/// The e820 map: low RAM up to the EBDA, then RAM from 1 MiB, skipping the MMIO hole.
pub fn e820_map(mem_size: u64) -> Vec<boot_e820_entry> {
    let mut map = vec![boot_e820_entry {
        addr: 0,
        size: EBDA_START,
        r#type: E820_RAM,
    }];
    for (start, size) in ram_regions(mem_size) {
        let (start, end) = (start.max(HIMEM_START), start + size);
        if end > start {
            map.push(boot_e820_entry {
                addr: start,
                size: end - start,
                r#type: E820_RAM,
            });
        }
    }
    map
}

/// Writes the zero page. `header` is the bzImage's setup header (None for an ELF vmlinux).
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    header: Option<setup_header>,
    cmdline_size: usize,
    initrd: Option<InitrdPlacement>,
    mem_size: u64,
) -> Result<(), BootParamsError> {
    let mut params = ZeroPage::default();
    let p = &mut params.0;
    match header {
        Some(hdr) => p.hdr = hdr,
        None => {
            p.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            p.hdr.header = KERNEL_HDR_MAGIC;
            p.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
        }
    }
    p.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    p.hdr.cmd_line_ptr = CMDLINE_START as u32;
    p.hdr.cmdline_size = cmdline_size as u32;
    if let Some(initrd) = initrd {
        p.hdr.ramdisk_image = initrd.addr as u32;
        p.hdr.ramdisk_size = initrd.size as u32;
    }
    let map = e820_map(mem_size);
    if map.len() > p.e820_table.len() {
        return Err(BootParamsError::TooManyE820Entries);
    }
    for (slot, entry) in p.e820_table.iter_mut().zip(&map) {
        *slot = *entry;
    }
    p.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))?;
    Ok(())
}

/// Highest initramfs end address the kernel accepts, from its setup header.
pub fn initrd_addr_max(header: Option<&setup_header>) -> u64 {
    match header {
        Some(hdr) if hdr.version >= 0x0203 && hdr.initrd_addr_max != 0 => {
            u64::from(hdr.initrd_addr_max)
        }
        _ => DEFAULT_INITRD_ADDR_MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_for_small_and_large_guests() {
        let small = e820_map(128 << 20);
        assert_eq!(small.len(), 2);
        let (a, s) = (small[1].addr, small[1].size);
        assert_eq!((a, s), (HIMEM_START, (128 << 20) - HIMEM_START));
        let large = e820_map(5 << 30);
        assert_eq!(large.len(), 3);
        let (a, s) = (large[2].addr, large[2].size);
        assert_eq!((a, s), (1 << 32, 2 << 30));
    }

    #[test]
    fn zero_page_fields() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let initrd = InitrdPlacement {
            addr: 0x70_0000,
            size: 0x1000,
        };
        write_zero_page(&mem, None, 42, Some(initrd), 128 << 20).unwrap();
        let page: ZeroPage = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let p = page.0;
        let (flag, magic, loader) = (p.hdr.boot_flag, p.hdr.header, p.hdr.type_of_loader);
        assert_eq!((flag, magic, loader), (0xaa55, KERNEL_HDR_MAGIC, 0xff));
        let (cmd, size) = (p.hdr.cmd_line_ptr, p.hdr.cmdline_size);
        assert_eq!((cmd, size), (CMDLINE_START as u32, 42));
        let (img, len) = (p.hdr.ramdisk_image, p.hdr.ramdisk_size);
        assert_eq!((img, len), (0x70_0000, 0x1000));
        assert_eq!(p.e820_entries, 2);
    }

    #[test]
    fn initrd_limit_from_header() {
        assert_eq!(initrd_addr_max(None), DEFAULT_INITRD_ADDR_MAX);
        let hdr = setup_header {
            version: 0x020f,
            initrd_addr_max: 0x7fff_ffff,
            ..Default::default()
        };
        assert_eq!(initrd_addr_max(Some(&hdr)), 0x7fff_ffff);
    }
}
