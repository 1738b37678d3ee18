//! The boundary to the storage engine (redb).
//!
//! A damaged file can make redb panic (a page index out of bounds) where it cannot return an
//! error. Every engine call on the open, check and recovery paths, and every transaction the
//! store runs, goes through [`guard`], so damage reaches callers as a [`StoreError`] they can
//! report, never as a panic that takes the router down.
//!
//! The file is opened with redb's integrity check: the checksum of every page of the committed
//! trees is verified and the allocator state rebuilt, so a file altered under redb is refused
//! as corrupted at open rather than trusted (a plain open would serve altered app and domain
//! records, which carry no checksum of their own, and could hand out pages still in use).
//! [`ReadOnlyFile`] lets the same check run without writing the file.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Mutex;

use redb::{Database, StorageBackend};

use crate::error::{Result, StoreError};

/// redb's page cache. Records are read once at start; the data lives in the resolver after.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Runs `f`, turning a panic inside the engine into [`StoreError::EnginePanic`].
pub(crate) fn guard<T>(
    file: &Path,
    during: &'static str,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            Err(StoreError::EnginePanic {
                file: file.to_path_buf(),
                during,
                message,
            })
        }
    }
}

/// Opens (or creates) the store file for writing, verifying every page first.
pub(crate) fn open(file: &Path) -> Result<Database> {
    guard(file, "opening the store", || {
        Database::builder()
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(true)
            .create(file)
            .map_err(|e| StoreError::Open {
                file: file.to_path_buf(),
                source: e.into(),
            })
    })
}

/// Opens an existing store file for reading only: the integrity check and any crash repair run
/// as they would at a real open, but whatever they write stays in memory.
pub(crate) fn open_read_only(file: &Path, verify: bool) -> Result<Database> {
    guard(file, "opening the store", || {
        let open_err = |source: redb::Error| StoreError::Open {
            file: file.to_path_buf(),
            source,
        };
        let backend = ReadOnlyFile::open(file).map_err(|e| open_err(e.into()))?;
        Database::builder()
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(verify)
            .create_with_backend(backend)
            .map_err(|e| open_err(e.into()))
    })
}

/// Closes a database under [`guard`]: closing commits the allocator state, which in a file
/// opened without the integrity check may be damaged.
pub(crate) fn close(file: &Path, db: Database) -> Result<()> {
    guard(file, "closing the store", || {
        db.close().map_err(|e| StoreError::Db(e.into()))
    })
}

const BLOCK: usize = 4096;

/// A store file seen through an in-memory overlay: reads come from the file unless a block was
/// written, writes go to memory only, and the file is never changed. Holds no lock on the file,
/// so a running router keeps its own.
#[derive(Debug)]
pub(crate) struct ReadOnlyFile {
    file: File,
    overlay: Mutex<Overlay>,
}

#[derive(Debug)]
struct Overlay {
    /// The length redb sees.
    len: u64,
    /// Bytes of the file below this offset are visible; above it (after a shrink) read zeros.
    file_visible: u64,
    blocks: HashMap<u64, Box<[u8]>>,
}

impl ReadOnlyFile {
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            overlay: Mutex::new(Overlay {
                len,
                file_visible: len,
                blocks: HashMap::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Overlay> {
        self.overlay.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes at `offset` as the file shows them, zeros past its visible end.
    fn read_base(&self, visible: u64, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let from_file = usize::try_from(visible.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(out.len());
        let (head, tail) = out.split_at_mut(from_file);
        self.file.read_exact_at(head, offset)?;
        tail.fill(0);
        Ok(())
    }
}

/// `(block, offset within it, bytes)` pieces covering `len` bytes at `offset`.
fn pieces(offset: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
    let mut pos = offset;
    let end = offset + len as u64;
    std::iter::from_fn(move || {
        (pos < end).then(|| {
            let block = pos / BLOCK as u64;
            let within = (pos % BLOCK as u64) as usize;
            let n = (BLOCK - within).min((end - pos) as usize);
            pos += n as u64;
            (block, within, n)
        })
    })
}

impl StorageBackend for ReadOnlyFile {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.lock().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let o = self.lock();
        if offset.saturating_add(out.len() as u64) > o.len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let mut done = 0;
        for (block, within, n) in pieces(offset, out.len()) {
            let dst = &mut out[done..done + n];
            match o.blocks.get(&block) {
                Some(b) => dst.copy_from_slice(&b[within..within + n]),
                None => self.read_base(o.file_visible, offset + done as u64, dst)?,
            }
            done += n;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut o = self.lock();
        if len < o.len {
            o.file_visible = o.file_visible.min(len);
            let first_gone = len.div_ceil(BLOCK as u64);
            o.blocks.retain(|&b, _| b < first_gone);
            let within = (len % BLOCK as u64) as usize;
            if let Some(b) = o.blocks.get_mut(&(len / BLOCK as u64)) {
                b[within..].fill(0);
            }
        }
        o.len = len;
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut o = self.lock();
        if offset.saturating_add(data.len() as u64) > o.len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let visible = o.file_visible;
        let mut done = 0;
        for (block, within, n) in pieces(offset, data.len()) {
            if !o.blocks.contains_key(&block) {
                let mut fresh = vec![0u8; BLOCK].into_boxed_slice();
                let start = block * BLOCK as u64;
                let len = usize::try_from(o.len - start).unwrap_or(BLOCK).min(BLOCK);
                self.read_base(visible, start, &mut fresh[..len])?;
                o.blocks.insert(block, fresh);
            }
            if let Some(b) = o.blocks.get_mut(&block) {
                b[within..within + n].copy_from_slice(&data[done..done + n]);
            }
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_reads_the_file_and_keeps_writes_in_memory() {
        let dir = std::env::temp_dir().join(format!("terminus-overlay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let original: Vec<u8> = (0..3 * BLOCK + 100).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &original).unwrap();
        let f = ReadOnlyFile::open(&path).unwrap();
        let mut buf = vec![0u8; 200];
        f.read(4000, &mut buf).unwrap();
        assert_eq!(buf, original[4000..4200]);

        f.write(4050, &[7; 100]).unwrap();
        f.read(4000, &mut buf).unwrap();
        assert_eq!(buf[..50], original[4000..4050]);
        assert_eq!(buf[50..150], [7; 100]);
        assert_eq!(buf[150..], original[4150..4200]);

        f.set_len(4060).unwrap();
        f.set_len(3 * BLOCK as u64 + 100).unwrap();
        f.read(4000, &mut buf).unwrap();
        assert_eq!(buf[..50], original[4000..4050]);
        assert_eq!(buf[50..60], [7; 10]);
        assert!(buf[60..].iter().all(|&b| b == 0), "regrown bytes read zero");
        assert!(
            f.read(3 * BLOCK as u64, &mut [0; 200]).is_err(),
            "past the end"
        );

        assert_eq!(
            std::fs::read(&path).unwrap(),
            original,
            "the file is untouched"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_panic_becomes_an_error() {
        let e = guard(Path::new("/x"), "testing", || -> Result<()> {
            panic!("index out of bounds")
        })
        .unwrap_err();
        assert!(e.is_corruption());
        assert!(e.to_string().contains("index out of bounds"), "{e}");
    }
}
