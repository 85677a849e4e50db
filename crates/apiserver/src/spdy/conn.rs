//! The server side of a SPDY/3.1 connection, as kubelet serves `kubectl port-forward`: one task
//! owns the transport, reading frames and writing the frames queued for it; each stream the
//! client opens is handed over as an [`IncomingStream`] whose [`SpdyStream`] reads and writes
//! the stream's data.
//!
//! Flow control is not done, as neither side of kubectl's `spdystream` does it: that client
//! never sends WINDOW_UPDATE and never waits for one, so the windows SPDY/3.1 describes are not
//! enforced (that would stall at 64 KiB) and none are announced. Backpressure comes from the
//! transport instead: a stream's unread data waits in a short queue, and once it is full the
//! connection reads no further (as in `spdystream`); writes wait while too much is queued for
//! the transport. The client's PINGs (odd ids) are answered with the same id.
//!
//! The connection ends on the client's GOAWAY, the transport's end or error, a frame that breaks
//! the protocol (answered with GOAWAY), [`ConnectionHandle::close`], or once the handles, the
//! receiver of incoming streams and every stream are dropped. Streams' reads then end; writes
//! fail with `BrokenPipe`.

use super::frame::{self, Decoder, Encoder, Frame, Headers};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, mpsc, watch};

/// The largest DATA frame written.
pub const MAX_DATA_FRAME: usize = 32 * 1024;
/// Bytes of DATA queued for the transport before writes wait.
const WRITE_QUEUE: usize = 512 * 1024;
/// DATA frames received on a stream and not yet read before the connection stops reading.
const READ_QUEUE: usize = 16;
/// Streams opened and not yet taken from the receiver before the connection stops reading.
const INCOMING_QUEUE: usize = 16;
/// Bytes written to the transport in one go.
const WRITE_BATCH: usize = 64 * 1024;
/// How long frames still queued are written once the connection is ending.
const FINAL_FLUSH: Duration = Duration::from_secs(5);

/// A stream the client opened.
#[derive(Debug)]
pub struct IncomingStream {
    /// Its id (odd).
    pub id: u32,
    /// Its SYN_STREAM's headers, names lowercase (port-forward: `streamtype`, `port`,
    /// `requestid`).
    pub headers: Headers,
    /// The stream itself.
    pub stream: SpdyStream,
}

impl IncomingStream {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Controls a connection [`serve`] runs; clones control the same one.
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    close: Arc<watch::Sender<bool>>,
    done: watch::Receiver<bool>,
    _user: mpsc::Sender<()>,
}

impl ConnectionHandle {
    /// Sends GOAWAY and ends the connection (frames already queued are still written).
    pub fn close(&self) {
        self.close.send_replace(true);
    }

    /// Resolves once the connection has ended and its task is gone.
    pub async fn closed(&self) {
        let _ = self.done.clone().wait_for(|done| *done).await;
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        *self.done.borrow()
    }
}

/// Serves the server side of SPDY/3.1 on `io` in a task of its own (so within a Tokio
/// runtime); the streams the client opens arrive on the receiver.
pub fn serve<IO>(io: IO) -> (ConnectionHandle, mpsc::Receiver<IncomingStream>)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_QUEUE);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (user_tx, user_rx) = mpsc::channel(1);
    let close = Arc::new(watch::channel(false).0);
    let (done_tx, done_rx) = watch::channel(false);
    let shared = Shared {
        out: out_tx,
        credit: Arc::new(Semaphore::new(WRITE_QUEUE)),
        streams: Arc::default(),
    };
    let handle = ConnectionHandle {
        close: close.clone(),
        done: done_rx,
        _user: user_tx.clone(),
    };
    let reader = Reader {
        shared: shared.clone(),
        incoming: incoming_tx,
        user: Some(user_tx),
        last_id: 0,
    };
    tokio::spawn(async move {
        let close_rx = close.subscribe();
        run(io, reader, out_rx, close_rx, user_rx).await;
        drop(close);
        done_tx.send_replace(true);
    });
    (handle, incoming_rx)
}

/// A frame for the writer, holding its share of the write queue until written.
struct Out {
    frame: Frame,
    _credit: Option<OwnedSemaphorePermit>,
}

/// A stream as the connection tracks it, until both sides are done or it is reset.
struct Entry {
    /// Where its data goes; `None` once the client sent FIN.
    data: Option<mpsc::Sender<Bytes>>,
    /// Whether the server side sent FIN (or may not send).
    local_fin: bool,
}

