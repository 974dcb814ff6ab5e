//! Files mode: recognise the file system, mount it read-only where only we look, and stream a tar
//! archive of it.
//!
//! The mount must never write to the source, which may be the only copy: besides `MS_RDONLY`,
//! ext3/ext4 get `noload` (a read-only mount would otherwise still replay a dirty journal onto the
//! device) and XFS gets `norecovery` (the same for its log) and `nouuid` (so a clone of a volume
//! that is mounted elsewhere on this machine, the usual case for a restored snapshot, still mounts).
//! The mount point is a fresh 0700 temporary directory, unmounted and removed however the run ends.
//!
//! The archive is GNU tar as the tar crate writes it (long names, sparse files with their holes)
//! plus a PAX header before each entry that has extended attributes (`SCHILY.xattr.NAME`, what GNU
//! tar and bsdtar write and read). Hard links are stored once and linked after, as tar does.
//!
//! Read errors: a file's tar header, with its size, is written before its data, so a file that
//! fails half-way cannot simply be dropped. Without `--continue-on-error` the dump fails, naming
//! the file. With it, a file is read through [`TolerantReader`]: what cannot be read (tried 4 KiB
//! at a time) becomes zeros, as GNU tar pads an unreadable file, and is listed with the file's
//! name and offset; an entry that cannot be opened or listed at all is skipped and listed.
//! Sparse files keep their holes through the tar crate's sparse support, which reads the file
//! itself: a read error in a sparse file still fails the dump.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use tar::{Builder, EntryType, Header, HeaderMode};

use s3pipe::Failure;
use s3pipe::signals::Cancellation;

/// File systems files mode knows how to mount safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Ext,
    Xfs,
}

impl FsType {
    pub fn name(self) -> &'static str {
        match self {
            FsType::Ext => "ext4",
            FsType::Xfs => "xfs",
        }
    }

    /// The kernel driver and the options that keep a read-only mount from writing.
    fn mount_options(self) -> (&'static str, &'static str) {
        match self {
            FsType::Ext => ("ext4", "noload"),
            FsType::Xfs => ("xfs", "norecovery,nouuid"),
        }
    }
}

/// Recognises the file system from its superblock magic: ext2/3/4 (0xEF53 at 1080) or XFS
/// ("XFSB" at 0). Anything else, including a partition table, is not recognised.
pub fn detect(file: &File) -> Option<FsType> {
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; 2048];
    let mut got = 0;
    while got < head.len() {
        match file.read_at(&mut head[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    if got >= 4 && &head[..4] == b"XFSB" {
        return Some(FsType::Xfs);
    }
    if got >= 1082 && head[1080..1082] == [0x53, 0xEF] {
        return Some(FsType::Ext);
    }
    None
}

/// A read-only loop device over an image file, detached on drop.
#[derive(Debug)]
pub struct LoopDevice {
    pub path: PathBuf,
}

impl LoopDevice {
    pub fn attach(image: &Path) -> Result<Self, String> {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(image)
            .output()
            .map_err(|err| format!("cannot run losetup: {err}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup {}: {}",
                image.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(LoopDevice {
            path: PathBuf::from(path),
        })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// A private read-only mount, unmounted and its directory removed on drop.
#[derive(Debug)]
pub struct Mount {
    dir: Option<tempfile::TempDir>,
}

impl Mount {
    pub fn new(device: &Path, fs: FsType) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("blockdump-")
            .tempdir()
            .map_err(|err| format!("cannot create a mount point: {err}"))?;
        let (driver, options) = fs.mount_options();
        let flags = MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC
            | MsFlags::MS_NOATIME;
        mount(Some(device), dir.path(), Some(driver), flags, Some(options)).map_err(|err| {
            format!(
                "cannot mount {} read-only as {driver} ({options}): {}",
                device.display(),
                err.desc()
            )
        })?;
        tracing::info!(
            "mounted {} read-only at {}",
            device.display(),
            dir.path().display()
        );
        Ok(Mount { dir: Some(dir) })
    }

    pub fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/"))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            if let Err(err) = umount2(dir.path(), MntFlags::empty()) {
                tracing::warn!("unmount {}: {err}; detaching lazily", dir.path().display());
                let _ = umount2(dir.path(), MntFlags::MNT_DETACH);
            }
            let _ = dir.close();
        }
    }
}

/// What the walk reports.
#[derive(Debug, Default)]
pub struct WalkSummary {
    pub entries: u64,
    pub skipped: Vec<String>,
    /// With `--continue-on-error`: ranges of files read as zeros.
    pub bad: Vec<BadFileRange>,
}

/// A range of a file that could not be read and is zeros in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFileRange {
    /// The name in the archive.
    pub path: String,
    /// Offset in the file.
    pub offset: u64,
    pub length: u64,
}

/// Writes a tar archive of the tree at `root` to `out`.
pub fn archive<W: Write>(
    root: &Path,
    out: W,
    continue_on_error: bool,
    cancellation: &Cancellation,
    progress: &indicatif::ProgressBar,
) -> io::Result<WalkSummary> {
    let mut builder = Builder::new(out);
    builder.mode(HeaderMode::Complete);
    builder.follow_symlinks(false);
    builder.sparse(true);
    let mut walk = Walk {
        builder,
        links: HashMap::new(),
        summary: WalkSummary::default(),
        continue_on_error,
        cancellation,
        progress,
        root_dev: fs::symlink_metadata(root)?.dev(),
    };
    walk.entry(root, Path::new("."))?;
    walk.builder.finish()?;
    Ok(walk.summary)
}

struct Walk<'a, W: Write> {
    builder: Builder<W>,
    links: HashMap<(u64, u64), PathBuf>,
    summary: WalkSummary,
    continue_on_error: bool,
    cancellation: &'a Cancellation,
    progress: &'a indicatif::ProgressBar,
    root_dev: u64,
}

