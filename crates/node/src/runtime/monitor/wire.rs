//! gVisor's remote-sink wire format, as far as the node reads it: the handshake, the 8-byte
//! message header, and the protobuf payloads of the trace points the node enables, decoded
//! into the node's JSON event (see `docs/runtime-monitoring.md`).
//!
//! The messages are this project's own definitions, with the field numbers of gVisor's
//! `pkg/sentry/seccheck/points/*.proto` (protocol version 1); fields the node does not read
//! are skipped by the decoder. Everything here comes from the sentry, which is untrusted: sizes
//! are bounded and nothing is assumed about the values.

use prost::Message;
use serde_json::{Map, Value, json};

/// The protocol version the node speaks (and the lowest it accepts from a peer).
pub const VERSION: u32 = 1;

/// Size of the header the node writes and the smallest it accepts.
pub const HEADER_SIZE: usize = 8;

/// The longest string copied into an event (longer ones are cut, marked with `…`).
const MAX_STRING: usize = 4096;
/// The most list items (argv) copied into an event.
const MAX_ITEMS: usize = 256;

/// `Handshake`: each side sends its version once, on connection.
#[derive(Clone, PartialEq, Message)]
pub struct Handshake {
    /// Protocol version.
    #[prost(uint32, tag = "1")]
    pub version: u32,
}

/// The header before every payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes of header (payload follows).
    pub size: usize,
    /// Which message the payload is (gVisor's `MessageType`).
    pub message_type: u16,
    /// Points the sentry could not send so far (wraps at `u32::MAX`).
    pub dropped: u32,
}

impl Header {
    /// Parse a header from the start of a message; `None` when it is too short or names a
    /// size beyond the message.
    pub fn parse(msg: &[u8]) -> Option<Header> {
        if msg.len() < HEADER_SIZE {
            return None;
        }
        let size = usize::from(u16::from_le_bytes([msg[0], msg[1]]));
        if size < HEADER_SIZE || size > msg.len() {
            return None;
        }
        Some(Header {
            size,
            message_type: u16::from_le_bytes([msg[2], msg[3]]),
            dropped: u32::from_le_bytes([msg[4], msg[5], msg[6], msg[7]]),
        })
    }
}

#[derive(Clone, PartialEq, Message)]
struct Credentials {
    #[prost(uint32, tag = "1")]
    real_uid: u32,
    #[prost(uint32, tag = "2")]
    effective_uid: u32,
    #[prost(uint32, tag = "4")]
    real_gid: u32,
    #[prost(uint32, tag = "5")]
    effective_gid: u32,
}

#[derive(Clone, PartialEq, Message)]
struct ContextData {
    #[prost(int64, tag = "1")]
    time_ns: i64,
    #[prost(int32, tag = "2")]
    thread_id: i32,
    #[prost(int32, tag = "4")]
    thread_group_id: i32,
    #[prost(string, tag = "6")]
    container_id: String,
    #[prost(message, optional, tag = "7")]
    credentials: Option<Credentials>,
    #[prost(string, tag = "8")]
    cwd: String,
    #[prost(string, tag = "9")]
    process_name: String,
}

#[derive(Clone, PartialEq, Message)]
struct Exit {
    #[prost(int64, tag = "1")]
    result: i64,
    #[prost(int64, tag = "2")]
    errorno: i64,
}

/// The part every syscall message shares: context (1), exit (2, absent at enter), sysno (3).
#[derive(Clone, PartialEq, Message)]
struct SyscallCommon {
    #[prost(message, optional, tag = "1")]
    context_data: Option<ContextData>,
    #[prost(message, optional, tag = "2")]
    exit: Option<Exit>,
    #[prost(uint64, tag = "3")]
    sysno: u64,
}

/// Open (open, openat, creat).
#[derive(Clone, PartialEq, Message)]
struct Open {
    #[prost(int64, tag = "4")]
    fd: i64,
    #[prost(string, tag = "5")]
    fd_path: String,
    #[prost(string, tag = "6")]
    pathname: String,
    #[prost(uint32, tag = "7")]
    flags: u32,
    #[prost(uint32, tag = "8")]
    mode: u32,
}

