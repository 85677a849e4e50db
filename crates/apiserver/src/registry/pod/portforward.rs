//! `pods/portforward` (`kubectl port-forward`, the Python client's `portforward()`): the checks
//! kube-apiserver and kubelet make, then one of the three transports kubelet serves, each
//! carrying TCP connections that a [`PodPortForward`] provider opens inside the Pod:
//!
//! - **SPDY over WebSocket** (subprotocol `SPDY/3.1+portforward.k8s.io`), what kubectl 1.31 and
//!   later try first: the WebSocket's binary messages carry a SPDY/3.1 byte stream;
//! - **SPDY/3.1** after an HTTP `Upgrade: SPDY/3.1` (`X-Stream-Protocol-Version:
//!   portforward.k8s.io`), kubectl's fallback;
//! - **the channel protocol** (`v4.channel.k8s.io`, `v4.base64.channel.k8s.io`, or none): the
//!   ports come from the `ports` query; port *i* has data channel `2i` and error channel
//!   `2i+1`, and each channel's first message is its port as two little-endian bytes.
//!
//! Over SPDY the client opens, per connection, an `error` stream and a `data` stream with the
//! same `requestID` and `port` headers; once both are there the port is dialled. A port that
//! cannot be reached gets kubelet's message on its error stream and the session stays up for
//! other connections. A forward ends when the Pod's side closes (the client's end of input only
//! half-closes the connection to the Pod) or the client resets its streams or goes away.

use crate::api::{App, Target, form_pairs};
use crate::error::ApiError;
use crate::spdy;
use axum::extract::FromRequestParts;
use axum::extract::Request;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The WebSocket subprotocol that tunnels SPDY (kubectl 1.31 and later).
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The SPDY stream protocol (`X-Stream-Protocol-Version`).
pub const SPDY_PROTOCOL: &str = "portforward.k8s.io";
/// The channel protocols, binary and base64.
const CHANNEL_PROTOCOLS: [&str; 2] = ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"];
/// How long the second stream of a SPDY request pair is waited for (kubelet's
/// `streamCreationTimeout`).
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to a port inside a Pod.
pub trait Tunnel: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Tunnel for T {}

/// Opens connections to ports inside Pods (registered by the node agent).
pub trait PodPortForward: Send + Sync {
    /// Whether ports of `pod` can be forwarded now; the error is the message of a 400 answer.
    fn check(&self, pod: &Value) -> Result<(), String>;

    /// Connects to `port` inside `pod`; the error says why (it goes on the error stream after
    /// kubelet's `error forwarding port ...` prefix).
    fn connect(
        &self,
        pod: &Value,
        port: u16,
    ) -> BoxFuture<'static, Result<Box<dyn Tunnel>, String>>;
}

/// Serves `GET`/`POST .../pods/{name}/portforward`.
pub async fn serve(app: Arc<App>, t: Target, req: Request) -> Response {
    match prepare(&app, &t, req).await {
        Ok(r) | Err(r) => r,
    }
}

/// The Pod a session forwards to: its object and how kubelet names it in messages.
#[derive(Clone)]
struct PodRef {
    object: Value,
    /// `name_namespace`... kubelet names the Pod by its full name: `name_namespace`.
    full_name: String,
    uid: String,
}

