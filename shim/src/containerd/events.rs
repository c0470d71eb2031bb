//! Task events for containerd, published in order from one thread (containerd wants create →
//! start → exit → delete in that order), over ttrpc `Events.Forward` on `$TTRPC_ADDRESS`.

use std::sync::mpsc;

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;

type Queued = (&'static str, Box<dyn MessageDyn>);

#[derive(Clone)]
pub struct Events {
    queue: mpsc::Sender<Queued>,
}

impl Events {
    /// Publishes through `publisher` for `namespace` until every `Events` is dropped.
    pub fn start(publisher: RemotePublisher, namespace: String) -> Self {
        let (queue, queued) = mpsc::channel::<Queued>();
        std::thread::spawn(move || {
            for (topic, event) in queued {
                if let Err(e) = publisher.publish(Context::default(), topic, &namespace, event) {
                    tracing::error!("publishing {topic}: {e}");
                }
            }
        });
        Self { queue }
    }

    pub fn publish(&self, topic: &'static str, event: impl MessageDyn) {
        let _ = self.queue.send((topic, Box::new(event)));
    }
}
