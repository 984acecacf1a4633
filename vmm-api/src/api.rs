//! The VMM's control API: JSON lines on a Unix socket, one request object per line and one
//! response object per line, answered in order.
//!
//! ```text
//! → {"request":"pause"}
//! ← {"ok":{"pause":{"state":"paused","changed":true,"message":"paused"}}}
//! → {"request":"frobnicate"}
//! ← {"error":"bad request: unknown variant `frobnicate`, expected one of ..."}
//! ```
//!
//! Requests are an internally tagged enum (`"request"` names the operation, further fields
//! are its arguments), so an operation with arguments — `{"request":"snapshot","path":…}` —
//! fits without changing the others. A success is `{"ok": BODY}` where BODY is tagged with
//! the operation's name; a failure is `{"error": "one line"}`.
//!
//! The VMM's server (`vmm::api::ApiServer`) answers on its own thread;
//! [`crate::client::ApiClient`] is the blocking client the runtime uses.

use serde::{Deserialize, Serialize};

use std::path::PathBuf;

/// The longest request line the server reads; longer lines get an error and the
/// connection is closed.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// One request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum ApiRequest {
    /// The VM's state, shape and devices.
    Describe {},
    /// Stop every vCPU; answered once all of them are parked.
    Pause {},
    /// Let the vCPUs run again.
    Resume {},
    /// End the run (`StopReason::Requested`, exit status 0); answered before the VM is gone.
    Stop {},
    /// Exit counters summed over the vCPUs, and per-device access counters.
    Metrics {},
    /// Save the paused VM into directory `dir` (`state.json` + `memory`, see
    /// `crate::snapshot`); the VM stays paused. Refused while the VM runs.
    Snapshot { dir: PathBuf },
}

impl ApiRequest {
    /// Parses one request line.
    pub fn parse(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// One response. Responses accept unknown fields, so a newer VMM may add some.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiResponse {
    Ok(ResponseBody),
    /// One line saying what failed.
    Error(String),
}

impl ApiResponse {
    /// An error response; newlines in `msg` become spaces so it stays one line.
    pub fn error(msg: impl std::fmt::Display) -> Self {
        ApiResponse::Error(msg.to_string().replace(['\n', '\r'], " "))
    }

    /// The response as one line of JSON, without the newline.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"error":"cannot encode the response: {e}"}}"#).replace('\n', " ")
        })
    }
}

/// What a successful request returns, tagged with the request's name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseBody {
    Describe(VmDescription),
    Pause(StateChange),
    Resume(StateChange),
    Stop(StateChange),
    Metrics(VmMetrics),
    Snapshot(SnapshotInfo),
}

/// Whether the vCPUs run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Running,
    /// Every vCPU is parked outside KVM_RUN (device threads keep serving the host side).
    Paused,
    /// A stop was requested or the guest ended the run; the process is about to exit.
    Stopping,
}

/// The answer to `pause`, `resume` and `stop`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    /// The state after the request.
    pub state: VmState,
    /// False when the VM already was in that state (pausing a paused VM is not an error).
    pub changed: bool,
    /// A short human-readable note, e.g. "already paused".
    pub message: String,
}

/// The answer to `describe`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDescription {
    pub state: VmState,
    pub vcpus: u8,
    pub mem_mib: u64,
    pub devices: Vec<DeviceInfo>,
    /// The VMM process.
    pub pid: u32,
    /// Since the VM was built.
    pub uptime_ms: u64,
}

/// Which bus a device sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusKind {
    Pio,
    Mmio,
}

/// One device of the VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// `virtio-blk`, `virtio-vsock`, `virtio-net`, `virtio-rng`, `virtio-console`,
    /// `virtio-fs`, `virtio-<id>` for other virtio ids, `serial`, `i8042`, `cmos`, or
    /// `mmio`/`pio` for anything else.
    pub kind: String,
    pub bus: BusKind,
    /// Port or guest-physical address of the device's range.
    pub base: u64,
    pub len: u64,
    /// Its interrupt line, where it has one.
    pub irq: Option<u32>,
}

/// The answer to `metrics`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmMetrics {
    /// vCPU exits by reason, summed over the vCPUs.
    pub exits: ExitCounts,
    /// Per device, in the order of `describe`'s list.
    pub devices: Vec<DeviceMetrics>,
}

/// Counters of one device, as the vCPUs' register accesses see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceMetrics {
    pub kind: String,
    pub base: u64,
    /// Guest register reads and writes that reached the device (trapped accesses only:
    /// virtio queue notifications go to ioeventfds and are not counted here).
    pub reads: u64,
    pub writes: u64,
    /// The virtio device status register (ACKNOWLEDGE=1, DRIVER=2, DRIVER_OK=4,
    /// FEATURES_OK=8, NEEDS_RESET=0x40, FAILED=0x80); absent for other devices.
    pub virtio_status: Option<u32>,
}