/// Connect, and Bind and Accept, whose fd is an int32 on the wire (the same varint).
#[derive(Clone, PartialEq, Message)]
struct SocketAddress {
    #[prost(int64, tag = "4")]
    fd: i64,
    #[prost(string, tag = "5")]
    fd_path: String,
    #[prost(bytes = "vec", tag = "6")]
    address: Vec<u8>,
    #[prost(int32, tag = "7")]
    flags: i32,
}

/// Execve (execve, execveat).
#[derive(Clone, PartialEq, Message)]
struct Execve {
    #[prost(int64, tag = "4")]
    fd: i64,
    #[prost(string, tag = "5")]
    fd_path: String,
    #[prost(string, tag = "6")]
    pathname: String,
    #[prost(string, repeated, tag = "7")]
    argv: Vec<String>,
    #[prost(uint32, tag = "9")]
    flags: u32,
}

/// Socket.
#[derive(Clone, PartialEq, Message)]
struct Socket {
    #[prost(int32, tag = "4")]
    domain: i32,
    #[prost(int32, tag = "5")]
    r#type: i32,
    #[prost(int32, tag = "6")]
    protocol: i32,
}

/// Chdir (chdir, fchdir) and Chroot (pathname at 4, no fd).
#[derive(Clone, PartialEq, Message)]
struct Chdir {
    #[prost(int64, tag = "4")]
    fd: i64,
    #[prost(string, tag = "5")]
    fd_path: String,
    #[prost(string, tag = "6")]
    pathname: String,
}

#[derive(Clone, PartialEq, Message)]
struct Chroot {
    #[prost(string, tag = "4")]
    pathname: String,
}

/// Setid (setuid, setgid, setsid) and Setresid.
#[derive(Clone, PartialEq, Message)]
struct Setid {
    #[prost(uint32, tag = "4")]
    id: u32,
    #[prost(uint32, tag = "5")]
    eid: u32,
    #[prost(uint32, tag = "6")]
    sid: u32,
}

/// Clone (the syscall).
#[derive(Clone, PartialEq, Message)]
struct CloneCall {
    #[prost(uint64, tag = "4")]
    flags: u64,
    #[prost(uint64, tag = "6")]
    new_tid: u64,
}

/// container/start.
#[derive(Clone, PartialEq, Message)]
struct ContainerStart {
    #[prost(message, optional, tag = "1")]
    context_data: Option<ContextData>,
    #[prost(string, tag = "2")]
    id: String,
    #[prost(string, tag = "3")]
    cwd: String,
    #[prost(string, repeated, tag = "4")]
    args: Vec<String>,
    #[prost(bool, tag = "6")]
    terminal: bool,
}

/// sentry/clone.
#[derive(Clone, PartialEq, Message)]
struct SentryClone {
    #[prost(message, optional, tag = "1")]
    context_data: Option<ContextData>,
    #[prost(int32, tag = "3")]
    created_thread_id: i32,
    #[prost(int32, tag = "4")]
    created_thread_group_id: i32,
    #[prost(uint64, tag = "6")]
    flags: u64,
}

/// sentry/execve.
#[derive(Clone, PartialEq, Message)]
struct SentryExecve {
    #[prost(message, optional, tag = "1")]
    context_data: Option<ContextData>,
    #[prost(string, tag = "2")]
    binary_path: String,
    #[prost(string, repeated, tag = "3")]
    argv: Vec<String>,
    #[prost(uint32, tag = "5")]
    binary_mode: u32,
    #[prost(uint32, tag = "6")]
    binary_uid: u32,
    #[prost(uint32, tag = "7")]
    binary_gid: u32,
}

/// sentry/exit_notify_parent and sentry/task_exit.
#[derive(Clone, PartialEq, Message)]
struct SentryExit {
    #[prost(message, optional, tag = "1")]
    context_data: Option<ContextData>,
    #[prost(int32, tag = "2")]
    exit_status: i32,
}