#[derive(Clone)]
struct Shared {
    out: mpsc::UnboundedSender<Out>,
    credit: Arc<Semaphore>,
    streams: Arc<Mutex<HashMap<u32, Entry>>>,
}

impl Shared {
    fn streams(&self) -> MutexGuard<'_, HashMap<u32, Entry>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, frame: Frame, credit: Option<OwnedSemaphorePermit>) -> io::Result<()> {
        let out = Out {
            frame,
            _credit: credit,
        };
        self.out
            .send(out)
            .map_err(|_| broken("the SPDY connection is closed"))
    }
}

fn broken(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, why.to_owned())
}

/// Resolves once `flag` is raised (never if its sender is gone without raising it).
async fn raised(flag: &mut watch::Receiver<bool>) {
    if flag.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn run<IO>(
    io: IO,
    mut reader: Reader,
    out: mpsc::UnboundedReceiver<Out>,
    close: watch::Receiver<bool>,
    users: mpsc::Receiver<()>,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (read_half, write_half) = tokio::io::split(io);
    let (reader_done, reader_done_rx) = watch::channel(false);
    let (writer_failed, writer_failed_rx) = watch::channel(false);
    let credit = reader.shared.credit.clone();
    let mut final_flush = reader_done_rx.clone();
    let read = async {
        reader.run(read_half, close, writer_failed_rx, users).await;
        reader.shared.streams().clear();
        reader_done.send_replace(true);
    };
    let write = async {
        let writing = write_frames(write_half, out, reader_done_rx);
        let deadline = async {
            raised(&mut final_flush).await;
            tokio::time::sleep(FINAL_FLUSH).await;
        };
        let result = tokio::select! {
            result = writing => result,
            () = deadline => Ok(()),
        };
        credit.close();
        if let Err(e) = result {
            tracing::debug!("SPDY connection: writing failed: {e}");
            writer_failed.send_replace(true);
        }
    };
    tokio::join!(read, write);
}

/// Writes queued frames until the reader is done, then what is still queued.
async fn write_frames<W: AsyncWrite + Unpin>(
    mut io: W,
    mut out: mpsc::UnboundedReceiver<Out>,
    mut reader_done: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut encoder = Encoder::default();
    let mut buf = BytesMut::new();
    let mut written = Vec::new();
    loop {
        let next = tokio::select! {
            biased;
            next = out.recv() => next,
            () = raised(&mut reader_done) => None,
        };
        let Some(next) = next else { break };
        encode(&mut encoder, &next.frame, &mut buf)?;
        written.push(next);
        while buf.len() < WRITE_BATCH
            && let Ok(next) = out.try_recv()
        {
            encode(&mut encoder, &next.frame, &mut buf)?;
            written.push(next);
        }
        io.write_all(&buf).await?;
        io.flush().await?;
        buf.clear();
        written.clear();
    }
    while let Ok(next) = out.try_recv() {
        encode(&mut encoder, &next.frame, &mut buf)?;
    }
    io.write_all(&buf).await?;
    io.shutdown().await
}

fn encode(encoder: &mut Encoder, frame: &Frame, buf: &mut BytesMut) -> io::Result<()> {
    encoder
        .encode(frame, buf)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// What stopped a wait of the reader.
enum Stop {
    /// [`ConnectionHandle::close`].
    Close,
    /// The writer failed.
    Writer,
    /// The client sent GOAWAY.
    GoneAway,
}

struct Stops {
    close: watch::Receiver<bool>,
    writer_failed: watch::Receiver<bool>,
}

impl Stops {
    async fn wait(&mut self) -> Stop {
        tokio::select! {
            () = raised(&mut self.close) => Stop::Close,
            () = raised(&mut self.writer_failed) => Stop::Writer,
        }
    }
}

struct Reader {
    shared: Shared,
    incoming: mpsc::Sender<IncomingStream>,
    /// Keeps the connection's users counted while the receiver of incoming streams is alive.
    user: Option<mpsc::Sender<()>>,
    /// The last stream id the client opened.
    last_id: u32,
}

impl Reader {
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        mut io: R,
        close: watch::Receiver<bool>,
        writer_failed: watch::Receiver<bool>,
        mut users: mpsc::Receiver<()>,
    ) {
        let mut stops = Stops {
            close,
            writer_failed,
        };
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let incoming = self.incoming.clone();
        loop {
            let read = tokio::select! {
                biased;
                stop = stops.wait() => return self.stopped(stop),
                None = users.recv() => return self.go_away(frame::GOAWAY_OK),
                () = incoming.closed(), if self.user.is_some() => {
                    self.user = None;
                    continue;
                }
                read = next_frame(&mut io, &mut buf, &mut decoder) => read,
            };
            let frame = match read {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!("SPDY connection: {e}");
                    if e.kind() == io::ErrorKind::InvalidData {
                        self.go_away(frame::GOAWAY_PROTOCOL_ERROR);
                    }
                    return;
                }
            };
            if let Err(stop) = self.on_frame(frame, &mut stops).await {
                return self.stopped(stop);
            }
            if self.shared.out.is_closed() {
                return;
            }
        }
    }

    /// Handles a frame; `Err` when the connection ends.
    async fn on_frame(&mut self, frame: Frame, stops: &mut Stops) -> Result<(), Stop> {
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => {
                self.open(stream_id, flags, headers, stops).await?;
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let data_tx = self.remote_data(stream_id, flags & frame::FLAG_FIN != 0);
                if let Some(data_tx) = data_tx
                    && !data.is_empty()
                {
                    tokio::select! {
                        _ = data_tx.send(data) => {}
                        stop = stops.wait() => return Err(stop),
                    }
                }
            }
            Frame::Headers {
                stream_id, flags, ..
            } if flags & frame::FLAG_FIN != 0 => {
                self.remote_data(stream_id, true);
            }
            Frame::RstStream { stream_id, .. } => {
                self.shared.streams().remove(&stream_id);
            }
            Frame::Ping { id } if !id.is_multiple_of(2) => self.send(Frame::Ping { id }),
            Frame::GoAway { .. } => return Err(Stop::GoneAway),
            // Pings the server did not send, a reply on a stream it did not open, flow control.
            _ => {}
        }
        Ok(())
    }

    async fn open(
        &mut self,
        id: u32,
        flags: u8,
        headers: Headers,
        stops: &mut Stops,
    ) -> Result<(), Stop> {
        if id.is_multiple_of(2) || id <= self.last_id {
            self.send(Frame::RstStream {
                stream_id: id,
                status: frame::PROTOCOL_ERROR,
            });
            return Ok(());
        }
        self.last_id = id;
        let Some(user) = self.user.clone().filter(|_| !self.incoming.is_closed()) else {
            self.send(Frame::RstStream {
                stream_id: id,
                status: frame::REFUSED_STREAM,
            });
            return Ok(());
        };
        let (data_tx, data_rx) = mpsc::channel(READ_QUEUE);
        let remote_fin = flags & frame::FLAG_FIN != 0;
        let local_fin = flags & frame::FLAG_UNIDIRECTIONAL != 0;
        if !(remote_fin && local_fin) {
            let entry = Entry {
                data: (!remote_fin).then_some(data_tx),
                local_fin,
            };
            self.shared.streams().insert(id, entry);
        }
        let stream = SpdyStream {
            id,
            shared: self.shared.clone(),
            data: data_rx,
            unread: Bytes::new(),
            replied: false,
            local_fin,
            reset: false,
            credit: None,
            _user: user,
        };
        tokio::select! {
            _ = self.incoming.send(IncomingStream { id, headers, stream }) => Ok(()),
            stop = stops.wait() => Err(stop),
        }
    }

    /// Where data the client sent on `id` goes, if anywhere; with `fin`, the client is done.
    fn remote_data(&self, id: u32, fin: bool) -> Option<mpsc::Sender<Bytes>> {
        let mut streams = self.shared.streams();
        let entry = streams.get_mut(&id)?;
        if !fin {
            return entry.data.clone();
        }
        let data = entry.data.take();
        if entry.local_fin {
            streams.remove(&id);
        }
        data
    }

    fn send(&self, frame: Frame) {
        let _ = self.shared.send(frame, None);
    }

    fn go_away(&self, status: u32) {
        self.send(Frame::GoAway {
            last_good_stream_id: self.last_id,
            status,
        });
    }

    fn stopped(&self, stop: Stop) {
        if let Stop::Close = stop {
            self.go_away(frame::GOAWAY_OK);
        }
    }
}