/// How many exits of each kind one vCPU (or, summed, the VM) has seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitCounts {
    pub io_in: u64,
    pub io_out: u64,
    pub mmio_read: u64,
    pub mmio_write: u64,
    pub hlt: u64,
    /// KVM_RUN returned early because a signal kicked the thread (pause, stop).
    pub interrupted: u64,
    pub shutdown: u64,
    pub system_event: u64,
    pub internal_error: u64,
    pub fail_entry: u64,
    pub other: u64,
}

impl ExitCounts {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, o: &ExitCounts) {
        self.io_in += o.io_in;
        self.io_out += o.io_out;
        self.mmio_read += o.mmio_read;
        self.mmio_write += o.mmio_write;
        self.hlt += o.hlt;
        self.interrupted += o.interrupted;
        self.shutdown += o.shutdown;
        self.system_event += o.system_event;
        self.internal_error += o.internal_error;
        self.fail_entry += o.fail_entry;
        self.other += o.other;
    }
}

/// What a snapshot request reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub dir: PathBuf,
    /// Non-zero guest RAM written to the memory file.
    pub memory_bytes: u64,
    /// Time to save vCPU and VM state, and to write the memory file (µs).
    pub state_us: u64,
    pub memory_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_by_name() {
        for (line, want) in [
            (r#"{"request":"describe"}"#, ApiRequest::Describe {}),
            (r#"{"request":"pause"}"#, ApiRequest::Pause {}),
            (r#" {"request":"resume"} "#, ApiRequest::Resume {}),
            (r#"{"request":"stop"}"#, ApiRequest::Stop {}),
            (r#"{"request":"metrics"}"#, ApiRequest::Metrics {}),
            (
                r#"{"request":"snapshot","dir":"/tmp/s"}"#,
                ApiRequest::Snapshot {
                    dir: "/tmp/s".into(),
                },
            ),
        ] {
            assert_eq!(ApiRequest::parse(line).unwrap(), want, "{line}");
            let round = serde_json::to_string(&want).unwrap();
            assert_eq!(ApiRequest::parse(&round).unwrap(), want);
        }
    }

    #[test]
    fn bad_requests_are_errors() {
        for line in [
            "",
            "pause",
            "{}",
            "[]",
            r#"{"request":"frobnicate"}"#,
            r#"{"request":"pause","extra":1}"#,
            r#"{"request":"snapshot"}"#,
            r#"{"request":7}"#,
            r#"{"op":"pause"}"#,
            r#"{"request":"pause""#,
        ] {
            assert!(ApiRequest::parse(line).is_err(), "{line:?} parsed");
        }
    }

    #[test]
    fn responses_are_ok_with_a_tagged_body_or_one_error_line() {
        let r = ApiResponse::Ok(ResponseBody::Pause(StateChange {
            state: VmState::Paused,
            changed: false,
            message: "already paused".into(),
        }));
        let line = r.to_line();
        assert_eq!(
            line,
            r#"{"ok":{"pause":{"state":"paused","changed":false,"message":"already paused"}}}"#
        );
        assert_eq!(serde_json::from_str::<ApiResponse>(&line).unwrap(), r);

        let e = ApiResponse::error("bad\nrequest");
        assert_eq!(e.to_line(), r#"{"error":"bad request"}"#);
        assert!(!e.to_line().contains('\n'));
    }

    #[test]
    fn describe_and_metrics_round_trip() {
        let d = ApiResponse::Ok(ResponseBody::Describe(VmDescription {
            state: VmState::Running,
            vcpus: 2,
            mem_mib: 128,
            devices: vec![DeviceInfo {
                kind: "virtio-blk".into(),
                bus: BusKind::Mmio,
                base: 0xd000_0000,
                len: 0x1000,
                irq: Some(5),
            }],
            pid: 42,
            uptime_ms: 7,
        }));
        let line = d.to_line();
        assert!(line.contains(r#""bus":"mmio""#), "{line}");
        assert_eq!(serde_json::from_str::<ApiResponse>(&line).unwrap(), d);
        let m = ApiResponse::Ok(ResponseBody::Metrics(VmMetrics {
            exits: ExitCounts {
                io_out: 3,
                ..Default::default()
            },
            devices: vec![],
        }));
        let line = m.to_line();
        assert!(line.contains(r#""io_out":3"#), "{line}");
        assert_eq!(serde_json::from_str::<ApiResponse>(&line).unwrap(), m);
    }
}
