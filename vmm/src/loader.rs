//! Loads the guest's kernel (bzImage or ELF vmlinux), initramfs and command line into guest memory,
//! checking image digests first. Images are read into memory once, so the bytes that are hashed are
//! the bytes that are loaded.

use std::io::Cursor;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::arch::x86_64::bootparams::{initrd_addr_max, InitrdPlacement};
use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MMIO_GAP_START};

/// Offset of the 64-bit entry point from the start of a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 4096;

/// Failure to load the guest's images.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{what} {path} has sha256 {actual}, expected {expected}: refusing to boot it")]
    DigestMismatch {
        what: &'static str,
        path: String,
        actual: String,
        expected: String,
    },
    #[error("{path} is neither a bzImage nor an ELF vmlinux")]
    UnknownKernelFormat { path: String },
    #[error("loading kernel {path}: {source}")]
    Kernel {
        path: String,
        source: linux_loader::loader::Error,
    },
    #[error("initrd of {size} bytes does not fit in guest memory below {limit:#x} above the kernel (end {kernel_end:#x}); give the VM more memory")]
    InitrdTooLarge {
        size: u64,
        limit: u64,
        kernel_end: u64,
    },
    #[error("writing the initrd into guest memory: {0}")]
    InitrdWrite(vm_memory::GuestMemoryError),
    #[error("kernel command line: {0}")]
    Cmdline(String),
}

/// What the boot code needs to know about the loaded kernel.
#[derive(Debug)]
pub struct LoadedKernel {
    /// Where the boot vCPU starts, in 64-bit mode.
    pub entry: u64,
    /// bzImage setup header (None for ELF).
    pub setup_header: Option<setup_header>,
    /// First byte past the loaded image.
    pub end: u64,
    pub format: KernelFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    BzImage,
    Elf,
}

/// Reads a whole image and checks it against an expected digest, if any.
pub fn read_image(
    what: &'static str,
    path: &Path,
    expected_sha256: Option<&str>,
) -> Result<Vec<u8>, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    if let Some(expected) = expected_sha256 {
        let actual = cocoon_common::sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(LoadError::DigestMismatch {
                what,
                path: path.display().to_string(),
                actual,
                expected: expected.to_ascii_lowercase(),
            });
        }
    }
    Ok(bytes)
}

/// Tells a bzImage from an ELF vmlinux by their magic numbers.
pub fn kernel_format(image: &[u8]) -> Option<KernelFormat> {
    if image.starts_with(b"\x7fELF") {
        Some(KernelFormat::Elf)
    } else if image.len() > 0x206 && &image[0x202..0x206] == b"HdrS" {
        Some(KernelFormat::BzImage)
    } else {
        None
    }
}

/// Loads a kernel image into guest memory.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    image: &[u8],
    path: &Path,
) -> Result<LoadedKernel, LoadError> {
    let format = kernel_format(image).ok_or_else(|| LoadError::UnknownKernelFormat {
        path: path.display().to_string(),
    })?;
    let mut cursor = Cursor::new(image);
    let highmem = Some(GuestAddress(HIMEM_START));
    let result = match format {
        KernelFormat::BzImage => BzImage::load(mem, None, &mut cursor, highmem),
        KernelFormat::Elf => Elf::load(mem, None, &mut cursor, highmem),
    }
    .map_err(|source| LoadError::Kernel {
        path: path.display().to_string(),
        source,
    })?;
    let entry = match format {
        KernelFormat::BzImage => result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
        KernelFormat::Elf => result.kernel_load.0,
    };
    Ok(LoadedKernel {
        entry,
        setup_header: result.setup_header,
        end: result.kernel_end,
        format,
    })
}

/// Places the initramfs as high as the kernel allows, page aligned, above the kernel image.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    initrd: &[u8],
    kernel: &LoadedKernel,
) -> Result<InitrdPlacement, LoadError> {
    let size = initrd.len() as u64;
    let ram_end = mem.last_addr().0.min(MMIO_GAP_START - 1) + 1;
    let limit = (initrd_addr_max(kernel.setup_header.as_ref()) + 1).min(ram_end);
    let too_large = || LoadError::InitrdTooLarge {
        size,
        limit,
        kernel_end: kernel.end,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if addr < kernel.end.max(HIMEM_START) {
        return Err(too_large());
    }
    mem.write_slice(initrd, GuestAddress(addr))
        .map_err(LoadError::InitrdWrite)?;
    Ok(InitrdPlacement { addr, size })
}

/// Writes the command line; returns its size with the terminating NUL, for the zero page.
pub fn load_command_line(mem: &GuestMemoryMmap, cmdline: &str) -> Result<usize, LoadError> {
    let mut line = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| LoadError::Cmdline(e.to_string()))?;
    line.insert_str(cmdline)
        .map_err(|e| LoadError::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &line)
        .map_err(|e| LoadError::Cmdline(e.to_string()))?;
    Ok(cmdline.len() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    #[test]
    fn digest_is_checked() {
        let path = std::env::temp_dir().join(format!("cocoon-digest-{}", std::process::id()));
        std::fs::write(&path, b"abc").unwrap();
        let good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(read_image("kernel", &path, Some(good)).unwrap(), b"abc");
        assert_eq!(
            read_image("kernel", &path, Some(&good.to_uppercase())).unwrap(),
            b"abc"
        );
        let bad = "0".repeat(64);
        let err = read_image("kernel", &path, Some(&bad)).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains("refusing to boot") && msg.contains(good),
            "{msg}"
        );
    }

    #[test]
    fn unknown_format_is_an_error() {
        let m = mem(64 << 20);
        let err = load_kernel(&m, &[0u8; 4096], Path::new("junk")).unwrap_err();
        assert!(matches!(err, LoadError::UnknownKernelFormat { .. }));
        let mut truncated_elf = b"\x7fELF".to_vec();
        truncated_elf.resize(64, 0);
        assert!(matches!(
            load_kernel(&m, &truncated_elf, Path::new("elf")),
            Err(LoadError::Kernel { .. })
        ));
    }

    #[test]
    fn initrd_goes_high_and_aligned() {
        let m = mem(64 << 20);
        let kernel = LoadedKernel {
            entry: 0x100_0000,
            setup_header: None,
            end: 0x200_0000,
            format: KernelFormat::Elf,
        };
        let placed = load_initrd(&m, &[7u8; 10_000], &kernel).unwrap();
        assert_eq!(placed.addr % PAGE_SIZE, 0);
        assert!(placed.addr + placed.size <= 64 << 20);
        assert!(placed.addr >= kernel.end);
        let too_big = vec![0u8; 63 << 20];
        assert!(matches!(
            load_initrd(&m, &too_big, &kernel),
            Err(LoadError::InitrdTooLarge { .. })
        ));
    }

    #[test]
    fn command_line_is_nul_terminated() {
        let m = mem(1 << 20);
        let size = load_command_line(&m, "console=ttyS0").unwrap();
        assert_eq!(size, 14);
        let mut buf = [0u8; 14];
        m.read_slice(&mut buf, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
    }
}