/// The next frame from `io`; `None` at its end. A frame that breaks the protocol is an
/// `InvalidData` error.
async fn next_frame<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
) -> io::Result<Option<Frame>> {
    loop {
        let decoded = decoder.decode(buf);
        if let Some(frame) = decoded.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))? {
            return Ok(Some(frame));
        }
        if io.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A stream the client opened: reads give the client's data (the end once the client sent FIN
/// or reset the stream), writes send DATA frames, shutdown sends FIN. The first write (or
/// shutdown) replies to the stream with no headers unless [`SpdyStream::reply`] did. Dropped
/// before its shutdown, the stream is reset.
pub struct SpdyStream {
    id: u32,
    shared: Shared,
    data: mpsc::Receiver<Bytes>,
    unread: Bytes,
    replied: bool,
    local_fin: bool,
    reset: bool,
    /// Room in the write queue being waited for, and how much.
    credit: Option<(usize, Acquire)>,
    _user: mpsc::Sender<()>,
}

impl std::fmt::Debug for SpdyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpdyStream")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SpdyStream {
    /// The stream's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Accepts the stream with a SYN_REPLY carrying `headers` (kubelet's are empty); only the
    /// first call sends one.
    pub fn reply(&mut self, headers: Headers) -> io::Result<()> {
        if self.replied {
            return Ok(());
        }
        if self.reset {
            return Err(broken("the SPDY stream was reset"));
        }
        self.replied = true;
        self.shared.send(
            Frame::SynReply {
                stream_id: self.id,
                flags: 0,
                headers,
            },
            None,
        )
    }

    /// Resets the stream (RST_STREAM with CANCEL): reads end, writes fail.
    pub fn reset(&mut self) {
        if self.reset {
            return;
        }
        self.reset = true;
        self.data.close();
        if self.shared.streams().remove(&self.id).is_some() {
            let _ = self.shared.send(
                Frame::RstStream {
                    stream_id: self.id,
                    status: frame::CANCEL,
                },
                None,
            );
        }
    }

    /// Refuses the stream instead of replying (RST_STREAM with REFUSED_STREAM).
    pub fn refuse(mut self) {
        self.reset = true;
        if self.shared.streams().remove(&self.id).is_some() {
            let rst = Frame::RstStream {
                stream_id: self.id,
                status: frame::REFUSED_STREAM,
            };
            let _ = self.shared.send(rst, None);
        }
    }

    /// Whether the server side may still send.
    fn check_writable(&self) -> io::Result<()> {
        if self.local_fin {
            return Err(broken("the SPDY stream was shut down for writing"));
        }
        if self.reset || !self.shared.streams().contains_key(&self.id) {
            return Err(broken("the SPDY stream was reset or its connection closed"));
        }
        Ok(())
    }

    fn poll_credit(
        &mut self,
        cx: &mut Context<'_>,
        want: usize,
    ) -> Poll<io::Result<(usize, OwnedSemaphorePermit)>> {
        let (len, acquire) = self.credit.get_or_insert_with(|| {
            (
                want,
                Box::pin(self.shared.credit.clone().acquire_many_owned(want as u32)),
            )
        });
        let result = ready!(acquire.as_mut().poll(cx));
        let len = *len;
        self.credit = None;
        match result {
            Ok(permit) => Poll::Ready(Ok((len, permit))),
            Err(_) => Poll::Ready(Err(broken("the SPDY connection is closed"))),
        }
    }
}

