//! COM1: a 16550A UART (vm-superio) on ports 0x3f8-0x3ff raising IRQ 4 through an irqfd.

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::console::ConsoleSink;
use super::{DeviceAction, PioDevice};

pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_LEN: u16 = 8;
pub const COM1_IRQ: u32 = 4;

/// Raises the UART's interrupt by signalling the irqfd KVM listens on.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub struct SerialDevice {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleSink>,
}

impl SerialDevice {
    pub fn new(irq: EventFd, sink: ConsoleSink) -> Self {
        Self {
            uart: Serial::new(IrqTrigger(irq), sink),
        }
    }

    /// Queues input bytes for the guest; returns how many fit in the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        if room == 0 {
            return 0;
        }
        self.uart
            .enqueue_raw_bytes(&bytes[..room])
            .unwrap_or_default()
    }
}

impl PioDevice for SerialDevice {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        match data {
            [byte] => *byte = self.uart.read(offset as u8),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        if let [byte] = data {
            // The sink never fails the write; an interrupt that cannot be raised only delays output.
            let _ = self.uart.write(offset as u8, *byte);
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn transmitted_bytes_reach_the_sink_and_raise_the_irq() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = ConsoleSink::to_buffer(out.clone());
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), sink);
        dev.write(1, &[0x02]); // IER: transmitter-empty interrupt
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(out.lock().unwrap().as_slice(), b"hi\n");
        assert!(irq.read().unwrap() >= 1);
    }

    #[test]
    fn input_is_readable_by_the_guest() {
        let sink = ConsoleSink::to_buffer(Arc::new(Mutex::new(Vec::new())));
        let mut dev = SerialDevice::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), sink);
        assert_eq!(dev.enqueue_input(b"ok"), 2);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b[0], b'o');
        dev.read(0, &mut b);
        assert_eq!(b[0], b'k');
        let mut wide = [0u8; 2];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
    }
}
