//! A VM's disks: the root it boots with, and the empty disk slots after them that a pod's
//! containers fill with their root disks (a layer disk shared by every container of its image)
//! and empty again.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cocoon_common::lock;
use cocoon_protocol::Rootfs;
use cocoon_sandbox::Vm;

use super::error::TaskError;
use super::rootfs::RootDisks;

/// A disk slot's image and the containers using it (one for a writable disk; any number share a
/// layer disk).
#[derive(Clone, Debug)]
struct SlotUse {
    disk: PathBuf,
    users: Vec<String>,
}

/// The disk slots of pod `pod`'s VM, and what fills each.
pub struct DiskSlots {
    pod: String,
    /// How many disks the VM booted with (the sandbox container's root); the slots follow.
    boot_disks: usize,
    /// The sandbox container's layer disk, which the pod's containers of the same image share.
    boot_lower: Option<PathBuf>,
    slots: Mutex<Vec<Option<SlotUse>>>,
}

impl DiskSlots {
    /// `count` empty slots after the disks of `root`, which the VM of `pod` boots with.
    pub fn after_boot(pod: &str, root: &RootDisks, count: usize) -> Self {
        Self {
            pod: pod.to_string(),
            boot_disks: boot_root(root).0.len(),
            boot_lower: match root {
                RootDisks::Layered { lower, .. } => Some(lower.clone()),
                RootDisks::Whole(_) => None,
            },
            slots: Mutex::new(vec![None; count]),
        }
    }

    /// The guest's name for disk slot `slot`: the slots follow the boot disks (vda, ...).
    fn device(&self, slot: usize) -> String {
        disk_name(self.boot_disks + slot)
    }

    /// Puts `disk` into a free slot of `vm` for `container_id` (or, if `shared`, into the slot
    /// that holds it already); returns the slot and the guest's device. The slots stay locked
    /// while the VMM attaches, so no other container sees a slot half filled.
    fn fill(
        &self,
        vm: &Mutex<Option<Vm>>,
        container_id: &str,
        disk: &Path,
        read_only: bool,
        shared: bool,
    ) -> Result<(usize, String), TaskError> {
        let mut slots = lock(&self.slots);
        if shared {
            if let Some(slot) = slots
                .iter()
                .position(|s| s.as_ref().is_some_and(|s| s.disk == disk))
            {
                if let Some(s) = slots[slot].as_mut() {
                    s.users.push(container_id.to_string());
                }
                return Ok((slot, self.device(slot)));
            }
        }
        let total = slots.len();
        let slot = slots.iter().position(Option::is_none).ok_or_else(|| {
            TaskError::FailedPrecondition(format!(
                "pod {}'s VM has all its {total} disk slots in use (raise pod_disk_slots in the cocoon config)",
                self.pod
            ))
        })?;
        match lock(vm).as_ref() {
            Some(vm) => vm.attach_disk(slot, disk, read_only)?,
            None => return Err(TaskError::Internal("the pod's VM has stopped".into())),
        };
        slots[slot] = Some(SlotUse {
            disk: disk.to_path_buf(),
            users: vec![container_id.to_string()],
        });
        Ok((slot, self.device(slot)))
    }

    /// `container_id` no longer uses `slot`; the last user's going empties it in `vm` (the slots
    /// stay locked until it is empty there too).
    pub fn release(&self, vm: &Mutex<Option<Vm>>, slot: usize, container_id: &str) {
        let mut slots = lock(&self.slots);
        let Some(Some(used)) = slots.get_mut(slot) else {
            return;
        };
        used.users.retain(|u| u != container_id);
        if !used.users.is_empty() {
            return;
        }
        slots[slot] = None;
        if let Some(vm) = lock(vm).as_ref() {
            if let Err(e) = vm.detach_disk(slot) {
                tracing::warn!("pod {}: emptying disk slot {slot}: {e:#}", self.pod);
            }
        }
    }