// gVisor's MessageType values of the messages the node decodes.
const CONTAINER_START: u16 = 1;
const SENTRY_CLONE: u16 = 2;
const SENTRY_EXEC: u16 = 3;
const SENTRY_EXIT_NOTIFY_PARENT: u16 = 4;
const SENTRY_TASK_EXIT: u16 = 5;
const SYSCALL_OPEN: u16 = 7;
const SYSCALL_CONNECT: u16 = 10;
const SYSCALL_EXECVE: u16 = 11;
const SYSCALL_SOCKET: u16 = 12;
const SYSCALL_CHDIR: u16 = 13;
const SYSCALL_SETID: u16 = 14;
const SYSCALL_SETRESID: u16 = 15;
const SYSCALL_CHROOT: u16 = 21;
const SYSCALL_CLONE: u16 = 23;
const SYSCALL_BIND: u16 = 24;
const SYSCALL_ACCEPT: u16 = 25;
const SYSCALL_FORK: u16 = 29;

fn text(s: &str) -> Value {
    if s.len() <= MAX_STRING {
        return Value::String(s.to_string());
    }
    let mut end = MAX_STRING;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Value::String(format!("{}…", &s[..end]))
}

fn list(items: &[String]) -> Value {
    Value::Array(items.iter().take(MAX_ITEMS).map(|s| text(s)).collect())
}

/// A socket address as `ip:port`, `[ip6]:port`, a unix path (`@name` when abstract), or hex.
pub fn sockaddr(b: &[u8]) -> String {
    let family = (b.len() >= 2).then(|| u16::from_le_bytes([b[0], b[1]]));
    match family {
        Some(2) if b.len() >= 8 => {
            let port = u16::from_be_bytes([b[2], b[3]]);
            format!("{}.{}.{}.{}:{port}", b[4], b[5], b[6], b[7])
        }
        Some(10) if b.len() >= 24 => {
            let port = u16::from_be_bytes([b[2], b[3]]);
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[8..24]);
            format!("[{}]:{port}", std::net::Ipv6Addr::from(octets))
        }
        Some(1) => {
            let path = &b[2..];
            match path.first() {
                Some(0) => format!("@{}", String::from_utf8_lossy(&path[1..])),
                _ => {
                    let end = path.iter().position(|&c| c == 0).unwrap_or(path.len());
                    String::from_utf8_lossy(&path[..end]).into_owned()
                }
            }
        }
        _ => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

/// The name of a syscall number on this architecture (the syscalls the node enables).
pub fn syscall_name(sysno: u64) -> Option<&'static str> {
    super::points::SYSCALLS
        .iter()
        .find(|(_, n)| *n == sysno)
        .map(|(name, _)| *name)
}

fn context(out: &mut Map<String, Value>, c: Option<&ContextData>) {
    let Some(c) = c else { return };
    let time = k8s_openapi::jiff::Timestamp::from_nanosecond(i128::from(c.time_ns))
        .map(|t| t.to_string())
        .unwrap_or_default();
    out.insert("time".into(), Value::String(time));
    out.insert("container".into(), text(&c.container_id));
    out.insert("pid".into(), json!(c.thread_group_id));
    out.insert("tid".into(), json!(c.thread_id));
    out.insert("process".into(), text(&c.process_name));
    out.insert("cwd".into(), text(&c.cwd));
    if let Some(cr) = &c.credentials {
        out.insert("uid".into(), json!(cr.effective_uid));
        out.insert("gid".into(), json!(cr.effective_gid));
    }
}

fn decode_as<M: Message + Default>(payload: &[u8]) -> Option<M> {
    M::decode(payload).ok()
}

