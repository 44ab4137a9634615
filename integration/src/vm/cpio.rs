//! A minimal writer for the `newc` cpio format the kernel unpacks as an initramfs
//! (`Documentation/driver-api/early-userspace/buffer-format.rst`): directories, regular
//! files, symlinks and character devices, no hard links. Written by hand: the format is a
//! fixed ASCII header, the name and the data, each padded to four bytes.

use std::io::{self, Write};

/// `S_IFDIR`, `S_IFREG`, `S_IFLNK`, `S_IFCHR` as in `stat(2)`.
const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Streams entries into a `newc` archive. Call [`CpioWriter::finish`] to write the trailer.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// A writer appending to `out`.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            // Inode numbers only need to be distinct (the kernel uses them for hard links).
            ino: 1,
            written: 0,
        }
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        if name.is_empty() || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad cpio entry name {name:?}"),
            ));
        }
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: larger than 4 GiB"),
            )
        })?;
        let name_len = u32::try_from(name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name too long"))?;
        let ino = self.ino;
        self.ino += 1;
        let nlink = if mode & S_IFMT == S_IFDIR { 2 } else { 1 };
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
        // rdevmajor, rdevminor, namesize, check
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{name_len:08x}{:08x}",
            0, 0, 0, 0, 0, rdev.0, rdev.1, 0
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    /// A directory with permissions `perm` (e.g. `0o755`).
    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | (perm & 0o7777), (0, 0), &[])
    }

    /// A regular file with permissions `perm` and content `data`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | (perm & 0o7777), (0, 0), data)
    }

    /// A symbolic link `name` pointing at `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    /// A character device node (e.g. `/dev/console`, 5:1).
    pub fn char_device(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | (perm & 0o7777), (major, minor), &[])
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_padded_and_trailed() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("bin", 0o755).expect("dir");
        w.file("/bin/x", 0o755, b"abcde").expect("file");
        w.symlink("sh", "bin/x").expect("link");
        w.char_device("dev/console", 0o600, 5, 1).expect("dev");
        let buf = w.finish().expect("finish");
        assert_eq!(buf.len() % 4, 0);
        assert!(buf.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&buf);
        assert!(text.contains("bin/x\0"));
        assert!(text.contains("abcde"));
        assert!(text.contains("TRAILER!!!\0"));
        // The file header: mode 0100755, size 5.
        let at = text.find("bin/x\0").expect("name") - 110;
        assert_eq!(&text[at + 14..at + 22], "000081ed");
        assert_eq!(&text[at + 54..at + 62], "00000005");
        // The device header carries rdev 5:1.
        let at = text.find("dev/console\0").expect("name") - 110;
        assert_eq!(&text[at + 78..at + 86], "00000005");
        assert_eq!(&text[at + 86..at + 94], "00000001");
    }

    #[test]
    fn cpio_tool_lists_the_archive() {
        testkit::require_tool("cpio");
        let mut w = CpioWriter::new(Vec::new());
        w.dir("etc", 0o755).expect("dir");
        w.file("etc/hello", 0o644, b"hi\n").expect("file");
        w.symlink("etc/link", "hello").expect("link");
        let buf = w.finish().expect("finish");
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("cpio");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&buf)
            .expect("write");
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .collect::<Vec<_>>(),
            ["etc", "etc/hello", "etc/link"]
        );
    }
}
