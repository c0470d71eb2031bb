//! Whether this CPU can run guests in hardware: the check behind `--emulated` and the VMM's
//! warning about a /dev/kvm that is not hardware-backed (nested or paravirtual, e.g. PVM).

/// True when /proc/cpuinfo advertises Intel VT-x (`vmx`) or AMD-V (`svm`).
pub fn has_hardware_virtualization() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|cpuinfo| cpuinfo_has_virtualization(&cpuinfo))
        .unwrap_or(false)
}

fn cpuinfo_has_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

#[cfg(test)]
mod tests {
    use super::cpuinfo_has_virtualization;

    #[test]
    fn reads_the_flags_lines_only() {
        assert!(cpuinfo_has_virtualization("flags\t: fpu vme svm sse\n"));
        assert!(cpuinfo_has_virtualization(
            "model\t: 1\nflags\t\t: vmx pae\n"
        ));
        assert!(!cpuinfo_has_virtualization(
            "flags\t: fpu sse\nmodel name\t: svm\n"
        ));
        assert!(!cpuinfo_has_virtualization("flags\t: fpu svmx\n"));
    }
}
