//! `--log FILE` and `--log-format text|json`: a small `log` backend. With JSON, each line is
//! `{"level":...,"msg":...,"time":...}`; callers such as conmon read the last error line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// Errors opening the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open log file {path}: {err}")]
    Open { path: String, err: std::io::Error },
    #[error("unknown log format {0:?} (use text or json)")]
    Format(String),
}

struct Logger {
    file: Option<Mutex<File>>,
    json: bool,
    level: log::LevelFilter,
}

/// One formatted line.
pub fn format_line(json: bool, level: &str, msg: &str) -> String {
    let time = crate::state::rfc3339(crate::state::now_secs());
    if json {
        serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
    } else {
        format!("time=\"{time}\" level={level} msg={msg:?}")
    }
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = format_line(
            self.json,
            &r.level().as_str().to_lowercase(),
            &r.args().to_string(),
        );
        match &self.file {
            Some(f) => {
                if let Ok(mut f) = f.lock() {
                    let _ = writeln!(f, "{line}");
                }
            }
            None => eprintln!("{line}"),
        }
    }

    fn flush(&self) {}
}

/// Installs the logger. Without `--log`, only warnings and errors go to stderr (stdout and
/// stderr may be the container's).
pub fn init(path: Option<&Path>, format: Option<&str>, debug: bool) -> Result<(), LogError> {
    let json = match format.unwrap_or("text") {
        "text" => false,
        "json" => true,
        f => return Err(LogError::Format(f.into())),
    };
    let file = match path {
        Some(p) => Some(Mutex::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|err| LogError::Open {
                    path: p.display().to_string(),
                    err,
                })?,
        )),
        None => None,
    };
    let level = if debug {
        log::LevelFilter::Debug
    } else if file.is_some() {
        log::LevelFilter::Info
    } else {
        log::LevelFilter::Warn
    };
    let logger = Logger { file, json, level };
    log::set_max_level(level);
    let _ = log::set_logger(Box::leak(Box::new(logger)));
    Ok(())
}

/// Writes a fatal error where the caller looks: the log file (JSON or text) and stderr.
pub fn report_error(path: Option<&Path>, json: bool, msg: &str) {
    if let Some(p) = path {
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(p) {
            let _ = writeln!(f, "{}", format_line(json, "error", msg));
        }
    }
    eprintln!("sandbox-vm: {msg}");
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_error_line() {
        let l = super::format_line(true, "error", "container x does not exist");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container x does not exist");
    }
}