/// Decode one payload into the node's JSON event; `None` when the type is not one the node
/// decodes or the payload is malformed.
pub fn decode(message_type: u16, payload: &[u8]) -> Option<Value> {
    let mut out = Map::new();
    // Placeholders keep the leading keys in one order in every event.
    out.insert("time".into(), Value::Null);
    out.insert("event".into(), Value::Null);
    match message_type {
        CONTAINER_START => {
            let m: ContainerStart = decode_as(payload)?;
            context(&mut out, m.context_data.as_ref());
            out.insert("event".into(), "container/start".into());
            out.insert("id".into(), text(&m.id));
            out.insert("argv".into(), list(&m.args));
            out.insert("terminal".into(), m.terminal.into());
        }
        SENTRY_CLONE => {
            let m: SentryClone = decode_as(payload)?;
            context(&mut out, m.context_data.as_ref());
            out.insert("event".into(), "sentry/clone".into());
            out.insert("childPid".into(), json!(m.created_thread_group_id));
            out.insert("childTid".into(), json!(m.created_thread_id));
            out.insert("flags".into(), json!(m.flags));
        }
        SENTRY_EXEC => {
            let m: SentryExecve = decode_as(payload)?;
            context(&mut out, m.context_data.as_ref());
            out.insert("event".into(), "sentry/execve".into());
            out.insert("path".into(), text(&m.binary_path));
            out.insert("argv".into(), list(&m.argv));
            out.insert("mode".into(), json!(m.binary_mode));
            out.insert("fileUid".into(), json!(m.binary_uid));
            out.insert("fileGid".into(), json!(m.binary_gid));
        }
        SENTRY_EXIT_NOTIFY_PARENT | SENTRY_TASK_EXIT => {
            let m: SentryExit = decode_as(payload)?;
            context(&mut out, m.context_data.as_ref());
            let name = if message_type == SENTRY_TASK_EXIT {
                "sentry/task_exit"
            } else {
                "sentry/exit_notify_parent"
            };
            out.insert("event".into(), name.into());
            out.insert("exitStatus".into(), json!(m.exit_status));
        }
        SYSCALL_OPEN | SYSCALL_CONNECT | SYSCALL_EXECVE | SYSCALL_SOCKET | SYSCALL_CHDIR
        | SYSCALL_SETID | SYSCALL_SETRESID | SYSCALL_CHROOT | SYSCALL_CLONE | SYSCALL_BIND
        | SYSCALL_ACCEPT | SYSCALL_FORK => {
            let common: SyscallCommon = decode_as(payload)?;
            context(&mut out, common.context_data.as_ref());
            let name = syscall_name(common.sysno)
                .map(str::to_string)
                .unwrap_or_else(|| format!("sysno/{}", common.sysno));
            let phase = if common.exit.is_some() {
                "exit"
            } else {
                "enter"
            };
            out.insert("event".into(), format!("syscall/{name}/{phase}").into());
            syscall_fields(&mut out, message_type, payload)?;
            if let Some(exit) = common.exit {
                out.insert("result".into(), json!(exit.result));
                out.insert("errno".into(), json!(exit.errorno));
            }
        }
        _ => return None,
    }
    Some(Value::Object(out))
}

