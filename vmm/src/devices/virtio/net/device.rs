//! The half of a virtio-net device its transport owns: features (offloads only where the
//! backend carries the virtio-net header), configuration space (MAC, link status, MTU),
//! activation and reset; and the builder of the event-loop half.

use std::io::Read;
use std::sync::{Arc, Mutex};

use cocoon_common::lock;
use cocoon_protocol::vm_config::{MacAddress, NetConfig};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::backend::{open_backend, Backend, BackendError};
use super::filter::Filter;
use super::handler::NetHandler;
use super::rate_limit::RateLimiter;
use super::state::*;
use crate::devices::virtio::{
    ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// A network device could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("net {index}: {source}")]
    Backend { index: usize, source: BackendError },
    #[error("net {index}: {what}: {source}")]
    Io {
        index: usize,
        what: &'static str,
        source: std::io::Error,
    },
}

/// The device half, owned by its transport.
pub struct Net {
    shared: Arc<Mutex<Shared>>,
    features: u64,
    mac: MacAddress,
    mtu: u16,
}

/// A random locally administered unicast address (02:xx:...).
fn random_mac() -> std::io::Result<MacAddress> {
    let mut bytes = [0u8; 6];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    bytes[0] = (bytes[0] & 0xfc) | 0x02;
    Ok(MacAddress(bytes))
}

impl Net {
    /// Device `index` as `config` describes it, on its backend.
    pub fn new(index: usize, config: &NetConfig) -> Result<(Self, NetHandlerBuilder), NetError> {
        let backend =
            open_backend(&config.backend).map_err(|source| NetError::Backend { index, source })?;
        Self::with_backend(index, config, backend)
    }

    pub(super) fn with_backend(
        index: usize,
        config: &NetConfig,
        backend: Box<dyn Backend>,
    ) -> Result<(Self, NetHandlerBuilder), NetError> {
        let io_error = |what: &'static str| {
            move |source: std::io::Error| NetError::Io {
                index,
                what,
                source,
            }
        };
        let mac = match config.mac {
            Some(mac) => mac,
            None => random_mac().map_err(io_error("choosing a MAC address"))?,
        };
        let timer = TimerFd::new()
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
            .map_err(io_error("creating the rate limit's timer"))?;
        let mut features =
            VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | F_MAC | F_MTU | F_STATUS | F_MRG_RXBUF;
        if backend.has_vnet_header() {
            features |= OFFLOADS;
        }
        let shared = Arc::new(Mutex::new(Shared {
            status: LINK_UP,
            ..Shared::default()
        }));
        let builder = NetHandlerBuilder {
            name: format!("{index} ({mac})"),
            shared: shared.clone(),
            backend,
            timer,
            filter: Filter {
                mac: mac.0,
                ipv4: config.ipv4,
                allow_metadata: config.allow_metadata,
            },
            mtu: config.mtu,
            limits: (
                RateLimiter::new(config.tx_rate),
                RateLimiter::new(config.rx_rate),
            ),
        };
        Ok((
            Self {
                shared,
                features,
                mac,
                mtu: config.mtu,
            },
            builder,
        ))
    }

    pub fn mac(&self) -> MacAddress {
        self.mac
    }
}

/// Makes the handler once the transport has created the queue eventfds.
pub struct NetHandlerBuilder {
    name: String,
    shared: Arc<Mutex<Shared>>,
    backend: Box<dyn Backend>,
    timer: TimerFd,
    filter: Filter,
    mtu: u16,
    limits: (RateLimiter, RateLimiter),
}

impl NetHandlerBuilder {
    pub fn build(self, queue_events: Vec<EventFd>) -> NetHandler {
        NetHandler::new(
            self.name,
            self.shared,
            self.backend,
            queue_events,
            self.timer,
            self.filter,
            self.mtu,
            self.limits,
        )
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        NET_DEVICE_TYPE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    /// `struct virtio_net_config`: mac[6], status, max_virtqueue_pairs (1), mtu.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let status = lock(&self.shared).status;
        let mut config = [0u8; 12];
        config[0..6].copy_from_slice(&self.mac.0);
        config[6..8].copy_from_slice(&status.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        crate::devices::virtio::read_config_space(&config, offset, data);
    }

    /// The MAC is the host's to choose (no `VIRTIO_NET_F_CTRL_MAC_ADDR`): writes are ignored.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn config_generation(&self) -> u32 {
        lock(&self.shared).config_generation
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        features: u64,
        queues: Vec<Queue>,
        _queue_events: Vec<EventFd>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let [rx, tx]: [Queue; 2] = queues
            .try_into()
            .map_err(|_| ActivateError("virtio-net has exactly two queues here".into()))?;
        let mut shared = lock(&self.shared);
        shared.active = Some(Active {
            mem,
            rx,
            tx,
            interrupt,
            features,
        });
        shared.broken = false;
        Ok(())
    }

    fn reset(&mut self) {
        let mut shared = lock(&self.shared);
        shared.active = None;
        shared.resets += 1;
    }
}
