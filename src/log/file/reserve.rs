//! Offsets are never handed out twice, even across a power loss. Each partition keeps a
//! durable mark, `reserved` (8 bytes, little endian): no offset at or past it has been given
//! to anyone. A writer moves the mark ahead in blocks of [`BLOCK`] offsets, fsynced before
//! the first offset of a block is used, and sets it to the exact next offset on a clean close
//! (after fsyncing the records). A writer that finds the mark past the records on disk knows
//! the records in between were acknowledged and lost (a power loss before their fsync): it
//! starts a new segment at the mark, so a consumer whose checkpoint lies in the lost range
//! reads the next new record instead of skipping it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Offsets reserved per fsync of the mark.
pub const BLOCK: u64 = 4096;

const FILE: &str = "reserved";

pub struct Reservation {
    file: File,
    reserved: u64,
}

impl Reservation {
    /// The partition folder's mark (0 when it has none yet).
    pub fn open(partition_dir: &Path) -> io::Result<Reservation> {
        let path = partition_dir.join(FILE);
        let file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path)?;
        let mut bytes = [0u8; 8];
        let reserved = match file.read_exact_at(&mut bytes, 0) {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        Ok(Reservation { file, reserved })
    }

    /// No offset at or past this one was handed out.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Makes `offset` usable: moves the mark a block past it when it is not yet reserved.
    pub fn cover(&mut self, offset: u64) -> io::Result<()> {
        if offset < self.reserved {
            return Ok(());
        }
        self.set(offset + BLOCK)
    }

    /// The exact mark on a clean close: `next` is the first offset not handed out, and every
    /// record before it is on disk.
    pub fn close_at(&mut self, next: u64) -> io::Result<()> {
        self.set(next)
    }

    fn set(&mut self, reserved: u64) -> io::Result<()> {
        self.file.write_all_at(&reserved.to_le_bytes(), 0)?;
        self.file.sync_data()?;
        self.reserved = reserved;
        Ok(())
    }
}
