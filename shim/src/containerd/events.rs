//! Task events for containerd, published in order from one thread (containerd wants create →
//! start → exit → delete in that order), over ttrpc `Events.Forward` on `$TTRPC_ADDRESS`. The
//! shim exits only once they are out ([`Events::published_so_far`]): the last task's
//! `/tasks/delete` is queued just before containerd asks the shim to shut down. The queue is
//! bounded ([`QUEUE`]): a guest that makes its agent push events (OOMs, exits) faster than
//! containerd takes them holds up its own forwarder, whose queue in turn drops what it cannot
//! hold (`cocoon_sandbox::client`), instead of growing the shim's memory.

use std::sync::mpsc;
use std::time::Duration;

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;

enum Queued {
    Event(&'static str, Box<dyn MessageDyn>),
    /// Answered once everything queued before it was published.
    Barrier(mpsc::Sender<()>),
}

/// Events waiting to be published at most; past it a publisher waits its turn.
const QUEUE: usize = 4096;

#[derive(Clone)]
pub struct Events {
    queue: mpsc::SyncSender<Queued>,
}

impl Events {
    /// Publishes through `publisher` for `namespace` until every `Events` is dropped.
    pub fn start(publisher: RemotePublisher, namespace: String) -> Self {
        let (queue, queued) = mpsc::sync_channel::<Queued>(QUEUE);
        std::thread::spawn(move || {
            for item in queued {
                match item {
                    Queued::Event(topic, event) => {
                        if let Err(e) =
                            publisher.publish(Context::default(), topic, &namespace, event)
                        {
                            tracing::error!("publishing {topic}: {e}");
                        }
                    }
                    Queued::Barrier(reached) => {
                        let _ = reached.send(());
                    }
                }
            }
        });
        Self { queue }
    }

    pub fn publish(&self, topic: &'static str, event: impl MessageDyn) {
        let _ = self.queue.send(Queued::Event(topic, Box::new(event)));
    }

    /// Waits, at most `timeout`, until every event published before this call has gone to
    /// containerd (or failed to); false if the time ran out.
    pub fn published_so_far(&self, timeout: Duration) -> bool {
        let (reached, wait) = mpsc::channel();
        let _ = self.queue.send(Queued::Barrier(reached));
        wait.recv_timeout(timeout).is_ok()
    }
}
