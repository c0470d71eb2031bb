//! containerd's runtime v2 shim for cocoon microVMs (`io.containerd.cocoon.v2`).

fn main() {
    cocoon_shim::containerd::main();
}