impl AsyncRead for SpdyStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.reset {
            return Poll::Ready(Ok(()));
        }
        if this.unread.is_empty() {
            match ready!(this.data.poll_recv(cx)) {
                Some(chunk) => this.unread = chunk,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = buf.remaining().min(this.unread.len());
        buf.put_slice(&this.unread.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SpdyStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.check_writable()?;
        let (len, permit) = ready!(this.poll_credit(cx, buf.len().min(MAX_DATA_FRAME)))?;
        this.check_writable()?;
        this.reply(Vec::new())?;
        let n = len.min(buf.len());
        let data = Bytes::copy_from_slice(&buf[..n]);
        this.shared.send(
            Frame::Data {
                stream_id: this.id,
                flags: 0,
                data,
            },
            Some(permit),
        )?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.local_fin {
            return Poll::Ready(Ok(()));
        }
        this.check_writable()?;
        this.reply(Vec::new())?;
        this.local_fin = true;
        let fin = Frame::Data {
            stream_id: this.id,
            flags: frame::FLAG_FIN,
            data: Bytes::new(),
        };
        this.shared.send(fin, None)?;
        let mut streams = this.shared.streams();
        if let Some(entry) = streams.get_mut(&this.id) {
            entry.local_fin = true;
            if entry.data.is_none() {
                streams.remove(&this.id);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for SpdyStream {
    fn drop(&mut self) {
        if !self.local_fin {
            self.reset();
            return;
        }
        let mut streams = self.shared.streams();
        if streams
            .get(&self.id)
            .is_some_and(|entry| entry.data.is_none())
        {
            streams.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests;
