//! The requests `cocoon-vmm`'s API socket takes and its answers, one JSON object per line each,
//! shared by the VMM and the host side that drives it (the containerd shim).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Virtio devices a VM can have (IO-APIC pins 5 to 23): disks, disk slots, the vsock device and
/// network interfaces.
pub const MAX_VIRTIO_DEVICES: usize = 19;

/// What a client may ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ApiRequest {
    /// Put the raw image at `path` into the empty disk slot `slot` (0 is the first slot); a
    /// read-only one is opened read-only and refuses the guest's writes.
    AttachDisk {
        slot: usize,
        path: PathBuf,
        #[serde(default)]
        read_only: bool,
    },
    /// Empty disk slot `slot`; the guest sees a disk of size 0.
    DetachDisk { slot: usize },
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// An attached image's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
}

impl ApiResponse {
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
            capacity_bytes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_the_api_documents_them() {
        let attach: ApiRequest = serde_json::from_str(
            r#"{"op":"attach_disk","slot":1,"path":"/l.ext4","read_only":true}"#,
        )
        .unwrap();
        assert_eq!(
            attach,
            ApiRequest::AttachDisk {
                slot: 1,
                path: "/l.ext4".into(),
                read_only: true
            }
        );
        let detach: ApiRequest = serde_json::from_str(r#"{"op":"detach_disk","slot":0}"#).unwrap();
        assert_eq!(detach, ApiRequest::DetachDisk { slot: 0 });
        assert!(
            serde_json::from_str::<ApiRequest>(r#"{"op":"detach_disk","slot":0,"x":1}"#).is_err()
        );
        assert_eq!(
            serde_json::to_string(&ApiResponse::error("no")).unwrap(),
            r#"{"ok":false,"error":"no"}"#
        );
    }
}