async fn prepare(app: &App, t: &Target, req: Request) -> Result<Response, Response> {
    let (mut parts, _body) = req.into_parts();
    let pairs = form_pairs(parts.uri.query().unwrap_or(""));
    let bad = |m: String| ApiError::bad_request(m).into_response();
    // kube-apiserver converts `ports` (repeated or comma-separated) before anything else.
    let ports = query_ports(&pairs).map_err(bad)?;
    let pod = app.get(t).map_err(IntoResponse::into_response)?;
    let pod = pod.value().clone();
    let name = t.name.clone().unwrap_or_default();
    super::log::require_host(&pod, &name).map_err(IntoResponse::into_response)?;
    let provider = app.port_forward.read().ok().and_then(|g| g.clone());
    let Some(provider) = provider else {
        return Err(bad(format!(
            "cannot forward ports of pod {name}: no node agent serves port-forward on this API server; run it with its node (agent-sandbox up)"
        )));
    };
    provider.check(&pod).map_err(bad)?;
    let pod = PodRef {
        full_name: format!(
            "{name}_{}",
            pod["metadata"]["namespace"].as_str().unwrap_or_default()
        ),
        uid: pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        object: pod,
    };
    let upgrade = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if upgrade == "spdy/3.1" {
        return Ok(spdy_upgrade(&mut parts, provider, pod));
    }
    if upgrade != "websocket" {
        return Err(bad("Upgrade request required".into()));
    }
    let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| {
            bad(format!(
                "the WebSocket upgrade of pods/portforward failed: {e}"
            ))
        })?;
    let asked: Vec<String> = parts
        .headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .filter(|p| !p.is_empty())
        .collect();
    if asked.iter().any(|p| p == TUNNEL_PROTOCOL) {
        let ws = ws.protocols([TUNNEL_PROTOCOL]);
        tracing::debug!(target: "apiserver::portforward", pod = %pod.full_name, "SPDY over WebSocket");
        return Ok(ws.on_upgrade(move |socket| async move {
            let (io, pump) = websocket_bytes(socket);
            tokio::join!(pump, spdy_session(io, provider, pod));
        }));
    }
    let base64 = match asked
        .iter()
        .find(|p| CHANNEL_PROTOCOLS.contains(&p.as_str()))
    {
        Some(p) => p == CHANNEL_PROTOCOLS[1],
        None if asked.is_empty() => false,
        None => {
            return Err(bad(format!(
                "pods/portforward speaks the WebSocket subprotocols {TUNNEL_PROTOCOL}, {}; the client asked for [{}]",
                CHANNEL_PROTOCOLS.join(", "),
                asked.join(", ")
            )));
        }
    };
    if ports.is_empty() {
        return Err(bad("query parameter \"port\" is required".into()));
    }
    if let Some(p) = ports.iter().find(|p| **p == 0) {
        return Err(bad(format!("port \"{p}\" must be > 0")));
    }
    let ws = if asked.is_empty() {
        ws
    } else {
        ws.protocols([CHANNEL_PROTOCOLS[usize::from(base64)]])
    };
    tracing::debug!(target: "apiserver::portforward", pod = %pod.full_name, ?ports, "channel protocol");
    Ok(ws.on_upgrade(move |socket| channel_session(socket, base64, ports, provider, pod)))
}

/// The `ports` query as kube-apiserver converts it (`Convert_Slice_string_To_Slice_int32`):
/// every value split at commas, each a 16-bit unsigned number.
fn query_ports(pairs: &[(String, String)]) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for (_, v) in pairs.iter().filter(|(k, _)| k == "ports") {
        for p in v.split(',') {
            ports.push(parse_port(p).map_err(|e| format!("cannot convert to []int32: {e}"))?);
        }
    }
    Ok(ports)
}

/// Go's `strconv.ParseUint(p, 10, 16)` with its messages.
fn parse_port(p: &str) -> Result<u16, String> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("strconv.ParseUint: parsing {p:?}: invalid syntax"));
    }
    p.parse::<u16>()
        .map_err(|_| format!("strconv.ParseUint: parsing {p:?}: value out of range"))
}

/// Answers an `Upgrade: SPDY/3.1` request with 101 after negotiating the stream protocol as
/// kubelet does, then serves SPDY on the upgraded connection.
fn spdy_upgrade(
    parts: &mut axum::http::request::Parts,
    provider: Arc<dyn PodPortForward>,
    pod: PodRef,
) -> Response {
    let offered: Vec<String> = parts
        .headers
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .filter(|p| !p.is_empty())
        .collect();
    if !offered.is_empty() && !offered.iter().any(|p| p == SPDY_PROTOCOL) {
        let mut r = (
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts [\"{SPDY_PROTOCOL}\"]"
            ),
        )
            .into_response();
        r.headers_mut().insert(
            "x-accepted-stream-protocol-versions",
            HeaderValue::from_static(SPDY_PROTOCOL),
        );
        return r;
    }
    let connection_upgrade = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if !connection_upgrade {
        return ApiError::bad_request("unable to upgrade: missing upgrade headers in request")
            .into_response();
    }
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return ApiError::internal("this connection cannot be upgraded").into_response();
    };
    tracing::debug!(target: "apiserver::portforward", pod = %pod.full_name, "SPDY upgrade");
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                spdy_session(hyper_util::rt::TokioIo::new(upgraded), provider, pod).await;
            }
            Err(e) => tracing::debug!(target: "apiserver::portforward", "upgrade failed: {e}"),
        }
    });
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if !offered.is_empty() {
        h.insert(
            "x-stream-protocol-version",
            HeaderValue::from_static(SPDY_PROTOCOL),
        );
    }
    r
}

