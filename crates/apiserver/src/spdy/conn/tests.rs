//! Tests of [`super`].

use super::*;
use crate::spdy::frame::Codec;
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

/// The client's sending side.
struct Tx {
    io: WriteHalf<DuplexStream>,
    encoder: Encoder,
}

/// The client's receiving side.
struct Rx {
    io: ReadHalf<DuplexStream>,
    decoder: Decoder,
    buf: BytesMut,
}

impl Tx {
    async fn send(&mut self, frame: Frame) {
        let mut buf = BytesMut::new();
        self.encoder.encode(&frame, &mut buf).unwrap();
        self.io.write_all(&buf).await.unwrap();
    }

    async fn open(&mut self, id: u32, kind: &str) {
        let headers = [("streamtype", kind), ("port", "8080"), ("requestid", "0")];
        let headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let syn = Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            headers,
        };
        self.send(syn).await;
    }

    async fn data(&mut self, id: u32, data: &[u8], flags: u8) {
        let data = Bytes::copy_from_slice(data);
        self.send(Frame::Data {
            stream_id: id,
            flags,
            data,
        })
        .await;
    }
}

impl Rx {
    /// The next frame; `None` at the end of the transport.
    async fn next(&mut self) -> Option<Frame> {
        let next = next_frame(&mut self.io, &mut self.buf, &mut self.decoder);
        timeout(WAIT, next).await.expect("a frame in time").unwrap()
    }

    /// The next frame other than a DATA frame.
    async fn control(&mut self) -> Option<Frame> {
        loop {
            match self.next().await {
                Some(Frame::Data { .. }) => continue,
                other => return other,
            }
        }
    }

    /// Data received on `id` until its FIN.
    async fn data_until_fin(&mut self, id: u32) -> Vec<u8> {
        let mut got = Vec::new();
        loop {
            match self.next().await {
                Some(Frame::Data {
                    stream_id,
                    flags,
                    data,
                }) if stream_id == id => {
                    got.extend_from_slice(&data);
                    if flags & frame::FLAG_FIN != 0 {
                        return got;
                    }
                }
                Some(_) => {}
                None => panic!("transport ended before FIN on {id}"),
            }
        }
    }
}

fn connect() -> (Tx, Rx, ConnectionHandle, mpsc::Receiver<IncomingStream>) {
    let (client, server) = tokio::io::duplex(16 * 1024);
    let (handle, incoming) = serve(server);
    let (read, write) = tokio::io::split(client);
    let (encoder, decoder) = Codec::new().split();
    let tx = Tx { io: write, encoder };
    let rx = Rx {
        io: read,
        decoder,
        buf: BytesMut::new(),
    };
    (tx, rx, handle, incoming)
}

async fn accept(incoming: &mut mpsc::Receiver<IncomingStream>) -> IncomingStream {
    timeout(WAIT, incoming.recv())
        .await
        .expect("a stream in time")
        .expect("a stream")
}

/// Replies to each stream; echoes `data` streams back and closes them when the client did.
fn echo(mut incoming: mpsc::Receiver<IncomingStream>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(mut s) = incoming.recv().await {
            s.stream.reply(Vec::new()).unwrap();
            if s.header("streamtype") != Some("data") {
                continue;
            }
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(s.stream);
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            });
        }
    })
}

