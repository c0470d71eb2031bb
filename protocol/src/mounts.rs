//! How both sides read an OCI spec's mounts, so host and guest agree on them.

use oci_spec::runtime::Mount;

/// True for a bind mount: OCI's rule (`bind` or `rbind` among the options), and a `bind` type,
/// which runc and containerd treat the same.
pub fn is_bind(mount: &Mount) -> bool {
    mount.typ().as_deref() == Some("bind")
        || mount
            .options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(typ: Option<&str>, options: &[&str]) -> Mount {
        let mut m = Mount::default();
        m.set_typ(typ.map(String::from))
            .set_options(Some(options.iter().map(|o| o.to_string()).collect()));
        m
    }

    #[test]
    fn binds_by_type_or_by_option() {
        assert!(is_bind(&mount(Some("bind"), &[])));
        assert!(is_bind(&mount(None, &["rbind", "ro"])));
        assert!(is_bind(&mount(Some("none"), &["bind"])));
        assert!(!is_bind(&mount(Some("tmpfs"), &["nosuid"])));
        assert!(!is_bind(&mount(None, &[])));
    }
}