impl<W: Write> Walk<'_, W> {
    fn entry(&mut self, path: &Path, name: &Path) -> io::Result<()> {
        if self.cancellation.is_cancelled() {
            return Err(io::Error::other("cancelled"));
        }
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(err) => return self.unreadable(name, "cannot stat", err),
        };
        let ft = meta.file_type();
        if ft.is_socket() {
            // tar has no entry type for a socket; GNU tar skips them too.
            self.summary
                .skipped
                .push(format!("{} (socket)", name.display()));
            return Ok(());
        }
        self.xattrs(path, name)?;
        self.summary.entries += 1;
        if ft.is_dir() {
            // The root itself is "./", so that its owner, mode and attributes travel too.
            let dir_name = if name == Path::new(".") {
                PathBuf::from("./")
            } else {
                name.to_path_buf()
            };
            self.builder.append_dir(&dir_name, path)?;
            if meta.dev() != self.root_dev {
                return Ok(());
            }
            let children: io::Result<Vec<_>> =
                fs::read_dir(path).and_then(|dir| dir.map(|e| e.map(|e| e.file_name())).collect());
            let mut children = match children {
                Ok(children) => children,
                Err(err) => return self.unreadable(name, "cannot list", err),
            };
            children.sort();
            for child in children {
                let child_name = if name == Path::new(".") {
                    PathBuf::from(&child)
                } else {
                    name.join(&child)
                };
                self.entry(&path.join(&child), &child_name)?;
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(path)?;
            let mut header = Header::new_gnu();
            header.set_metadata_in_mode(&meta, HeaderMode::Complete);
            header.set_entry_type(EntryType::Symlink);
            header.set_size(0);
            self.builder.append_link(&mut header, name, &target)?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.links.get(&key) {
                    let mut header = Header::new_gnu();
                    header.set_metadata_in_mode(&meta, HeaderMode::Complete);
                    header.set_entry_type(EntryType::Link);
                    header.set_size(0);
                    let first = first.clone();
                    return self.builder.append_link(&mut header, name, &first);
                }
                self.links.insert(key, name.to_path_buf());
            }
            let mut file = match File::open(path) {
                Ok(file) => file,
                Err(err) => return self.unreadable(name, "cannot open", err),
            };
            let sparse = meta.blocks() * 512 < meta.len();
            if self.continue_on_error && !sparse {
                let mut header = Header::new_gnu();
                header.set_metadata_in_mode(&meta, HeaderMode::Complete);
                let reader = TolerantReader {
                    file,
                    len: meta.len(),
                    pos: 0,
                    name: name.display().to_string(),
                    bad: &mut self.summary.bad,
                };
                self.builder.append_data(
                    &mut header,
                    name,
                    io::BufReader::with_capacity(1 << 20, reader),
                )?;
            } else {
                self.builder
                    .append_file(name, &mut file)
                    .map_err(|err| with_name(err, name))?;
            }
            self.progress.inc(meta.len());
        } else {
            // FIFOs and device nodes: the tar crate writes their type and numbers.
            self.builder.append_path_with_name(path, name)?;
        }
        Ok(())
    }

    /// An entry that cannot be read at all: skipped and listed with `--continue-on-error`, else
    /// the end of the dump.
    fn unreadable(&mut self, name: &Path, what: &str, err: io::Error) -> io::Result<()> {
        if !self.continue_on_error {
            return Err(io::Error::new(
                err.kind(),
                format!("{what} {} in the file system: {err}", name.display()),
            ));
        }
        tracing::warn!("skipped {}: {what} it: {err}", name.display());
        self.summary
            .skipped
            .push(format!("{} ({what}: {err})", name.display()));
        Ok(())
    }

    /// A PAX header with the entry's extended attributes, if it has any.
    fn xattrs(&mut self, path: &Path, name: &Path) -> io::Result<()> {
        let names = match xattr::list(path) {
            Ok(names) => names,
            Err(err) if err.raw_os_error() == Some(nix::libc::ENOTSUP) => return Ok(()),
            Err(err) => return Err(err),
        };
        let mut records = Vec::new();
        for attr in names {
            let Some(value) = xattr::get(path, &attr)? else {
                continue;
            };
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(attr.as_bytes());
            pax_record(&mut records, &key, &value);
        }
        if records.is_empty() {
            return Ok(());
        }
        let mut header = Header::new_ustar();
        let mut pax_name = b"PaxHeaders/".to_vec();
        let base = name
            .file_name()
            .unwrap_or(OsStr::new("root"))
            .as_bytes()
            .iter()
            .copied()
            .take(80)
            .collect::<Vec<_>>();
        pax_name.extend_from_slice(&base);
        header.set_path(Path::new(OsStr::from_bytes(&pax_name)))?;
        header.set_entry_type(EntryType::XHeader);
        header.set_size(records.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        self.builder.append(&header, &records[..])
    }
}

