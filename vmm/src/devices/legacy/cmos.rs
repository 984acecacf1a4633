//! A read-only MC146818 CMOS real-time clock: index port 0x70, data port 0x71. It gives the
//! guest the host's UTC time at boot, and, by never reporting an update in progress, spares
//! Linux the ~2 s of delay loops it spends waiting on an absent RTC (port reads of 0xff).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::{read_byte_register, write_byte_register, BusDevice};

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
/// 32.768 kHz time base, 1024 Hz rate; bit 7 (update in progress) always clear.
const STATUS_A: u8 = 0x26;
/// 24-hour mode, BCD values, no interrupts enabled.
const STATUS_B: u8 = 0x02;
/// Battery good.
const STATUS_D: u8 = 0x80;

fn bcd(v: u32) -> u8 {
    (((v / 10) << 4) | (v % 10)) as u8
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The value of CMOS register `index` at `unix_secs` seconds since the epoch (UTC).
pub fn register(index: u8, unix_secs: u64) -> u8 {
    let days = (unix_secs / 86_400) as i64;
    let secs_of_day = (unix_secs % 86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    match index {
        REG_SECONDS => bcd(secs_of_day % 60),
        REG_MINUTES => bcd(secs_of_day / 60 % 60),
        REG_HOURS => bcd(secs_of_day / 3600),
        // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
        REG_WEEKDAY => bcd(((days + 4).rem_euclid(7) + 1) as u32),
        REG_DAY => bcd(day),
        REG_MONTH => bcd(month),
        REG_YEAR => bcd((year % 100) as u32),
        REG_CENTURY => bcd((year / 100) as u32),
        REG_STATUS_A => STATUS_A,
        REG_STATUS_B => STATUS_B,
        REG_STATUS_D => STATUS_D,
        _ => 0,
    }
}

/// The RTC on the port-I/O bus at 0x70 (2 ports).
#[derive(Default)]
pub struct Cmos {
    index: u8,
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_byte_register(offset, data, |o| match o {
            1 => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                register(self.index, now)
            }
            _ => self.index,
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Bit 7 of the index port masks NMIs on a PC; there is nothing to mask here.
        write_byte_register(offset, data, |o, v| {
            if o == 0 {
                self.index = v & 0x7f;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates_in_bcd() {
        // 2026-11-29 06:58:07 UTC, a Sunday.
        let t = 1_795_935_487;
        assert_eq!(register(REG_YEAR, t), 0x26);
        assert_eq!(register(REG_CENTURY, t), 0x20);
        assert_eq!(register(REG_MONTH, t), 0x11);
        assert_eq!(register(REG_DAY, t), 0x29);
        assert_eq!(register(REG_HOURS, t), 0x06);
        assert_eq!(register(REG_MINUTES, t), 0x58);
        assert_eq!(register(REG_SECONDS, t), 0x07);
        assert_eq!(register(REG_WEEKDAY, t), 0x01);
        // Leap day and the epoch.
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(register(REG_WEEKDAY, 0), 0x05); // Thursday
    }

    #[test]
    fn never_reports_an_update_in_progress() {
        assert_eq!(register(REG_STATUS_A, 12345) & 0x80, 0);
        assert_eq!(register(REG_STATUS_B, 0) & 0x04, 0, "BCD mode");
        assert_eq!(register(REG_STATUS_D, 0), 0x80);
    }

    #[test]
    fn index_then_data() {
        let mut c = Cmos::default();
        c.write(0, &[0x80 | REG_STATUS_A]);
        let mut b = [0u8; 1];
        c.read(1, &mut b);
        assert_eq!(b[0], STATUS_A);
        c.read(0, &mut b);
        assert_eq!(b[0], REG_STATUS_A);
        c.write(1, &[0x55]);
        c.read(5, &mut b);
        assert_eq!(b[0], REG_STATUS_A);
    }
}