    /// Attaches a pod container's root disks to slots of `vm`; `taken` collects the slots used.
    pub fn attach_root(
        &self,
        vm: &Mutex<Option<Vm>>,
        container_id: &str,
        root: &RootDisks,
        taken: &mut Vec<usize>,
    ) -> Result<Rootfs, TaskError> {
        Ok(match root {
            RootDisks::Whole(disk) => {
                let (slot, device) = self.fill(vm, container_id, disk, false, false)?;
                taken.push(slot);
                whole_disk(device)
            }
            RootDisks::Layered { lower, upper } => {
                let lower = if self.boot_lower.as_ref() == Some(lower) {
                    disk_name(0)
                } else {
                    let (slot, device) = self.fill(vm, container_id, lower, true, true)?;
                    taken.push(slot);
                    device
                };
                let (slot, upper) = self.fill(vm, container_id, upper, false, false)?;
                taken.push(slot);
                Rootfs::Overlay { lower, upper }
            }
        })
    }
}

/// A root on one whole writable ext4 disk.
fn whole_disk(device: String) -> Rootfs {
    Rootfs::BlockDevice {
        device,
        fstype: "ext4".into(),
        read_only: false,
    }
}

/// The guest's name for its `index`th virtio disk.
fn disk_name(index: usize) -> String {
    let letter = (b'a' + index as u8) as char;
    format!("/dev/vd{letter}")
}

/// A root as the disks a VM boots with, and how the agent mounts it from them.
pub fn boot_root(root: &RootDisks) -> (Vec<(PathBuf, bool)>, Rootfs) {
    match root {
        RootDisks::Whole(disk) => (vec![(disk.clone(), false)], whole_disk(disk_name(0))),
        RootDisks::Layered { lower, upper } => (
            vec![(lower.clone(), true), (upper.clone(), false)],
            Rootfs::Overlay {
                lower: disk_name(0),
                upper: disk_name(1),
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_disks_and_their_guest_names() {
        assert_eq!(disk_name(0), "/dev/vda");
        assert_eq!(disk_name(18), "/dev/vds");
        let layered = RootDisks::Layered {
            lower: "/cache/l.ext4".into(),
            upper: "/vm/upper.ext4".into(),
        };
        let (disks, rootfs) = boot_root(&layered);
        assert_eq!(
            disks,
            [
                ("/cache/l.ext4".into(), true),
                ("/vm/upper.ext4".into(), false)
            ]
        );
        assert_eq!(
            rootfs,
            Rootfs::Overlay {
                lower: "/dev/vda".into(),
                upper: "/dev/vdb".into()
            }
        );
    }

    #[test]
    fn a_layer_disk_is_shared_and_a_full_pod_refuses_more() {
        let slots = DiskSlots::after_boot(
            "pod",
            &RootDisks::Layered {
                lower: "/cache/l.ext4".into(),
                upper: "/vm/upper.ext4".into(),
            },
            0,
        );
        assert_eq!(slots.device(0), "/dev/vdc");
        let vm = Mutex::new(None);
        // The boot's own layer disk is shared without a slot; the writable one needs one.
        let error = slots
            .attach_root(
                &vm,
                "c",
                &RootDisks::Layered {
                    lower: "/cache/l.ext4".into(),
                    upper: "/c/upper.ext4".into(),
                },
                &mut Vec::new(),
            )
            .unwrap_err();
        assert!(
            matches!(&error, TaskError::FailedPrecondition(m) if m.contains("all its 0 disk slots")),
            "{error}"
        );
        // A slot but no VM left to attach to.
        let slots = DiskSlots::after_boot("pod", &RootDisks::Whole("/vm/root.ext4".into()), 1);
        assert_eq!(slots.device(0), "/dev/vdb");
        let mut taken = Vec::new();
        let error = slots
            .attach_root(
                &vm,
                "c",
                &RootDisks::Whole("/c/root.ext4".into()),
                &mut taken,
            )
            .unwrap_err();
        assert_eq!(error.to_string(), "the pod's VM has stopped");
        assert!(taken.is_empty());
        slots.release(&vm, 0, "c"); // an empty slot: nothing to do
    }
}
