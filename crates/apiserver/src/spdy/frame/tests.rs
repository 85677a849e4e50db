//! Tests of [`super`].

use super::*;

fn h(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn every_frame() -> Vec<Frame> {
    vec![
        Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            headers: h(&[
                ("streamtype", "error"),
                ("port", "8080"),
                ("requestid", "0"),
            ]),
        },
        Frame::SynStream {
            stream_id: 3,
            associated_to: 1,
            priority: 7,
            slot: 2,
            flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
            headers: h(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")]),
        },
        Frame::SynReply {
            stream_id: 1,
            flags: 0,
            headers: vec![],
        },
        Frame::SynReply {
            stream_id: 3,
            flags: FLAG_FIN,
            headers: h(&[("a", "b")]),
        },
        Frame::RstStream {
            stream_id: 3,
            status: CANCEL,
        },
        Frame::Settings {
            flags: 1,
            entries: vec![
                Setting {
                    flags: 1,
                    id: 4,
                    value: 100,
                },
                Setting {
                    flags: 0,
                    id: 7,
                    value: 65536,
                },
            ],
        },
        Frame::Settings {
            flags: 0,
            entries: vec![],
        },
        Frame::Ping { id: 0x7fff_ffff },
        Frame::GoAway {
            last_good_stream_id: 5,
            status: GOAWAY_PROTOCOL_ERROR,
        },
        Frame::Headers {
            stream_id: 5,
            flags: FLAG_FIN,
            headers: h(&[("x-y", "z")]),
        },
        Frame::WindowUpdate {
            stream_id: 0,
            delta: 1 << 20,
        },
        Frame::Data {
            stream_id: 1,
            flags: 0,
            data: Bytes::from_static(b"hello"),
        },
        Frame::Data {
            stream_id: 0x7fff_fffd,
            flags: FLAG_FIN,
            data: Bytes::new(),
        },
    ]
}

fn round_trip(from: &mut Codec, to: &mut Codec, frames: &[Frame]) {
    let mut wire = BytesMut::new();
    for f in frames {
        from.encode(f, &mut wire).unwrap();
    }
    for f in frames {
        assert_eq!(to.decode(&mut wire).unwrap().as_ref(), Some(f));
    }
    assert_eq!(to.decode(&mut wire).unwrap(), None);
    assert!(wire.is_empty());
}

#[test]
fn every_frame_type_round_trips_both_ways() {
    let (mut client, mut server) = (Codec::new(), Codec::new());
    round_trip(&mut client, &mut server, &every_frame());
    round_trip(&mut server, &mut client, &every_frame());
    // The contexts carry on from one batch to the next.
    round_trip(&mut client, &mut server, &every_frame());
}

#[test]
fn dictionary_is_spdy3s() {
    assert_eq!(HEADER_DICTIONARY.len(), 1423);
    let id = Compress::new(Compression::best(), true).set_dictionary(HEADER_DICTIONARY);
    assert_eq!(id.unwrap(), 0xe3c6_a7c2);
}

#[test]
fn header_blocks_share_one_zlib_stream() {
    let (mut client, mut server) = (Codec::new(), Codec::new());
    let syn = |stream_id| Frame::SynStream {
        stream_id,
        associated_to: 0,
        priority: 0,
        slot: 0,
        flags: 0,
        headers: h(&[
            ("streamtype", "data"),
            ("port", "8080"),
            ("requestid", "12"),
        ]),
    };
    let mut sizes = vec![];
    let mut wire = BytesMut::new();
    for id in [1, 3, 5] {
        let before = wire.len();
        client.encode(&syn(id), &mut wire).unwrap();
        sizes.push(wire.len() - before);
    }
    // Later blocks refer back to the first one.
    assert!(sizes[1] < sizes[0] && sizes[2] < sizes[0], "{sizes:?}");
    let third = wire.split_off(sizes[0] + sizes[1]);
    let second = wire.split_off(sizes[0]);
    let mut first = wire;
    assert_eq!(server.decode(&mut first).unwrap(), Some(syn(1)));
    // A fresh context cannot read the second block alone.
    assert!(Codec::new().decode(&mut second.clone()).is_err());
    assert_eq!(server.decode(&mut second.clone()).unwrap(), Some(syn(3)));
    assert_eq!(server.decode(&mut third.clone()).unwrap(), Some(syn(5)));
}

#[test]
fn repeated_names_travel_nul_joined() {
    let (mut client, mut server) = (Codec::new(), Codec::new());
    let headers = h(&[("Accept", "a"), ("x", "1"), ("accept", "b")]);
    let frame = Frame::Headers {
        stream_id: 1,
        flags: 0,
        headers,
    };
    let mut wire = BytesMut::new();
    client.encode(&frame, &mut wire).unwrap();
    let Some(Frame::Headers { headers, .. }) = server.decode(&mut wire).unwrap() else {
        panic!("not HEADERS");
    };
    assert_eq!(headers, h(&[("accept", "a"), ("accept", "b"), ("x", "1")]));
}

#[test]
fn fixed_frames_are_laid_out_byte_for_byte() {
    let mut codec = Codec::new();
    let mut wire = BytesMut::new();
    codec.encode(&Frame::Ping { id: 7 }, &mut wire).unwrap();
    codec
        .encode(
            &Frame::RstStream {
                stream_id: 3,
                status: CANCEL,
            },
            &mut wire,
        )
        .unwrap();
    let data = Frame::Data {
        stream_id: 5,
        flags: FLAG_FIN,
        data: Bytes::from_static(b"ab"),
    };
    codec.encode(&data, &mut wire).unwrap();
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x80, 0x03, 0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x07,
        0x80, 0x03, 0x00, 0x03, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x03,
        0x00, 0x00, 0x00, 0x05,
        0x00, 0x00, 0x00, 0x05, 0x01, 0x00, 0x00, 0x02, b'a', b'b',
    ];
    assert_eq!(&wire[..], expected);
    // A SYN_REPLY's block opens a zlib stream that names the SPDY/3 dictionary.
    let mut wire = BytesMut::new();
    codec
        .encode(
            &Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: vec![],
            },
            &mut wire,
        )
        .unwrap();
    assert_eq!(&wire[..4], &[0x80, 0x03, 0x00, 0x02]);
    assert_eq!(&wire[8..12], &[0, 0, 0, 1]);
    assert_eq!(wire[12], 0x78);
    assert_eq!(wire[13] & 0x20, 0x20, "FDICT");
    assert_eq!(&wire[14..18], &[0xe3, 0xc6, 0xa7, 0xc2]);
    // The sync flush ends it.
    assert_eq!(&wire[wire.len() - 4..], &[0x00, 0x00, 0xff, 0xff]);
}