#[tokio::test]
async fn streams_are_replied_to_and_echo_data() {
    let (mut tx, mut rx, _handle, mut incoming) = connect();
    tx.open(1, "error").await;
    tx.open(3, "data").await;
    let error = accept(&mut incoming).await;
    assert_eq!((error.id, error.header("streamtype")), (1, Some("error")));
    assert_eq!(error.header("port"), Some("8080"));
    assert_eq!(error.header("requestid"), Some("0"));
    let data = accept(&mut incoming).await;
    assert_eq!((data.id, data.header("streamtype")), (3, Some("data")));
    for s in [error, data] {
        let mut stream = s.stream;
        stream.reply(Vec::new()).unwrap();
        tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(stream);
            tokio::io::copy(&mut r, &mut w).await.unwrap();
            w.shutdown().await.unwrap();
        });
    }
    for id in [1, 3] {
        let reply = rx.next().await.unwrap();
        assert_eq!(
            reply,
            Frame::SynReply {
                stream_id: id,
                flags: 0,
                headers: vec![]
            }
        );
    }
    tx.send(Frame::Ping { id: 1 }).await;
    assert_eq!(rx.next().await, Some(Frame::Ping { id: 1 }));
    tx.data(3, b"hello", 0).await;
    let echoed = rx.next().await;
    assert_eq!(
        echoed,
        Some(Frame::Data {
            stream_id: 3,
            flags: 0,
            data: "hello".into()
        })
    );
    tx.data(3, b"", frame::FLAG_FIN).await;
    assert_eq!(rx.data_until_fin(3).await, b"");
}

#[tokio::test]
async fn a_mebibyte_each_way_does_not_stall() {
    let (mut tx, mut rx, _handle, incoming) = connect();
    echo(incoming);
    tx.open(1, "error").await;
    tx.open(3, "data").await;
    let payload: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let sent = payload.clone();
    let sender = tokio::spawn(async move {
        for chunk in sent.chunks(20_000) {
            tx.data(3, chunk, 0).await;
        }
        tx.data(3, b"", frame::FLAG_FIN).await;
        tx
    });
    assert_eq!(rx.data_until_fin(3).await, payload);
    timeout(WAIT, sender).await.unwrap().unwrap();
}

#[tokio::test]
async fn half_close_is_end_of_file_while_the_other_way_works() {
    let (mut tx, mut rx, _handle, mut incoming) = connect();
    tx.open(1, "data").await;
    let mut s = accept(&mut incoming).await.stream;
    tx.data(1, b"ping", frame::FLAG_FIN).await;
    let mut got = Vec::new();
    timeout(WAIT, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"ping");
    s.write_all(b"still here").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(
        rx.next().await.unwrap(),
        Frame::SynReply {
            stream_id: 1,
            flags: 0,
            headers: vec![]
        }
    );
    assert_eq!(rx.data_until_fin(1).await, b"still here");
    let err = s.write_all(b"late").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
}

#[tokio::test]
async fn a_reset_from_the_client_ends_the_stream() {
    let (mut tx, _rx, _handle, mut incoming) = connect();
    tx.open(1, "data").await;
    let mut s = accept(&mut incoming).await.stream;
    s.reply(Vec::new()).unwrap();
    tx.data(1, b"abc", 0).await;
    tx.send(Frame::RstStream {
        stream_id: 1,
        status: frame::CANCEL,
    })
    .await;
    let mut got = Vec::new();
    timeout(WAIT, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"abc");
    let err = s.write_all(b"x").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
}

#[tokio::test]
async fn server_resets_and_drops_send_rst_stream() {
    let (mut tx, mut rx, _handle, mut incoming) = connect();
    tx.open(1, "data").await;
    tx.open(3, "data").await;
    tx.open(5, "data").await;
    let mut first = accept(&mut incoming).await.stream;
    first.reset();
    let cancel = |stream_id| Frame::RstStream {
        stream_id,
        status: frame::CANCEL,
    };
    assert_eq!(rx.next().await, Some(cancel(1)));
    accept(&mut incoming).await.stream.refuse();
    let refused = Frame::RstStream {
        stream_id: 3,
        status: frame::REFUSED_STREAM,
    };
    assert_eq!(rx.next().await, Some(refused));
    drop(accept(&mut incoming).await);
    assert_eq!(rx.next().await, Some(cancel(5)));
    let mut got = Vec::new();
    first.read_to_end(&mut got).await.unwrap();
    assert!(got.is_empty());
}

