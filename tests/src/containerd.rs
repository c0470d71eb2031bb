//! A private containerd for scenarios and the benchmark: Debian's containerd, its ctr, runc and
//! runc's shim, with cocoon's shim on its PATH, in the current directory (directly, or inside the
//! emulated KVM host, which then needs [`host_needs`]).

use crate::suite::HostNeeds;

/// Host tools a containerd scenario carries into the emulated host (with their libraries).
pub const TOOLS: [&str; 13] = [
    "/usr/bin/containerd",
    "/usr/bin/ctr",
    "/usr/bin/containerd-shim-runc-v2",
    "/usr/sbin/runc",
    "/sbin/mkfs.ext4",
    "/sbin/debugfs",
    // CNI, for pods with a network of their own.
    "/usr/lib/cni/bridge",
    "/usr/lib/cni/host-local",
    "/usr/lib/cni/loopback",
    // A pod's hostPort: CNI's portmap and the iptables it runs (the legacy backend: fewer
    // modules than nftables'; the setup names it `iptables`).
    "/usr/lib/cni/portmap",
    "/usr/sbin/xtables-legacy-multi",
    // iproute2, for network namespaces made by hand (busybox's ip has no netns) and for the
    // qdiscs a failed pod network must not leave.
    "/usr/sbin/ip",
    "/usr/sbin/tc",
];

/// The image [`crate::images::docker_archive`] holds, as `ctr images import` names it.
pub const IMAGE: &str = "docker.io/library/cocoon-test:latest";
/// The pod sandbox image in the same archive.
pub const PAUSE_IMAGE: &str = "docker.io/library/cocoon-pause:latest";
/// The image of the archive whose layers differ from the others' (its lower layer only).
pub const SINGLE_LAYER_IMAGE: &str = "docker.io/library/cocoon-single:latest";

/// What containerd needs of the emulated host: a root pivot_root can leave (runc), overlayfs (the
/// snapshotter and the shim's rootfs), and room for both runtimes.
pub fn host_needs() -> HostNeeds {
    HostNeeds {
        real_root: true,
        modules: [
            "fs/overlayfs/overlay.ko",
            // A pod's network: CNI's bridge and veth, the pod's tap and its tc redirects.
            "net/llc/llc.ko",
            "net/802/stp.ko",
            "net/bridge/bridge.ko",
            "drivers/net/veth.ko",
            "drivers/net/tun.ko",
            "net/sched/sch_ingress.ko",
            "net/sched/cls_u32.ko",
            "net/sched/act_mirred.ko",
            // A namespace made by hand whose tap name is taken (the bad-network step).
            "drivers/net/dummy.ko",
            // portmap's DNAT and masquerade rules (iptables' legacy backend).
            "net/netfilter/x_tables.ko",
            "net/ipv4/netfilter/ip_tables.ko",
            "net/ipv4/netfilter/iptable_nat.ko",
            "net/ipv4/netfilter/iptable_filter.ko",
            "lib/libcrc32c.ko",
            "net/ipv4/netfilter/nf_defrag_ipv4.ko",
            "net/ipv6/netfilter/nf_defrag_ipv6.ko",
            "net/netfilter/nf_conntrack.ko",
            "net/netfilter/nf_nat.ko",
            "net/netfilter/xt_nat.ko",
            "net/netfilter/xt_MASQUERADE.ko",
            "net/netfilter/xt_addrtype.ko",
            "net/netfilter/xt_comment.ko",
            "net/netfilter/xt_mark.ko",
            "net/netfilter/xt_multiport.ko",
            "net/netfilter/xt_tcpudp.ko",
        ]
        .map(String::from)
        .to_vec(),
        memory_mib: Some(2048),
        files: iptables_extensions(),
    }
}

/// Where Debian's iptables loads its match and target extensions from (by path, at run time).
const IPTABLES_EXTENSIONS: &str = "/usr/lib/x86_64-linux-gnu/xtables";

/// The IPv4 and common extensions of iptables, which the emulated host carries at their own
/// path (none when iptables is not installed: the setup then leaves portmap out, saying why).
fn iptables_extensions() -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(IPTABLES_EXTENSIONS) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            (name.starts_with("libxt_") || name.starts_with("libipt_")) && name.ends_with(".so")
        })
        .collect();
    files.sort();
    files
}

/// True when containerd and ctr are installed here.
pub fn installed() -> bool {
    ["containerd", "ctr"].iter().all(|t| {
        std::process::Command::new(t)
            .arg("--version")
            .output()
            .is_ok()
    })
}

