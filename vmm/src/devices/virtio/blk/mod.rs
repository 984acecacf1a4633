//! virtio-blk over a raw host file.
//!
//! One request queue. Offers `VIRTIO_BLK_F_FLUSH` (FLUSH is an fsync of the file),
//! `VIRTIO_BLK_F_SEG_MAX`, and `VIRTIO_BLK_F_RO` for read-only disks, whose writes complete
//! with `VIRTIO_BLK_S_IOERR`. Requests are processed synchronously on the event-loop thread.
//!
//! [`request`] parses and executes requests; [`event_handler`] wires the queue to the event loop.

pub mod event_handler;
#[cfg(any(test, feature = "testing"))]
pub mod fuzz;
pub mod request;

use std::fs::OpenOptions;
use std::path::Path;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::Queue;

use self::request::Disk;
use super::activation::Activation;
use super::device::DeviceState;
use super::{read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1};

/// Entries in the request queue.
pub const QUEUE_SIZE: u16 = 256;

/// Errors creating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {path}: {err}")]
    Open { path: String, err: std::io::Error },
    #[error("cannot create the block device's eventfd: {0}")]
    EventFd(std::io::Error),
}

/// A virtio-blk device.
pub struct Block {
    disk: Disk,
    config: [u8; 24],
    activation: Activation,
    state: DeviceState<Queue>,
}

impl Block {
    /// A disk backed by the file at `path`; `id` is returned to GET_ID (at most 20 bytes).
    pub fn new(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let open_err = |err| BlockError::Open {
            path: path.display().to_string(),
            err,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let disk = Disk::new(file, read_only, id).map_err(open_err)?;
        Self::with_disk(disk)
    }

    /// A device for an already opened disk.
    pub fn with_disk(disk: Disk) -> Result<Self, BlockError> {
        // struct virtio_blk_config: capacity (le64), size_max (le32), seg_max (le32),
        // geometry (4 bytes), blk_size (le32).
        let mut config = [0u8; 24];
        config[0..8].copy_from_slice(&disk.sectors().to_le_bytes());
        config[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        config[20..24].copy_from_slice(&(request::SECTOR_SIZE as u32).to_le_bytes());
        Ok(Self {
            disk,
            config,
            activation: Activation::new().map_err(BlockError::EventFd)?,
            state: DeviceState::Inactive,
        })
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        let ro = if self.disk.read_only() {
            1 << VIRTIO_BLK_F_RO
        } else {
            0
        };
        VIRTIO_F_VERSION_1 | 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX | ro
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        let [queue] = ctx.take_queues()?;
        let evts = self.state.activate(ctx, queue);
        self.activation.activate(evts)
    }

    fn reset(&mut self) {
        self.state.reset();
        self.activation.deactivate();
    }
}

#[cfg(test)]
mod tests;
