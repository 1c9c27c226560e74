//! Network namespaces and the netlink transport.
//!
//! * [`open_netns`] opens a netns file (`/var/run/netns/<name>`, `/proc/<pid>/ns/net`).
//! * [`NlSocket::open`] creates a netlink socket **inside** a netns: the calling thread
//!   enters it (`setns(CLONE_NEWNET)`), creates the socket and returns home at once
//!   ([`in_netns`]). A netlink socket stays bound to the netns it was created in, so every
//!   request after that runs from railvf's own netns.
//! * [`Msg`] builds a netlink request (header, family header, attributes, nests);
//!   [`NlSocket::request`] sends it and collects the answer, turning `NLMSG_ERROR` into
//!   [`NlError::Kernel`] with the kernel's extended-ack message when it gave one.
//! * [`attrs`] iterates over netlink attributes (`struct nlattr`).
//!
//! Everything is synchronous: a CNI plugin runs once and exits, so a runtime would only
//! cost CPU. Layouts follow `include/uapi/linux/netlink.h`.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use netlink_sys::{Socket, SocketAddr};
use nix::sched::CloneFlags;

/// `NLMSG_ERROR` (`include/uapi/linux/netlink.h`).
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`.
pub const NLMSG_DONE: u16 = 3;
/// `NLMSG_NOOP`.
pub const NLMSG_NOOP: u16 = 1;
/// `NLMSG_OVERRUN`.
pub const NLMSG_OVERRUN: u16 = 4;

pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_MULTI: u16 = 0x02;
pub const NLM_F_ACK: u16 = 0x04;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_ROOT: u16 = 0x100;
pub const NLM_F_MATCH: u16 = 0x200;
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
/// On an `NLMSG_ERROR`: the echoed request was capped to its header.
pub const NLM_F_CAPPED: u16 = 0x100;
/// On an `NLMSG_ERROR`: extended-ack TLVs follow the echoed request.
pub const NLM_F_ACK_TLVS: u16 = 0x200;

/// `NLMSGERR_ATTR_MSG`: the extended-ack error string.
pub const NLMSGERR_ATTR_MSG: u16 = 1;

/// `NLA_F_NESTED`.
pub const NLA_F_NESTED: u16 = 1 << 15;
/// `NLA_F_NET_BYTEORDER`.
pub const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
/// `NLA_TYPE_MASK`.
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

/// `NETLINK_ROUTE`.
pub const NETLINK_ROUTE: isize = 0;
/// `NETLINK_RDMA` (`include/uapi/linux/netlink.h`: 20).
pub const NETLINK_RDMA: isize = 20;

/// Length of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// Length of `struct nlattr`.
pub const NLA_HDRLEN: usize = 4;

/// Rounds up to the 4-byte netlink alignment (`NLMSG_ALIGN` / `NLA_ALIGN`).
pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Opens a netns file read-only (close-on-exec, as std always does) and non-blocking: a
/// FIFO where the netns file should be would otherwise block `open` for good, with the
/// VF's lock held by DEL. `setns` then refuses such a file.
pub fn open_netns(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// Why `setns(CLONE_NEWNET)` refused a namespace file, worded for `CNI_NETNS` checks.
pub fn setns_refusal(e: &io::Error) -> String {
    if e.raw_os_error() == Some(libc::EINVAL) {
        "it is a namespace of another kind (mount, pid, …), not a network namespace".into()
    } else {
        format!("setns: {e}")
    }
}

/// Opens `path` if it is a file on nsfs (some namespace: only `setns` tells which kind);
/// `Err` says what it is instead. Never blocks: a FIFO is refused before it is opened, and
/// it is opened non-blocking.
pub fn open_nsfs(path: &Path) -> Result<File, String> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let md = match std::fs::metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err("it does not exist".into()),
        Err(e) => return Err(format!("it cannot be read: {e}")),
    };
    let ft = md.file_type();
    if !ft.is_file() {
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device node"
        } else {
            "not a regular file"
        };
        return Err(format!("it is {kind}, not a network namespace"));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("it cannot be opened: {e}"))?;
    match nix::sys::statfs::fstatfs(&f) {
        Ok(st) if st.filesystem_type() == nix::sys::statfs::NSFS_MAGIC => {}
        Ok(_) => return Err("it is an ordinary file, not a namespace (nsfs) file".into()),
        Err(e) => return Err(format!("statfs: {e}")),
    }
    Ok(f)
}

/// Runs `f` with the calling thread in the netns of the file `ns`, and returns what `f`
/// returned; the thread is back in its own netns before this returns (or unwinds).
///
/// `setns` moves only the calling thread, and only for `f` — in railvf, creating a socket,
/// which stays bound to the netns it was created in. (A helper thread would isolate the
/// switch too, but starting one costs a noticeable share of a whole CNI call.) If the thread
/// cannot return to its own netns the process aborts: carrying on in the wrong namespace
/// would move or configure the wrong links.
///
/// `Err` carries the `setns` failure (`EINVAL`: the file is not a network namespace).
pub fn in_netns<T>(ns: &File, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let home = File::open("/proc/thread-self/ns/net")?;
    nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    let _home = ReturnHome(home);
    f()
}

/// Puts the thread back into its own netns when dropped.
struct ReturnHome(File);

impl Drop for ReturnHome {
    fn drop(&mut self) {
        if let Err(e) = nix::sched::setns(self.0.as_fd(), CloneFlags::CLONE_NEWNET) {
            eprintln!("railvf: cannot return to its own network namespace ({e}); aborting");
            std::process::abort();
        }
    }
}

/// Why a netlink request failed.
#[derive(Debug)]
pub enum NlError {
    /// The socket itself failed (send/recv).
    Io(io::Error),
    /// The kernel answered with a negative errno, maybe with an extended-ack message.
    Kernel { errno: i32, msg: Option<String> },
    /// The kernel's answer could not be decoded.
    Decode(String),
}

impl NlError {
    /// The errno, when the kernel (or the socket) gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NlError::Io(e) => e.raw_os_error(),
            NlError::Kernel { errno, .. } => Some(*errno),
            NlError::Decode(_) => None,
        }
    }

    /// The extended-ack text, if any.
    pub fn ext_ack(&self) -> Option<&str> {
        match self {
            NlError::Kernel { msg, .. } => msg.as_deref(),
            _ => None,
        }
    }

    /// As an `io::Error` (the errno, or `InvalidData` for a decode error).
    pub fn to_io(&self) -> io::Error {
        match self {
            NlError::Io(e) => io::Error::new(e.kind(), e.to_string()),
            NlError::Kernel { errno, .. } => io::Error::from_raw_os_error(*errno),
            NlError::Decode(d) => io::Error::new(io::ErrorKind::InvalidData, d.clone()),
        }
    }
}

impl std::fmt::Display for NlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NlError::Io(e) => write!(f, "netlink socket: {e}"),
            NlError::Kernel { errno, msg } => {
                write!(f, "{}", io::Error::from_raw_os_error(*errno))?;
                if let Some(m) = msg {
                    write!(f, " (kernel: {m})")?;
                }
                Ok(())
            }
            NlError::Decode(d) => write!(f, "undecodable netlink answer: {d}"),
        }
    }
}

/// One message of the kernel's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub ty: u16,
    pub flags: u16,
    /// Everything after `struct nlmsghdr`.
    pub payload: Vec<u8>,
}

/// A netlink request under construction: `struct nlmsghdr`, then the family header, then
/// attributes. Sequence number and length are filled in by [`NlSocket::request`].
#[derive(Clone, Debug)]
pub struct Msg {
    buf: Vec<u8>,
    dump: bool,
}

impl Msg {
    pub fn new(ty: u16, flags: u16) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_seq
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
        Msg {
            buf,
            dump: flags & NLM_F_DUMP == NLM_F_DUMP,
        }
    }

    /// Whether this is a dump request (answered by `NLM_F_MULTI` messages and `NLMSG_DONE`).
    pub fn is_dump(&self) -> bool {
        self.dump
    }

    /// Appends a fixed family header (`struct ifinfomsg`, …), padded to 4 bytes.
    pub fn header(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        pad4(&mut self.buf);
        self
    }

    pub fn attr(&mut self, ty: u16, value: &[u8]) -> &mut Self {
        put_attr(&mut self.buf, ty, value);
        self
    }

    pub fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// A NUL-terminated string attribute (`NLA_NUL_STRING`; also fine for `NLA_STRING`).
    pub fn attr_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v)
    }

    /// Appends already-encoded attributes (e.g. a nest built by [`put_attr`]/[`nest_begin`]).
    pub fn raw_attrs(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        pad4(&mut self.buf);
        self
    }

    /// The request bytes with `seq` and the final length filled in.
    pub fn finish(&self, seq: u32) -> Vec<u8> {
        let mut out = self.buf.clone();
        let len = out.len() as u32;
        out[0..4].copy_from_slice(&len.to_ne_bytes());
        out[8..12].copy_from_slice(&seq.to_ne_bytes());
        out
    }

    /// Message type, as given to [`Msg::new`].
    pub fn ty(&self) -> u16 {
        u16::from_ne_bytes([self.buf[4], self.buf[5]])
    }

    /// Flags, including `NLM_F_REQUEST`.
    pub fn flags(&self) -> u16 {
        u16::from_ne_bytes([self.buf[6], self.buf[7]])
    }
}

fn pad4(buf: &mut Vec<u8>) {
    let n = align4(buf.len()) - buf.len();
    buf.extend(std::iter::repeat_n(0u8, n));
}

/// Appends one attribute (`struct nlattr` + value + padding) to `buf`.
pub fn put_attr(buf: &mut Vec<u8>, ty: u16, value: &[u8]) {
    let len = (NLA_HDRLEN + value.len()) as u16;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(value);
    pad4(buf);
}

/// Starts a nested attribute of type `ty` (`NLA_F_NESTED` is added); returns its offset
/// for [`nest_end`].
pub fn nest_begin(buf: &mut Vec<u8>, ty: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    at
}

/// Closes the nest opened at `at`: writes its length.
pub fn nest_end(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u16;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

/// Iterates over the attributes in `buf`: `(type without flags, value)`. Stops at the first
/// malformed attribute (a length that does not fit), as the kernel's `nla_for_each_attr` does.
pub fn attrs(buf: &[u8]) -> Attrs<'_> {
    Attrs { buf }
}

pub struct Attrs<'a> {
    buf: &'a [u8],
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < NLA_HDRLEN {
            return None;
        }
        let len = u16::from_ne_bytes([self.buf[0], self.buf[1]]) as usize;
        let ty = u16::from_ne_bytes([self.buf[2], self.buf[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > self.buf.len() {
            self.buf = &[];
            return None;
        }
        let value = &self.buf[NLA_HDRLEN..len];
        let next = align4(len).min(self.buf.len());
        self.buf = &self.buf[next..];
        Some((ty, value))
    }
}

/// The first attribute of type `ty` in `buf`.
pub fn find_attr(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, v)| v)
}

pub fn get_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

pub fn get_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?))
}

/// A string attribute, without its NUL terminator.
pub fn get_str(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// One message of a datagram, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawMsg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// Everything after `struct nlmsghdr`.
    pub payload: &'a [u8],
}

/// Splits one datagram into its messages.
pub fn split_messages(mut buf: &[u8]) -> Result<Vec<RawMsg<'_>>, NlError> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        let flags = u16::from_ne_bytes([buf[6], buf[7]]);
        let seq = u32::from_ne_bytes(buf[8..12].try_into().expect("4 bytes"));
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(NlError::Decode(format!(
                "netlink message length {len} does not fit in the {} bytes received",
                buf.len()
            )));
        }
        out.push(RawMsg {
            ty,
            flags,
            seq,
            payload: &buf[NLMSG_HDRLEN..len],
        });
        buf = &buf[align4(len).min(buf.len())..];
    }
    Ok(out)
}

/// Decodes the payload of an `NLMSG_ERROR` (`struct nlmsgerr` + extended-ack TLVs).
/// `Ok(())` is an ACK.
pub fn decode_error(flags: u16, payload: &[u8]) -> Result<(), NlError> {
    let code = payload
        .get(..4)
        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| NlError::Decode("NLMSG_ERROR shorter than its error code".into()))?;
    if code == 0 {
        return Ok(());
    }
    let mut msg = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        // The echoed request: only its header when capped, else the whole message.
        let echoed = if flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            payload
                .get(4..8)
                .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")) as usize)
                .unwrap_or(NLMSG_HDRLEN)
        };
        if let Some(tlvs) = payload.get(4 + align4(echoed)..) {
            msg = find_attr(tlvs, NLMSGERR_ATTR_MSG)
                .map(get_str)
                .filter(|s| !s.is_empty());
        }
    }
    Err(NlError::Kernel {
        errno: code.saturating_neg(),
        msg,
    })
}

/// Decodes the payload of an `NLMSG_DONE`: a dump's final error code, with the extended-ack
/// TLVs right after it (no echoed request, unlike `NLMSG_ERROR`).
pub fn decode_done(flags: u16, payload: &[u8]) -> Result<(), NlError> {
    let Some(code) = payload.get(..4) else {
        return Ok(()); // old kernels may send an empty DONE
    };
    let code = i32::from_ne_bytes(code.try_into().expect("4 bytes"));
    if code >= 0 {
        return Ok(());
    }
    let msg = if flags & NLM_F_ACK_TLVS != 0 {
        find_attr(&payload[4..], NLMSGERR_ATTR_MSG)
            .map(get_str)
            .filter(|s| !s.is_empty())
    } else {
        None
    };
    Err(NlError::Kernel {
        errno: code.saturating_neg(),
        msg,
    })
}

/// A synchronous netlink socket bound to the netns it was created in.
#[derive(Debug)]
pub struct NlSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl NlSocket {
    /// A socket of `protocol` in the caller's netns (`ns` = `None`) or in the netns of the
    /// file `ns` (created from inside it, see [`in_netns`]).
    ///
    /// `Err` from `setns` comes back as [`OpenError::Setns`], from `socket()` as
    /// [`OpenError::Socket`] (`EPROTONOSUPPORT`: no such netlink family in this kernel).
    pub fn open(protocol: isize, ns: Option<&File>) -> Result<Self, OpenError> {
        let sock = match ns {
            None => new_socket(protocol).map_err(OpenError::Socket)?,
            Some(file) => {
                let r =
                    in_netns(file, move || Ok(new_socket(protocol))).map_err(OpenError::Setns)?;
                r.map_err(OpenError::Socket)?
            }
        };
        Ok(NlSocket {
            sock,
            seq: 0,
            buf: Vec::with_capacity(32 * 1024),
        })
    }

    /// Sends `msg` and returns the data messages of the answer (none for a plain ACK).
    /// Adds `NLM_F_ACK` to non-dump requests so every request ends with an ACK or an error.
    pub fn request(&mut self, msg: &Msg) -> Result<Vec<Reply>, NlError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (replies, interrupted) = self.request_once(msg, msg.is_dump())?;
            // NLM_F_DUMP_INTR: the table changed mid-dump; ask again (a few times).
            if !interrupted || attempts >= 3 {
                return Ok(replies);
            }
        }
    }

    fn request_once(&mut self, msg: &Msg, dump: bool) -> Result<(Vec<Reply>, bool), NlError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut m = msg.clone();
        if !dump {
            let f = m.flags() | NLM_F_ACK;
            m.buf[6..8].copy_from_slice(&f.to_ne_bytes());
        }
        let bytes = m.finish(seq);
        self.sock.send(&bytes, 0).map_err(NlError::Io)?;

        let mut replies = Vec::new();
        let mut interrupted = false;
        loop {
            self.recv_datagram()?;
            let mut done = false;
            for RawMsg {
                ty,
                flags,
                seq: mseq,
                payload,
            } in split_messages(&self.buf)?
            {
                if mseq != seq {
                    continue; // a stale answer to an earlier request
                }
                if flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match ty {
                    NLMSG_NOOP => {}
                    NLMSG_ERROR => {
                        decode_error(flags, payload)?;
                        done = true;
                    }
                    NLMSG_DONE => {
                        // A dump may end with an error code in NLMSG_DONE.
                        decode_done(flags, payload)?;
                        done = true;
                    }
                    NLMSG_OVERRUN => {
                        return Err(NlError::Decode("netlink overrun".into()));
                    }
                    _ => {
                        replies.push(Reply {
                            ty,
                            flags,
                            payload: payload.to_vec(),
                        });
                    }
                }
            }
            if done {
                return Ok((replies, interrupted));
            }
        }
    }

    /// Reads one whole datagram into `self.buf`, growing it when the datagram is larger.
    fn recv_datagram(&mut self) -> Result<(), NlError> {
        loop {
            self.buf.clear();
            let want = self
                .sock
                .recv(&mut self.buf, libc::MSG_PEEK | libc::MSG_TRUNC)
                .map_err(NlError::Io);
            let want = match want {
                Err(NlError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => other?,
            };
            self.buf.clear();
            if want > self.buf.capacity() {
                self.buf.reserve(want);
            }
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NlError::Io(e)),
            }
        }
    }
}

fn new_socket(protocol: isize) -> io::Result<Socket> {
    let sock = Socket::new(protocol)?;
    sock.connect(&SocketAddr::new(0, 0))?;
    // Both are best effort: errors still come back without them, only less readable.
    let _ = sock.set_ext_ack(true);
    let _ = sock.set_cap_ack(true);
    if protocol == NETLINK_ROUTE {
        // Lets the kernel filter dumps by ifindex and reject malformed GETs.
        let _ = sock.set_netlink_get_strict_chk(true);
    }
    Ok(sock)
}

/// Why [`NlSocket::open`] failed.
#[derive(Debug)]
pub enum OpenError {
    /// `setns(CLONE_NEWNET)` into the netns file failed (or railvf's own netns could not be
    /// opened to come back to).
    Setns(io::Error),
    /// `socket(AF_NETLINK, …)` failed.
    Socket(io::Error),
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::rtnl::Rtnl;
    use super::super::{LinkOps, Netns};

    /// A FIFO where the pod's netns file should be: the look-up fails at once instead of
    /// waiting in `open` for a writer that never comes (as DEL would, holding the VF's lock).
    #[test]
    fn a_fifo_in_place_of_a_netns_file_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("netns");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p = fifo.clone();
        std::thread::spawn(move || {
            let r = Rtnl::new().link_by_name(&Netns::path(&p), "net1");
            let _ = tx.send(r.map(|_| ()).map_err(|e| e.to_string()));
        });
        let r = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("looking up a link in a FIFO \"netns\" blocked");
        let e = r.expect_err("a FIFO is no netns");
        assert!(e.contains(&fifo.display().to_string()), "{e}");
    }
}
