//! Each container's OOM kills, read from its cgroup's `memory.events` (`oom_kill`) and reported
//! once each as [`Event::Oom`].
//!
//! Two readers: a poll every 100 ms (a kill whose victim the agent does not watch, such as a
//! shell's child), and the reaper, before it makes a process's exit known. The OOM killer counts
//! a kill before its victim dies, so a container whose process the OOM killer ended always has
//! its `Oom` event on the wire before that process's exit — the host never deletes a container
//! before hearing why it died.
//!
//! Its own lock, apart from the containers' entries: the reaper reads it while it holds the
//! spawn lock, which a thread holding an entry may be waiting for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cocoon_common::lock;
use cocoon_protocol::Event;

use crate::events::EventBus;
use crate::sys_files::keyed_value;

struct Counter {
    memory_events: PathBuf,
    reported: u64,
}

#[derive(Default)]
pub(super) struct OomKills {
    containers: Mutex<HashMap<String, Counter>>,
}

impl OomKills {
    /// Starts counting the OOM kills in `cgroup` as container `container_id`'s.
    pub fn track(&self, container_id: &str, cgroup: &Path) {
        lock(&self.containers).insert(
            container_id.to_string(),
            Counter {
                memory_events: cgroup.join("memory.events"),
                reported: 0,
            },
        );
    }

    /// Reports what is new for `container_id`, then stops counting it.
    pub fn forget(&self, container_id: &str, events: &EventBus) {
        self.report(container_id, events);
        lock(&self.containers).remove(container_id);
    }

    /// Emits an `Oom` event if `container_id`'s cgroup counted a kill since the last report.
    pub fn report(&self, container_id: &str, events: &EventBus) {
        if let Some(counter) = lock(&self.containers).get_mut(container_id) {
            report_new_kills(container_id, counter, events);
        }
    }

    /// [`Self::report`] for every container.
    pub fn report_all(&self, events: &EventBus) {
        for (id, counter) in lock(&self.containers).iter_mut() {
            report_new_kills(id, counter, events);
        }
    }
}

fn report_new_kills(container_id: &str, counter: &mut Counter, events: &EventBus) {
    let kills = keyed_value(&counter.memory_events, "oom_kill").unwrap_or(0);
    if kills > counter.reported {
        counter.reported = kills;
        events.emit(Event::Oom {
            container_id: container_id.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;
    use std::time::Duration;

    use cocoon_protocol::{read_message, Message};

    use super::*;

    fn memory_events(dir: &Path, kills: u64) {
        std::fs::write(
            dir.join("memory.events"),
            format!("low 0\nhigh 0\nmax 3\noom 1\noom_kill {kills}\noom_group_kill 0\n"),
        )
        .unwrap();
    }

    /// The `Oom` events the bus wrote to a subscribed connection by now.
    fn ooms_written(events: &EventBus, host: &mut UnixStream) -> Vec<String> {
        events.written_so_far(Duration::from_secs(5));
        let mut ooms = Vec::new();
        while let Ok(message) = read_message(host) {
            match message {
                Message::Event(Event::Oom { container_id }) => ooms.push(container_id),
                other => panic!("unexpected {other:?}"),
            }
        }
        ooms
    }

    #[test]
    fn each_kill_is_reported_once_and_a_forgotten_container_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let (agent_end, mut host) = UnixStream::pair().unwrap();
        host.set_nonblocking(true).unwrap();
        let connection = Arc::new(Mutex::new(File::from(std::os::fd::OwnedFd::from(
            agent_end,
        ))));
        let events = EventBus::default();
        events.subscribe(&connection);
        let kills = OomKills::default();
        kills.track("c1", dir.path());
        memory_events(dir.path(), 0);
        kills.report("c1", &events);
        assert!(ooms_written(&events, &mut host).is_empty());
        memory_events(dir.path(), 1);
        kills.report("c1", &events);
        kills.report_all(&events);
        assert_eq!(ooms_written(&events, &mut host), ["c1"]);
        memory_events(dir.path(), 2);
        kills.forget("c1", &events);
        assert_eq!(
            ooms_written(&events, &mut host),
            ["c1"],
            "a kill first seen at delete is still reported"
        );
        memory_events(dir.path(), 3);
        kills.report("c1", &events);
        kills.report_all(&events);
        assert!(ooms_written(&events, &mut host).is_empty());
    }
}
