//! The part of the i8042 keyboard controller a kernel uses to reset the machine: `reboot=k` makes
//! Linux write 0xFE (pulse reset line) to the command port. Everything else reads as idle.

use super::{DeviceAction, PioDevice};

/// Base port of the controller: data at 0x60, status/command at 0x64.
pub const I8042_BASE: u16 = 0x60;
pub const I8042_LEN: u16 = 5;
const COMMAND_OFFSET: u16 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

#[derive(Default)]
pub struct I8042;

impl PioDevice for I8042 {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty, so `kb_wait()` returns at once.
        data.fill(0);
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> DeviceAction {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            DeviceAction::Reset
        } else {
            DeviceAction::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_only_on_the_command_port() {
        let mut dev = I8042;
        assert_eq!(dev.write(COMMAND_OFFSET, &[0xfe]), DeviceAction::Reset);
        assert_eq!(dev.write(0, &[0xfe]), DeviceAction::None);
        assert_eq!(dev.write(COMMAND_OFFSET, &[0xd1]), DeviceAction::None);
        let mut status = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0]);
    }
}
