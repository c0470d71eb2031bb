//! Which process a command talks to in a container.

/// Which process: the container's own, or one of its execs.
#[derive(Clone)]
pub struct Target {
    pub container_id: String,
    pub exec_id: Option<String>,
}