#[test]
fn hand_built_syn_stream_decodes() {
    // The header block {"port": "80"} in a stored (uncompressed) deflate block.
    let block: &[u8] = b"\0\0\0\x01\0\0\0\x04port\0\0\0\x0280";
    let mut payload = vec![0, 0, 0, 1, 0, 0, 0, 0, 0x20, 0];
    payload.extend([0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2, 0x00]);
    payload.extend((block.len() as u16).to_le_bytes());
    payload.extend((!(block.len() as u16)).to_le_bytes());
    payload.extend(block);
    let mut wire = BytesMut::from(&[0x80, 0x03, 0x00, 0x01, 0x01, 0, 0, payload.len() as u8][..]);
    wire.extend_from_slice(&payload);
    let expected = Frame::SynStream {
        stream_id: 1,
        associated_to: 0,
        priority: 1,
        slot: 0,
        flags: FLAG_FIN,
        headers: h(&[("port", "80")]),
    };
    assert_eq!(Codec::new().decode(&mut wire).unwrap(), Some(expected));
}

#[test]
fn truncated_input_waits_for_the_rest() {
    let mut client = Codec::new();
    let mut wire = BytesMut::new();
    for f in &every_frame() {
        client.encode(f, &mut wire).unwrap();
    }
    let mut server = Codec::new();
    let mut buf = BytesMut::new();
    let mut got = vec![];
    for byte in wire {
        buf.put_u8(byte);
        while let Some(f) = server.decode(&mut buf).unwrap() {
            got.push(f);
        }
    }
    assert_eq!(got, every_frame());
    assert!(buf.is_empty());
}