fn syscall_fields(out: &mut Map<String, Value>, message_type: u16, payload: &[u8]) -> Option<()> {
    let fd_path = |out: &mut Map<String, Value>, p: &str| {
        if !p.is_empty() {
            out.insert("fdPath".into(), text(p));
        }
    };
    match message_type {
        SYSCALL_OPEN => {
            let m: Open = decode_as(payload)?;
            out.insert("fd".into(), json!(m.fd));
            fd_path(out, &m.fd_path);
            out.insert("path".into(), text(&m.pathname));
            out.insert("flags".into(), json!(m.flags));
            out.insert("mode".into(), json!(m.mode));
        }
        SYSCALL_CONNECT | SYSCALL_BIND | SYSCALL_ACCEPT => {
            let m: SocketAddress = decode_as(payload)?;
            out.insert("fd".into(), json!(m.fd));
            fd_path(out, &m.fd_path);
            if !m.address.is_empty() {
                out.insert("address".into(), text(&sockaddr(&m.address)));
            }
            if message_type == SYSCALL_ACCEPT {
                out.insert("flags".into(), json!(m.flags));
            }
        }
        SYSCALL_EXECVE => {
            let m: Execve = decode_as(payload)?;
            if !m.fd_path.is_empty() {
                out.insert("fd".into(), json!(m.fd));
                fd_path(out, &m.fd_path);
            }
            out.insert("path".into(), text(&m.pathname));
            out.insert("argv".into(), list(&m.argv));
            out.insert("flags".into(), json!(m.flags));
        }
        SYSCALL_SOCKET => {
            let m: Socket = decode_as(payload)?;
            out.insert("domain".into(), json!(m.domain));
            out.insert("type".into(), json!(m.r#type));
            out.insert("protocol".into(), json!(m.protocol));
        }
        SYSCALL_CHDIR => {
            let m: Chdir = decode_as(payload)?;
            if m.pathname.is_empty() {
                out.insert("fd".into(), json!(m.fd));
                fd_path(out, &m.fd_path);
            } else {
                out.insert("path".into(), text(&m.pathname));
            }
        }
        SYSCALL_CHROOT => {
            let m: Chroot = decode_as(payload)?;
            out.insert("path".into(), text(&m.pathname));
        }
        SYSCALL_SETID => {
            let m: Setid = decode_as(payload)?;
            out.insert("id".into(), json!(m.id));
        }
        SYSCALL_SETRESID => {
            let m: Setid = decode_as(payload)?;
            out.insert("rid".into(), json!(m.id));
            out.insert("eid".into(), json!(m.eid));
            out.insert("sid".into(), json!(m.sid));
        }
        SYSCALL_CLONE => {
            let m: CloneCall = decode_as(payload)?;
            out.insert("flags".into(), json!(m.flags));
            out.insert("childTid".into(), json!(m.new_tid));
        }
        _ => {}
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<M: Message>(m: &M) -> Vec<u8> {
        m.encode_to_vec()
    }

    #[test]
    fn header_round_trip_and_bounds() {
        let mut msg = vec![8, 0, 7, 0, 3, 0, 0, 0];
        msg.extend_from_slice(b"payload");
        let h = Header::parse(&msg).unwrap();
        assert_eq!(
            h,
            Header {
                size: 8,
                message_type: 7,
                dropped: 3
            }
        );
        assert!(Header::parse(&msg[..7]).is_none());
        // A header claiming more bytes than the message has is refused.
        assert!(Header::parse(&[200, 0, 7, 0, 0, 0, 0, 0]).is_none());
        assert!(Header::parse(&[4, 0, 7, 0, 0, 0, 0, 0]).is_none());
    }

    #[test]
    fn decodes_an_openat_exit() {
        #[derive(Clone, PartialEq, Message)]
        struct OpenWire {
            #[prost(message, optional, tag = "1")]
            context_data: Option<ContextData>,
            #[prost(message, optional, tag = "2")]
            exit: Option<Exit>,
            #[prost(uint64, tag = "3")]
            sysno: u64,
            #[prost(int64, tag = "4")]
            fd: i64,
            #[prost(string, tag = "6")]
            pathname: String,
        }
        let openat = super::super::points::SYSCALLS
            .iter()
            .find(|(n, _)| *n == "openat")
            .unwrap()
            .1;
        let m = OpenWire {
            context_data: Some(ContextData {
                time_ns: 1_700_000_000_123_456_789,
                thread_id: 7,
                thread_group_id: 7,
                container_id: "c1".into(),
                credentials: None,
                cwd: "/".into(),
                process_name: "cat".into(),
            }),
            exit: Some(Exit {
                result: 3,
                errorno: 0,
            }),
            sysno: openat,
            fd: -100,
            pathname: "/etc/passwd".into(),
        };
        let v = decode(SYSCALL_OPEN, &encode(&m)).unwrap();
        assert_eq!(v["event"], "syscall/openat/exit");
        assert_eq!(v["path"], "/etc/passwd");
        assert_eq!(v["result"], 3);
        assert_eq!(v["process"], "cat");
        assert_eq!(v["time"], "2023-11-14T22:13:20.123456789Z");
        // Keys come in a fixed order: time, event, then the rest.
        let keys: Vec<&String> = v.as_object().unwrap().keys().take(2).collect();
        assert_eq!(keys, ["time", "event"]);
    }

    #[test]
    fn malformed_and_unknown_payloads_are_none() {
        assert!(decode(SYSCALL_OPEN, &[0xff, 0xff, 0xff]).is_none());
        assert!(decode(999, &[]).is_none());
    }

    #[test]
    fn socket_addresses() {
        assert_eq!(sockaddr(&[2, 0, 0, 80, 127, 0, 0, 1, 0, 0]), "127.0.0.1:80");
        let mut unix = vec![1, 0];
        unix.extend_from_slice(b"/run/x.sock\0\0");
        assert_eq!(sockaddr(&unix), "/run/x.sock");
        assert_eq!(sockaddr(&[1, 0, 0, b'a']), "@a");
        assert_eq!(sockaddr(&[9]), "09");
    }

    #[test]
    fn long_strings_are_cut() {
        let long = "é".repeat(MAX_STRING);
        let Value::String(s) = text(&long) else {
            panic!()
        };
        assert!(s.len() <= MAX_STRING + 3 && s.ends_with('…'));
    }
}
