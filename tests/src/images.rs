//! Disk images the end-to-end scenarios give their guests.

/// A scratch directory holding the busybox root filesystem tree at `tree`.
fn busybox_tree() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("cocoon-rootfs-")
        .tempdir()
        .expect("creating a scratch directory");
    let tree = dir.path().join("tree");
    cocoon_guest_image::rootfs::busybox_rootfs(&tree, std::path::Path::new("/bin/busybox"))
        .expect("building the busybox tree (make deps installs busybox-static)");
    (dir, tree)
}

/// The default container image (busybox-static), as an ext4 disk image made on this host.
pub fn default_rootfs_image() -> Vec<u8> {
    let (dir, tree) = busybox_tree();
    let image = dir.path().join("rootfs.ext4");
    cocoon_guest_image::rootfs::ext4_image(&tree, &image, 0)
        .expect("building the default rootfs image (make deps installs e2fsprogs)");
    std::fs::read(&image).expect("reading the rootfs image")
}

/// An image archive as `docker save` writes it: manifest.json, the config, and two layers — the
/// busybox tree plus /etc/gone and /srv/lower (plain tar), then a gzipped layer that whites out
/// /etc/gone and adds /srv/upper. The config sets FOO, the working directory /srv and a command
/// that reports them.
pub fn docker_archive() -> Vec<u8> {
    archive(false)
}

/// [`docker_archive`] with two more images, for containerd's pods: `cocoon-pause:latest`, on the
/// same layers, runs until SIGTERM (a pod's sandbox image for CRI); `cocoon-single:latest` has the
/// lower layer only (so /etc/gone is there): an image whose layers differ from the others'.
pub fn pod_images_archive() -> Vec<u8> {
    archive(true)
}

fn archive(pod_images: bool) -> Vec<u8> {
    let (_dir, tree) = busybox_tree();
    std::fs::create_dir_all(tree.join("srv")).unwrap();
    std::fs::write(tree.join("srv/lower"), "lower\n").unwrap();
    std::fs::write(tree.join("etc/gone"), "whited out\n").unwrap();
    let mut lower = tar::Builder::new(Vec::new());
    lower.follow_symlinks(false);
    lower.append_dir_all(".", &tree).unwrap();
    let lower = lower.into_inner().unwrap();

    let mut upper = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, data) in [("etc/.wh.gone", ""), ("srv/upper", "upper\n")] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        upper
            .append_data(&mut header, path, data.as_bytes())
            .unwrap();
    }
    let upper = upper.into_inner().unwrap().finish().unwrap();
    // containerd checks each layer's uncompressed digest against the config's diff_ids.
    let diff_id = |tar: &[u8]| {
        use sha2::Digest;
        let digest: String = sha2::Sha256::digest(tar)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("sha256:{digest}")
    };
    let upper_plain = {
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&upper[..]), &mut plain)
            .unwrap();
        plain
    };
    let diff_ids = [diff_id(&lower), diff_id(&upper_plain)];

    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "FOO=from-image"],
            "Cmd": ["sh", "-c", "echo image-cmd=$FOO:$(pwd):$(cat /srv/lower /srv/upper | tr '\\n' ,):$(ls /etc/gone 2>/dev/null | wc -l)"],
            "WorkingDir": "/srv"
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    });
    let pause = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done", "pause"]
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    });
    let single = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_ids[0].clone()]}
    });
    let layers = ["lower/layer.tar", "upper/layer.tar.gz"];
    let mut manifest = vec![
        serde_json::json!({"Config": "config.json", "RepoTags": ["cocoon-test:latest"], "Layers": layers}),
    ];
    if pod_images {
        manifest.extend([
            serde_json::json!({"Config": "pause.json", "RepoTags": ["cocoon-pause:latest"], "Layers": layers}),
            serde_json::json!({"Config": "single.json", "RepoTags": ["cocoon-single:latest"], "Layers": [layers[0]]}),
        ]);
    }
    let mut outer = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("manifest.json", serde_json::to_vec(&manifest).unwrap()),
        ("config.json", serde_json::to_vec(&config).unwrap()),
        ("pause.json", serde_json::to_vec(&pause).unwrap()),
        ("single.json", serde_json::to_vec(&single).unwrap()),
        ("lower/layer.tar", lower),
        ("upper/layer.tar.gz", upper),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        outer.append_data(&mut header, name, &data[..]).unwrap();
    }
    outer.into_inner().unwrap()
}
