//! Pushes events (exits, OOM kills) to every open control connection.

use std::fs::File;
use std::sync::{Arc, Mutex, Weak};

use cocoon_protocol::{write_message, Event, Message};

use crate::reaper::lock;

#[derive(Default)]
pub struct EventBus {
    subscribers: Mutex<Vec<Weak<Mutex<File>>>>,
}

impl EventBus {
    pub fn subscribe(&self, connection: &Arc<Mutex<File>>) {
        lock(&self.subscribers).push(Arc::downgrade(connection));
    }

    pub fn emit(&self, event: Event) {
        let message = Message::Event(event);
        let mut subscribers = lock(&self.subscribers);
        subscribers.retain(|s| match s.upgrade() {
            Some(connection) => write_message(&mut *lock(&connection), &message).is_ok(),
            None => false,
        });
    }
}
