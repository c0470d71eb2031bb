//! Emulated devices and the port-IO and MMIO buses that route vCPU exits to them.

pub mod bus;
pub mod console;
pub mod i8042;
pub mod log_limit;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusOverlap};

/// What the VM must do after a device handled an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceAction {
    None,
    /// The guest asked for a system reset: cocoon treats it as "VM stopped".
    Reset,
}

/// A device on the x86 port-IO bus. `offset` is relative to the device's base port.
pub trait PioDevice: Send {
    fn read(&mut self, offset: u16, data: &mut [u8]);
    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction;
}

/// Routes port reads and writes to the device that owns the port. Reads of unowned ports return
/// all-ones, like an empty ISA bus; writes to them are dropped.
pub type PioBus = Bus<dyn PioDevice>;

impl Bus<dyn PioDevice> {
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.find(port.into(), data.len()) {
            Some((device, offset)) => lock(device).read(offset as u16, data),
            None => data.fill(0xff),
        }
    }

    pub fn write(&self, port: u16, data: &[u8]) -> DeviceAction {
        match self.find(port.into(), data.len()) {
            Some((device, offset)) => lock(device).write(offset as u16, data),
            None => DeviceAction::None,
        }
    }
}

/// A device on the MMIO bus. `offset` is relative to the device's base address.
pub trait MmioDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Routes guest MMIO exits to devices. Unowned addresses read as all-ones; writes are dropped.
pub type MmioBus = Bus<dyn MmioDevice>;

impl Bus<dyn MmioDevice> {
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr, data.len()) {
            Some((device, offset)) => lock(device).read(offset, data),
            None => data.fill(0xff),
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        if let Some((device, offset)) = self.find(addr, data.len()) {
            lock(device).write(offset, data);
        }
    }
}

use cocoon_common::lock;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Echo(u8);
    impl PioDevice for Echo {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _offset: u16, data: &[u8]) -> DeviceAction {
            self.0 = data[0];
            DeviceAction::None
        }
    }

    #[test]
    fn routes_by_port_and_fills_unowned_reads() {
        let mut bus = PioBus::default();
        bus.insert(0x3f8, 8, Arc::new(Mutex::new(Echo(0x10))))
            .unwrap();
        let mut b = [0u8; 1];
        bus.read(0x3fa, &mut b);
        assert_eq!(b[0], 0x12);
        bus.write(0x3f8, &[0x20]);
        bus.read(0x3f8, &mut b);
        assert_eq!(b[0], 0x20);
        bus.read(0x400, &mut b);
        assert_eq!(b[0], 0xff);
        let mut w = [0u8; 4];
        bus.read(0x2f8, &mut w);
        assert_eq!(w, [0xff; 4]);
    }

    struct Cell(u8);
    impl MmioDevice for Cell {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn mmio_routes_whole_accesses_inside_a_window() {
        let mut bus = MmioBus::default();
        bus.insert(0xd000_0000, 0x1000, Arc::new(Mutex::new(Cell(1))))
            .unwrap();
        assert!(bus
            .insert(0xd000_0800, 0x1000, Arc::new(Mutex::new(Cell(0))))
            .is_err());
        assert!(bus
            .insert(u64::MAX, 2, Arc::new(Mutex::new(Cell(0))))
            .is_err());
        let mut b = [0u8; 4];
        bus.read(0xd000_0002, &mut b);
        assert_eq!(b, [3; 4]);
        bus.write(0xd000_0000, &[9]);
        bus.read(0xd000_0000, &mut b);
        assert_eq!(b, [9; 4]);
        // Straddling the end of the window, or outside any: all-ones.
        bus.read(0xd000_0ffe, &mut b);
        assert_eq!(b, [0xff; 4]);
        bus.read(0xe000_0000, &mut b);
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    fn rejects_overlaps() {
        let mut bus = PioBus::default();
        bus.insert(0x60, 5, Arc::new(Mutex::new(Echo(0)))).unwrap();
        assert!(bus.insert(0x64, 1, Arc::new(Mutex::new(Echo(0)))).is_err());
        assert!(bus
            .insert(0x50, 0x11, Arc::new(Mutex::new(Echo(0))))
            .is_err());
        assert!(bus.insert(0x65, 1, Arc::new(Mutex::new(Echo(0)))).is_ok());
        assert!(bus.insert(0xffff, 1, Arc::new(Mutex::new(Echo(0)))).is_ok());
    }
}
