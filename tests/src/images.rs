//! Disk images the end-to-end scenarios give their guests.

/// The default container image (busybox-static), as an ext4 disk image made on this host.
pub fn default_rootfs_image() -> Vec<u8> {
    let dir = tempfile::Builder::new()
        .prefix("cocoon-rootfs-")
        .tempdir()
        .expect("creating a scratch directory");
    let tree = dir.path().join("tree");
    let image = dir.path().join("rootfs.ext4");
    cocoon_guest_image::rootfs::busybox_rootfs(&tree, std::path::Path::new("/bin/busybox"))
        .and_then(|()| cocoon_guest_image::rootfs::ext4_image(&tree, &image, 0))
        .expect("building the default rootfs image (make deps installs busybox-static, e2fsprogs)");
    std::fs::read(&image).expect("reading the rootfs image")
}