/// A WebSocket seen as a byte stream (the tunnel's SPDY bytes travel in binary messages): the
/// returned end reads what the client sends and writes what it receives; the future moves the
/// bytes and ends when either side closes.
fn websocket_bytes(socket: WebSocket) -> (tokio::io::DuplexStream, BoxFuture<'static, ()>) {
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let pump = async move {
        let (mut sink, mut stream) = socket.split();
        let (mut rd, mut wr) = tokio::io::split(theirs);
        let inbound = async {
            while let Some(Ok(m)) = stream.next().await {
                let data = match m {
                    Message::Binary(b) => b,
                    Message::Close(_) => break,
                    _ => continue,
                };
                if wr.write_all(&data).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        };
        let outbound = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sink
                            .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            let _ = sink.close().await;
        };
        // The session ends when the client goes away or the SPDY side is done.
        tokio::select! {
            () = inbound => {}
            () = outbound => {}
        }
    };
    (ours, Box::pin(pump))
}

/// kubelet's message when a port cannot be reached.
fn forward_error(pod: &PodRef, port: u16, e: &str) -> String {
    format!(
        "error forwarding port {port} to pod {}, uid {}: {e}",
        pod.full_name, pod.uid
    )
}

/// Copies between the client's side and a connection to the Pod's port until the Pod's side
/// closes or the client's side fails; the client's end of input half-closes the Pod's side.
async fn relay<C>(client: C, mut upstream: Box<dyn Tunnel>)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (mut from_pod, mut to_pod) = tokio::io::split(&mut upstream);
    let inbound = async {
        if tokio::io::copy(&mut from_client, &mut to_pod).await.is_ok() {
            let _ = to_pod.shutdown().await;
            // Keep the relay up until the Pod's side is done.
            std::future::pending::<()>().await;
        }
    };
    let outbound = async {
        let _ = tokio::io::copy(&mut from_pod, &mut to_client).await;
        let _ = to_client.shutdown().await;
    };
    tokio::select! {
        () = inbound => {}
        () = outbound => {}
    }
}

/// The streams of one SPDY request (`requestID`) as they arrive.
#[derive(Default)]
struct Pair {
    port: u16,
    data: Option<spdy::SpdyStream>,
    error: Option<spdy::SpdyStream>,
}

