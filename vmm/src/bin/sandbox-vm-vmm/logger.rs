//! The VMM's log: warnings and errors of the library (`log` crate) on stderr, one line each,
//! which the runtime keeps in the VMM's log file.

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }

    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let level = r.level().as_str().to_lowercase();
            eprintln!("sandbox-vm-vmm: {level}: {}", r.args());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger (warnings and errors only).
pub fn init() {
    log::set_max_level(log::LevelFilter::Warn);
    let _ = log::set_logger(&Stderr);
}
