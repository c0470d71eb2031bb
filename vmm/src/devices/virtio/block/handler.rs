//! The event-loop half of a virtio-blk device: drains the queue when the driver kicks it.

use std::sync::{Arc, Mutex};

use cocoon_common::lock;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use super::state::State;
use crate::devices::virtio::INTERRUPT_USED_BUFFER;

pub struct BlockQueueHandler {
    state: Arc<Mutex<State>>,
    queue_event: EventFd,
}

/// See [`Block::handle`].
pub struct BlockHandle(pub(super) Arc<Mutex<State>>);

impl BlockHandle {
    /// The handler to register with the event loop, listening on the queue's eventfd.
    pub fn queue_handler(self, queue_event: EventFd) -> BlockQueueHandler {
        BlockQueueHandler {
            state: self.0,
            queue_event,
        }
    }
}

impl State {
    /// Serves every available request; returns whether any was completed.
    pub(super) fn process_queue(&mut self) -> bool {
        if self.broken {
            return false;
        }
        let Some(mut active) = self.active.take() else {
            return false;
        };
        let mut completed = false;
        'serve: loop {
            // No kicks while draining; re-enabling tells whether more arrived meanwhile.
            let _ = active.queue.disable_notification(&active.mem);
            while let Some(chain) = active.queue.pop_descriptor_chain(&active.mem) {
                let head = chain.head_index();
                let descs: Vec<Descriptor> = chain.collect();
                let used_len = self.serve(&active.mem, &descs);
                if active.queue.add_used(&active.mem, head, used_len).is_err() {
                    tracing::warn!(
                        "virtio-blk: the guest's used ring is not writable; queue stopped"
                    );
                    self.broken = true;
                    break 'serve;
                }
                completed = true;
            }
            if !active
                .queue
                .enable_notification(&active.mem)
                .unwrap_or(false)
            {
                break;
            }
        }
        if completed && active.queue.needs_notification(&active.mem).unwrap_or(true) {
            let _ = active.interrupt.signal(INTERRUPT_USED_BUFFER);
        }
        self.active = Some(active);
        completed
    }
}

impl MutEventSubscriber for BlockQueueHandler {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_event, EventSet::IN)) {
            tracing::error!("virtio-blk: cannot watch the queue: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.queue_event.read();
        lock(&self.state).process_queue();
    }
}
