//! Pushes events (exits, OOM kills) to every open control connection. Emitting never blocks: a
//! dedicated thread does the writing, so a host that stops reading cannot stall the reaper.
//! [`EventBus::written_so_far`] lets an answer wait for the events emitted before it, so that
//! the host reads them in that order.

use std::fs::File;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use cocoon_common::lock;
use cocoon_protocol::{write_message, Event, Message};

type Subscribers = Arc<Mutex<Vec<Weak<Mutex<File>>>>>;

enum Queued {
    Event(Event),
    /// Answered once everything queued before it was written.
    Barrier(mpsc::Sender<()>),
}

pub struct EventBus {
    subscribers: Subscribers,
    queue: Mutex<mpsc::Sender<Queued>>,
}

impl Default for EventBus {
    fn default() -> Self {
        let subscribers: Subscribers = Arc::default();
        let (tx, rx) = mpsc::channel::<Queued>();
        let targets = subscribers.clone();
        std::thread::spawn(move || {
            for queued in rx {
                let event = match queued {
                    Queued::Event(event) => event,
                    Queued::Barrier(reached) => {
                        let _ = reached.send(());
                        continue;
                    }
                };
                let message = Message::Event(event);
                let live: Vec<Arc<Mutex<File>>> = {
                    let mut subscribers = lock(&targets);
                    subscribers.retain(|s| s.strong_count() > 0);
                    subscribers.iter().filter_map(Weak::upgrade).collect()
                };
                for connection in live {
                    let _ = write_message(&mut *lock(&connection), &message);
                }
            }
        });
        Self {
            subscribers,
            queue: Mutex::new(tx),
        }
    }
}

impl EventBus {
    pub fn subscribe(&self, connection: &Arc<Mutex<File>>) {
        lock(&self.subscribers).push(Arc::downgrade(connection));
    }

    pub fn emit(&self, event: Event) {
        let _ = lock(&self.queue).send(Queued::Event(event));
    }

    /// Waits, at most `timeout`, until every event emitted before this call was written; false
    /// if the time ran out (a host that stopped reading).
    pub fn written_so_far(&self, timeout: Duration) -> bool {
        let (reached, wait) = mpsc::channel();
        let _ = lock(&self.queue).send(Queued::Barrier(reached));
        wait.recv_timeout(timeout).is_ok()
    }
}