#[test]
fn unknown_control_frames_are_skipped() {
    let mut wire = BytesMut::from(&[0x80, 0x03, 0x00, 0x0a, 0, 0, 0, 3, 1, 2, 3][..]);
    Codec::new()
        .encode(&Frame::Ping { id: 1 }, &mut wire)
        .unwrap();
    assert_eq!(
        Codec::new().decode(&mut wire).unwrap(),
        Some(Frame::Ping { id: 1 })
    );
}

fn error_of(bytes: &[u8]) -> String {
    Codec::new()
        .decode(&mut BytesMut::from(bytes))
        .unwrap_err()
        .to_string()
}

#[test]
fn bad_input_is_rejected_with_the_reason() {
    let version2 = error_of(&[0x80, 0x02, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 1]);
    assert!(version2.contains("version 2"), "{version2}");
    let huge = error_of(&[0x80, 0x03, 0x00, 0x01, 0, 0x20, 0, 0]);
    assert!(huge.contains("SYN_STREAM frame of 2097152 bytes"), "{huge}");
    let ping = error_of(&[0x80, 0x03, 0x00, 0x06, 0, 0, 0, 5, 0, 0, 0, 1, 0]);
    assert!(ping.contains("bad PING frame: 5 bytes, not 4"), "{ping}");
    let rst = error_of(&[0x80, 0x03, 0x00, 0x03, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 5]);
    assert!(rst.contains("stream id 0"), "{rst}");
    let data = error_of(&[0, 0, 0, 0, 0, 0, 0, 1, 9]);
    assert!(data.contains("bad DATA frame: stream id 0"), "{data}");
    let settings = error_of(&[0x80, 0x03, 0x00, 0x04, 0, 0, 0, 8, 0, 0, 0, 2, 0, 0, 0, 1]);
    assert!(settings.contains("2 settings in 4 bytes"), "{settings}");
    let garbage = error_of(&[0x80, 0x03, 0x00, 0x02, 0, 0, 0, 8, 0, 0, 0, 1, 1, 2, 3, 4]);
    assert!(garbage.contains("header compression"), "{garbage}");
    let no_block = error_of(&[0x80, 0x03, 0x00, 0x02, 0, 0, 0, 4, 0, 0, 0, 1]);
    assert!(
        no_block.contains("bad header block: cut short"),
        "{no_block}"
    );
}

#[test]
fn bad_header_blocks_are_rejected() {
    let cases: [(&[u8], &str); 4] = [
        (b"\0\0\0\x09", "9 headers announced in 0 bytes"),
        (
            b"\0\0\0\x01\0\0\0\x09port1234",
            "cut short in a header name",
        ),
        (b"\0\0\0\x01\0\0\0\0\0\0\0\0", "empty name"),
        (b"\0\0\0\0xyz", "3 bytes after the last header"),
    ];
    for (plain, reason) in cases {
        // Fresh contexts each time: an error leaves them out of step.
        let block = Encoder::default().compress(plain).unwrap();
        let err = Decoder::default()
            .header_block(&block)
            .unwrap_err()
            .to_string();
        assert!(err.contains(reason), "{err} lacks {reason}");
    }
    let nul = Encoder::default()
        .header_block(&h(&[("a", "b\0c")]))
        .unwrap_err();
    assert!(nul.to_string().contains("NUL"), "{nul}");
}