/// Serves port-forward requests over one SPDY connection until it ends.
async fn spdy_session<IO>(io: IO, provider: Arc<dyn PodPortForward>, pod: PodRef)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (conn, mut incoming) = spdy::serve(io);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwards = tokio::task::JoinSet::new();
    let (expire_tx, mut expire_rx) = mpsc::unbounded_channel::<String>();
    loop {
        tokio::select! {
            s = incoming.recv() => {
                let Some(mut s) = s else { break };
                let checked = check_stream(&s.headers);
                let Ok((kind, port)) = checked else {
                    // kubelet refuses a bad stream: a reply that also closes it.
                    tracing::debug!(target: "apiserver::portforward", stream = s.id, error = ?checked.err(), "stream refused");
                    s.stream.refuse();
                    continue;
                };
                if s.stream.reply(Vec::new()).is_err() {
                    continue;
                }
                // Clients from before request IDs pair streams by their own IDs.
                let request = header(&s.headers, "requestid")
                    .map(String::from)
                    .unwrap_or_else(|| {
                        let id = if kind == StreamKind::Data { s.id.saturating_sub(2) } else { s.id };
                        id.to_string()
                    });
                let pair = pairs.entry(request.clone()).or_insert_with(|| {
                    let tx = expire_tx.clone();
                    let r = request.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(PAIR_TIMEOUT).await;
                        let _ = tx.send(r);
                    });
                    Pair::default()
                });
                pair.port = port;
                match kind {
                    StreamKind::Data => pair.data = Some(s.stream),
                    StreamKind::Error => pair.error = Some(s.stream),
                }
                if pair.data.is_some() && pair.error.is_some() {
                    let Some(Pair { port, data: Some(data), error: Some(error) }) = pairs.remove(&request) else {
                        continue;
                    };
                    let provider = Arc::clone(&provider);
                    let pod = pod.clone();
                    forwards.spawn(async move {
                        forward_spdy(provider, pod, port, data, error).await;
                    });
                }
            }
            Some(request) = expire_rx.recv() => {
                if let Some(p) = pairs.remove(&request) {
                    tracing::debug!(target: "apiserver::portforward", %request, "timed out waiting for streams");
                    for mut s in [p.data, p.error].into_iter().flatten() {
                        s.reset();
                    }
                }
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
    // The client went away: the forwards end with their streams.
    drop(pairs);
    forwards.shutdown().await;
    conn.close();
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum StreamKind {
    Data,
    Error,
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// kubelet's checks of a new stream's headers.
fn check_stream(headers: &[(String, String)]) -> Result<(StreamKind, u16), String> {
    let port = header(headers, "port")
        .filter(|p| !p.is_empty())
        .ok_or("\"port\" header is required")?;
    let port = parse_port(port).map_err(|e| format!("unable to parse {port:?} as a port: {e}"))?;
    if port == 0 {
        return Err("port \"0\" must be > 0".into());
    }
    match header(headers, "streamtype") {
        Some("data") => Ok((StreamKind::Data, port)),
        Some("error") => Ok((StreamKind::Error, port)),
        Some("") | None => Err("\"streamType\" header is required".into()),
        Some(other) => Err(format!("invalid stream type {other:?}")),
    }
}

async fn forward_spdy(
    provider: Arc<dyn PodPortForward>,
    pod: PodRef,
    port: u16,
    data: spdy::SpdyStream,
    mut error: spdy::SpdyStream,
) {
    match provider.connect(&pod.object, port).await {
        Ok(upstream) => relay(data, upstream).await,
        Err(e) => {
            let msg = forward_error(&pod, port, &e);
            tracing::debug!(target: "apiserver::portforward", "{msg}");
            let _ = error.write_all(msg.as_bytes()).await;
            let mut data = data;
            let _ = data.shutdown().await;
        }
    }
    let _ = error.shutdown().await;
}

/// One channel message: the channel byte, then the data (base64 text for the base64
/// protocol, where the channel is an ASCII digit).
fn channel_frame(base64: bool, channel: u8, data: &[u8]) -> Message {
    if base64 {
        use base64::Engine;
        let mut s = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        s.push(char::from(b'0' + channel));
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
        Message::Text(s.into())
    } else {
        let mut v = Vec::with_capacity(data.len() + 1);
        v.push(channel);
        v.extend_from_slice(data);
        Message::Binary(v.into())
    }
}

/// A client's message as (channel, data).
fn parse_channel(base64: bool, m: Message) -> Option<(u8, Bytes)> {
    match m {
        Message::Binary(b) if !base64 && !b.is_empty() => Some((b[0], b.slice(1..))),
        Message::Text(t) if base64 && !t.is_empty() => {
            use base64::Engine;
            let s = t.as_str();
            let channel = s.as_bytes()[0].checked_sub(b'0')?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(&s[1..])
                .ok()?;
            Some((channel, data.into()))
        }
        _ => None,
    }
}

/// Serves the channel protocol: one connection per port, opened at once; the session ends
/// when every port's connection has ended or the client goes away.
async fn channel_session(
    socket: WebSocket,
    base64: bool,
    ports: Vec<u16>,
    provider: Arc<dyn PodPortForward>,
    pod: PodRef,
) {
    let (mut sink, mut incoming) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(16);
    let mut inputs: Vec<Option<mpsc::Sender<Bytes>>> = Vec::with_capacity(ports.len());
    let mut forwards = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data, error) = ((2 * i) as u8, (2 * i + 1) as u8);
        for channel in [data, error] {
            if sink
                .send(channel_frame(base64, channel, &port.to_le_bytes()))
                .await
                .is_err()
            {
                return;
            }
        }
        let (in_tx, in_rx) = mpsc::channel::<Bytes>(8);
        inputs.push(Some(in_tx));
        let out = out_tx.clone();
        let provider = Arc::clone(&provider);
        let pod = pod.clone();
        forwards.spawn(async move {
            match provider.connect(&pod.object, port).await {
                Ok(upstream) => {
                    let client = ChannelStream::new(in_rx, out, base64, data);
                    relay(client, upstream).await;
                }
                Err(e) => {
                    let msg = forward_error(&pod, port, &e);
                    tracing::debug!(target: "apiserver::portforward", "{msg}");
                    let _ = out.send(channel_frame(base64, error, msg.as_bytes())).await;
                }
            }
        });
    }
    drop(out_tx);
    // Input that waits for room in its port's queue; the client is not read meanwhile, so a
    // port that does not read slows the client down while output keeps flowing.
    let mut pending: Option<(mpsc::Sender<Bytes>, Bytes)> = None;
    loop {
        let waiting = pending.as_ref().map(|(tx, _)| tx.clone());
        tokio::select! {
            m = out_rx.recv() => match m {
                Some(m) => {
                    if sink.send(m).await.is_err() {
                        return;
                    }
                }
                // Every port's forward has ended.
                None => break,
            },
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
            permit = async move { waiting?.reserve_owned().await.ok() }, if pending.is_some() => {
                if let (Some(p), Some((_, data))) = (permit, pending.take()) {
                    p.send(data);
                }
            }
            m = incoming.next(), if pending.is_none() => match m {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(m)) => {
                    let Some((channel, data)) = parse_channel(base64, m) else { continue };
                    // Error channels carry nothing from the client.
                    if channel % 2 != 0 || data.is_empty() {
                        continue;
                    }
                    if let Some(tx) = inputs.get(usize::from(channel / 2)).and_then(Option::as_ref) {
                        match tx.try_send(data) {
                            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                            Err(mpsc::error::TrySendError::Full(data)) => {
                                pending = Some((tx.clone(), data));
                            }
                        }
                    }
                }
            },
        }
    }
    let _ = sink.close().await;
}