/// Shell that starts containerd with its root, state and sockets in `$PWD`, the shim configured
/// by `cocoon.toml` there (from `$COCOON_VMM`, `$GUEST_BZIMAGE`, `$GUEST_INITRD`; the shim from
/// `$CONTAINERD_SHIM_COCOON_V2`), mounts cgroup2 if it is not, and defines `c` (ctr in namespace
/// `cocoon-test`) and `stop_containerd`. `$containerd_sock` is the socket. With `$COCOON_CRI_SANDBOX`
/// set (a sandbox image), containerd's CRI plugin is on, with the runtime handler `cocoon` for
/// io.containerd.cocoon.v2 (the README's registration) and what CRI needs of a bare host: a
/// loopback for its stream server, /etc/hosts and /etc/resolv.conf to copy into host-network pods.
pub const SETUP: &str = r#"
root=$PWD
containerd_sock="$root/containerd.sock"
export PATH="$(dirname "$CONTAINERD_SHIM_COCOON_V2"):$PATH"
grep -q ' /sys/fs/cgroup cgroup2 ' /proc/mounts || { mkdir -p /sys/fs/cgroup; mount -t cgroup2 none /sys/fs/cgroup; }
printf 'vmm = "%s"\nkernel = "%s"\ninitrd = "%s"\nlayer_cache = "%s/layers"\nlog_level = "debug"\n' "$COCOON_VMM" "$GUEST_BZIMAGE" "$GUEST_INITRD" "$root" > cocoon.toml
export COCOON_CONFIG="$root/cocoon.toml"
no_cri='disabled_plugins = ["io.containerd.grpc.v1.cri"]'
[ -z "${COCOON_CRI_SANDBOX:-}" ] || no_cri=''
printf 'version = 2\nroot = "%s/root"\nstate = "%s/state"\n%s\n[grpc]\n  address = "%s"\n[ttrpc]\n  address = "%s.ttrpc"\n' "$root" "$root" "$no_cri" "$containerd_sock" "$containerd_sock" > containerd.toml
if [ -n "${COCOON_CRI_SANDBOX:-}" ]; then
  ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
  mkdir -p /etc; [ -e /etc/hosts ] || printf '127.0.0.1 localhost\n' > /etc/hosts
  [ -e /etc/resolv.conf ] || : > /etc/resolv.conf
  # Pods with a network of their own: CNI's bridge and host-local (no masquerade), and portmap for
  # hostPorts, from Debian's containernetworking-plugins, carried in as $BRIDGE, $HOST_LOCAL,
  # $LOOPBACK, $PORTMAP. portmap runs `iptables`: in the emulated host, the legacy backend carried
  # in (its modules are loaded at boot); directly, this machine's own.
  mkdir -p cni/bin cni/conf
  for plugin in "${BRIDGE:-}" "${HOST_LOCAL:-}" "${LOOPBACK:-}" "${PORTMAP:-}"; do [ -n "$plugin" ] && cp "$plugin" cni/bin/; done
  if [ "${COCOON_EMULATED_HOST:-0}" = 1 ] && [ -n "${XTABLES_LEGACY_MULTI:-}" ]; then
    mkdir -p sbin
    for name in iptables iptables-save iptables-restore; do ln -sf "$XTABLES_LEGACY_MULTI" "sbin/$name"; done
    export PATH="$root/sbin:$PATH"
  fi
  portmap=''
  if [ ! -x cni/bin/portmap ]; then
    echo "cni-portmap=off: no portmap plugin (make deps installs containernetworking-plugins)"
  elif ! iptables_error=$(iptables -w -t nat -S 2>&1 >/dev/null); then
    echo "cni-portmap=off: iptables does not work here (make deps installs iptables): $iptables_error"
  else
    echo "cni-portmap=on"
    portmap=',{"type":"portmap","capabilities":{"portMappings":true}}'
  fi
  printf '{"cniVersion":"0.4.0","name":"cocoon-test","plugins":[{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":false,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.88.0.0/16"}]],"routes":[{"dst":"0.0.0.0/0"}]}}%s]}\n' "$portmap" > cni/conf/10-cocoon-test.conflist
  cat >> containerd.toml <<CRI
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$COCOON_CRI_SANDBOX"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$root/cni/bin"
    conf_dir = "$root/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cocoon]
    runtime_type = "io.containerd.cocoon.v2"
CRI
fi
containerd --config containerd.toml > containerd.log 2>&1 &
containerd_pid=$!
i=0; while [ ! -S "$containerd_sock" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
[ -S "$containerd_sock" ] || { echo "containerd did not start:"; tail -n 20 containerd.log; }
c() { ctr --address "$containerd_sock" --namespace cocoon-test "$@"; }
stop_containerd() { kill $containerd_pid; wait $containerd_pid; }
"#;