fn with_name(err: io::Error, name: &Path) -> io::Error {
    if err.kind() == io::ErrorKind::BrokenPipe {
        return err;
    }
    io::Error::new(
        err.kind(),
        format!(
            "read error in {} in the file system: {err} (--continue-on-error pads it with zeros)",
            name.display()
        ),
    )
}

/// Granularity of the retries after a read error.
const SECTOR: u64 = 4096;

/// A file's content for the archive, whatever cannot be read replaced by zeros: it always yields
/// exactly `len` bytes, the size its tar header already promised (a file that shrank is padded
/// too). Reads at explicit offsets (`pread`), so that after an error the next sector is tried.
struct TolerantReader<'a> {
    file: File,
    len: u64,
    pos: u64,
    name: String,
    bad: &'a mut Vec<BadFileRange>,
}

impl TolerantReader<'_> {
    fn zeros(&mut self, buf: &mut [u8], err: &dyn std::fmt::Display) -> usize {
        buf.fill(0);
        let length = buf.len() as u64;
        tracing::warn!(
            "unreadable: {length} bytes at offset {} of {}: {err}",
            self.pos,
            self.name
        );
        match self.bad.last_mut() {
            Some(last) if last.path == self.name && last.offset + last.length == self.pos => {
                last.length += length
            }
            _ => self.bad.push(BadFileRange {
                path: self.name.clone(),
                offset: self.pos,
                length,
            }),
        }
        self.pos += length;
        buf.len()
    }
}