/// One data channel of the channel protocol as a byte stream.
struct ChannelStream {
    input: mpsc::Receiver<Bytes>,
    pending: Bytes,
    output: tokio_util::sync::PollSender<Message>,
    base64: bool,
    channel: u8,
}

impl ChannelStream {
    fn new(
        input: mpsc::Receiver<Bytes>,
        output: mpsc::Sender<Message>,
        base64: bool,
        channel: u8,
    ) -> Self {
        ChannelStream {
            input,
            pending: Bytes::new(),
            output: tokio_util::sync::PollSender::new(output),
            base64,
            channel,
        }
    }
}

impl AsyncRead for ChannelStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        if self.pending.is_empty() {
            match self.input.poll_recv(cx) {
                Poll::Ready(Some(b)) => self.pending = b,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.pending.len().min(buf.remaining());
        let chunk = self.pending.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ChannelStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        let closed = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away");
        match self.output.poll_reserve(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Poll::Ready(Err(closed())),
            Poll::Pending => return Poll::Pending,
        }
        let n = data.len().min(32 * 1024);
        let frame = channel_frame(self.base64, self.channel, &data[..n]);
        match self.output.send_item(frame) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(_) => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        // The channel protocol has no end of stream: the session's end closes the WebSocket.
        self.output.close();
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_converted_as_kube_apiserver_converts_them() {
        let q = |s: &str| query_ports(&form_pairs(s));
        assert_eq!(q("ports=8080").unwrap(), [8080]);
        assert_eq!(q("ports=8080,9090&ports=22").unwrap(), [8080, 9090, 22]);
        assert_eq!(q("").unwrap(), Vec::<u16>::new());
        assert_eq!(
            q("ports=70000").unwrap_err(),
            r#"cannot convert to []int32: strconv.ParseUint: parsing "70000": value out of range"#
        );
        assert_eq!(
            q("ports=http").unwrap_err(),
            r#"cannot convert to []int32: strconv.ParseUint: parsing "http": invalid syntax"#
        );
        assert_eq!(
            q("ports=-1").unwrap_err(),
            r#"cannot convert to []int32: strconv.ParseUint: parsing "-1": invalid syntax"#
        );
    }

    #[test]
    fn streams_are_checked_as_kubelet_checks_them() {
        let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(matches!(
            check_stream(&h(&[("port", "8080"), ("streamtype", "data")])),
            Ok((StreamKind::Data, 8080))
        ));
        assert!(matches!(
            check_stream(&h(&[("Port", "1"), ("StreamType", "error")])),
            Ok((StreamKind::Error, 1))
        ));
        let err = |pairs: &[(&str, &str)]| check_stream(&h(pairs)).err().unwrap();
        assert_eq!(
            err(&[("streamtype", "data")]),
            "\"port\" header is required"
        );
        assert_eq!(
            err(&[("port", "0"), ("streamtype", "data")]),
            "port \"0\" must be > 0"
        );
        assert_eq!(
            err(&[("port", "99999"), ("streamtype", "data")]),
            r#"unable to parse "99999" as a port: strconv.ParseUint: parsing "99999": value out of range"#
        );
        assert_eq!(err(&[("port", "80")]), "\"streamType\" header is required");
        assert_eq!(
            err(&[("port", "80"), ("streamtype", "stdin")]),
            "invalid stream type \"stdin\""
        );
    }

    #[test]
    fn channel_messages_carry_the_channel_first() {
        let m = channel_frame(false, 3, &[0x90, 0x1f]);
        assert_eq!(m, Message::Binary(vec![3, 0x90, 0x1f].into()));
        assert_eq!(
            parse_channel(false, m),
            Some((3, Bytes::from_static(&[0x90, 0x1f])))
        );
        let m = channel_frame(true, 0, b"hi");
        assert_eq!(m, Message::Text("0aGk=".into()));
        assert_eq!(parse_channel(true, m), Some((0, Bytes::from_static(b"hi"))));
    }
}
