//! Pushes events (exits, OOM kills) to every open control connection. Emitting never blocks: a
//! dedicated thread does the writing, so a host that stops reading cannot stall the reaper.

use std::fs::File;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};

use cocoon_common::lock;
use cocoon_protocol::{write_message, Event, Message};

type Subscribers = Arc<Mutex<Vec<Weak<Mutex<File>>>>>;

pub struct EventBus {
    subscribers: Subscribers,
    queue: Mutex<mpsc::Sender<Event>>,
}

impl Default for EventBus {
    fn default() -> Self {
        let subscribers: Subscribers = Arc::default();
        let (tx, rx) = mpsc::channel::<Event>();
        let targets = subscribers.clone();
        std::thread::spawn(move || {
            for event in rx {
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
        let _ = lock(&self.queue).send(event);
    }
}