#[tokio::test]
async fn pings_and_bad_stream_ids_are_answered() {
    let (mut tx, mut rx, _handle, mut incoming) = connect();
    tx.send(Frame::Ping { id: 2 }).await; // not a ping the server sent: ignored
    tx.send(Frame::Settings {
        flags: 0,
        entries: vec![],
    })
    .await;
    tx.send(Frame::WindowUpdate {
        stream_id: 0,
        delta: 1000,
    })
    .await;
    tx.send(Frame::Ping { id: 3 }).await;
    assert_eq!(rx.next().await, Some(Frame::Ping { id: 3 }));
    tx.open(2, "data").await; // the server's ids are even
    let protocol_error = |stream_id| Frame::RstStream {
        stream_id,
        status: frame::PROTOCOL_ERROR,
    };
    assert_eq!(rx.next().await, Some(protocol_error(2)));
    tx.open(7, "data").await;
    tx.open(5, "data").await; // ids only grow
    assert_eq!(rx.next().await, Some(protocol_error(5)));
    assert_eq!(accept(&mut incoming).await.id, 7);
}

#[tokio::test]
async fn the_end_of_the_transport_ends_everything() {
    let (mut tx, rx, handle, mut incoming) = connect();
    tx.open(1, "data").await;
    let mut s = accept(&mut incoming).await.stream;
    drop((tx, rx));
    let mut got = Vec::new();
    timeout(WAIT, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    timeout(WAIT, handle.closed()).await.unwrap();
    assert!(handle.is_closed());
    assert!(incoming.recv().await.is_none());
    assert_eq!(
        s.write_all(b"x").await.unwrap_err().kind(),
        io::ErrorKind::BrokenPipe
    );
}

#[tokio::test]
async fn goaway_from_the_client_ends_the_connection() {
    let (mut tx, mut rx, handle, mut incoming) = connect();
    tx.open(1, "data").await;
    let mut s = accept(&mut incoming).await.stream;
    tx.send(Frame::GoAway {
        last_good_stream_id: 0,
        status: frame::GOAWAY_OK,
    })
    .await;
    let mut got = Vec::new();
    timeout(WAIT, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    timeout(WAIT, handle.closed()).await.unwrap();
    assert_eq!(rx.next().await, None);
}

#[tokio::test]
async fn close_sends_goaway_after_queued_data() {
    let (mut tx, mut rx, handle, mut incoming) = connect();
    tx.open(1, "data").await;
    let mut s = accept(&mut incoming).await.stream;
    s.write_all(b"bye").await.unwrap();
    handle.close();
    assert!(matches!(
        rx.next().await,
        Some(Frame::SynReply { stream_id: 1, .. })
    ));
    assert!(matches!(
        rx.next().await,
        Some(Frame::Data { stream_id: 1, .. })
    ));
    let goaway = Frame::GoAway {
        last_good_stream_id: 1,
        status: frame::GOAWAY_OK,
    };
    assert_eq!(rx.next().await, Some(goaway));
    assert_eq!(rx.next().await, None);
    timeout(WAIT, handle.closed()).await.unwrap();
}

#[tokio::test]
async fn dropping_every_user_ends_the_connection() {
    let (mut tx, mut rx, handle, incoming) = connect();
    let done = handle.done.clone();
    drop((handle, incoming));
    tx.open(1, "data").await;
    let goaway = rx.control().await;
    assert!(
        matches!(
            goaway,
            Some(Frame::GoAway {
                status: frame::GOAWAY_OK,
                ..
            })
        ),
        "{goaway:?}"
    );
    assert_eq!(rx.next().await, None);
    assert!(*done.clone().wait_for(|d| *d).await.unwrap());
}

#[tokio::test]
async fn a_broken_frame_is_answered_with_goaway() {
    let (mut tx, mut rx, handle, _incoming) = connect();
    tx.io
        .write_all(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1])
        .await
        .unwrap();
    let goaway = Frame::GoAway {
        last_good_stream_id: 0,
        status: frame::GOAWAY_PROTOCOL_ERROR,
    };
    assert_eq!(rx.next().await, Some(goaway));
    assert_eq!(rx.next().await, None);
    timeout(WAIT, handle.closed()).await.unwrap();
}