impl Read for TolerantReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.len - self.pos) as usize;
        if want == 0 {
            return Ok(0);
        }
        loop {
            match self.file.read_at(&mut buf[..want], self.pos) {
                Ok(0) => return Ok(self.zeros(&mut buf[..want], &"the file ended early")),
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    // Retry just up to the next sector boundary; zeros if that fails too.
                    let n = (SECTOR - self.pos % SECTOR).min(want as u64) as usize;
                    return match self.file.read_at(&mut buf[..n], self.pos) {
                        Ok(k) if k > 0 => {
                            self.pos += k as u64;
                            Ok(k)
                        }
                        _ => Ok(self.zeros(&mut buf[..n], &err)),
                    };
                }
            }
        }
    }
}

/// One PAX record, "LEN key=value\n", where LEN counts the whole record including itself.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Whether `dir` has any entry.
pub fn dir_is_empty(dir: &Path) -> io::Result<bool> {
    Ok(fs::read_dir(dir)?.next().is_none())
}

/// A restored directory's path, mtime and extended attributes, applied after its contents.
type DirAttrs = (PathBuf, u64, Vec<(Vec<u8>, Vec<u8>)>);

/// Extracts a tar archive into `dir`: ownership, modes, times, links, holes and extended
/// attributes (the tar crate applies attributes to regular files only; directories get theirs
/// here, along with their times, after their contents are in place).
pub fn extract<R: Read>(input: R, dir: &Path) -> Result<u64, Failure> {
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let mut dirs: Vec<DirAttrs> = Vec::new();
    let mut count = 0u64;
    let entries = archive
        .entries()
        .map_err(|err| Failure::verify(format!("not a readable tar archive: {err}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|err| Failure::verify(format!("corrupted tar archive: {err}")))?;
        let kind = entry.header().entry_type();
        let name = entry.path().map(|p| p.into_owned()).unwrap_or_default();
        if kind == EntryType::Directory {
            let mtime = entry.header().mtime().unwrap_or(0);
            let mut attrs = Vec::new();
            if let Ok(Some(exts)) = entry.pax_extensions() {
                for ext in exts.flatten() {
                    if let Some(key) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                        attrs.push((key.to_vec(), ext.value_bytes().to_vec()));
                    }
                }
            }
            let target = safe_join(dir, &name);
            if target.as_deref() == Some(dir) {
                // The root: the tar crate skips it; apply its owner and mode here.
                let header = entry.header();
                if let (Ok(uid), Ok(gid), Ok(mode)) = (header.uid(), header.gid(), header.mode()) {
                    let _ = std::os::unix::fs::chown(dir, Some(uid as u32), Some(gid as u32));
                    let _ = fs::set_permissions(
                        dir,
                        std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777),
                    );
                }
            }
            if let Some(target) = target {
                dirs.push((target, mtime, attrs));
            }
        }
        entry.unpack_in(dir).map_err(|err| {
            Failure::new(
                s3pipe::ExitCode::Failure,
                format!("cannot extract {}: {err}", name.display()),
            )
        })?;
        count += 1;
    }
    // Deepest first, so setting a directory's time is not undone by work inside it.
    for (path, mtime, attrs) in dirs.iter().rev() {
        for (key, value) in attrs {
            if let Err(err) = xattr::set(path, OsStr::from_bytes(key), value) {
                tracing::warn!(
                    "cannot set attribute {} on {}: {err}",
                    String::from_utf8_lossy(key),
                    path.display()
                );
            }
        }
        let time = nix::sys::time::TimeSpec::new(*mtime as i64, 0);
        let _ = nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &time,
            &time,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        );
    }
    Ok(count)
}

/// `dir` joined with an archive path, ignoring `.` and refusing `..` (as the tar crate does).
fn safe_join(dir: &Path, name: &Path) -> Option<PathBuf> {
    let mut out = dir.to_path_buf();
    for part in name.components() {
        match part {
            std::path::Component::Normal(p) => out.push(p),
            std::path::Component::ParentDir => return None,
            _ => {}
        }
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let mut out = Vec::new();
        pax_record(&mut out, b"SCHILY.xattr.user.a", b"v");
        let text = String::from_utf8(out.clone()).unwrap();
        let (len, _) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), out.len());
        let mut out = Vec::new();
        pax_record(&mut out, b"k", &[b'x'; 95]);
        let text = String::from_utf8(out.clone()).unwrap();
        let (len, _) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), out.len());
    }
}
