//! pkt-line framing: `PktReader` over arbitrary bytes, read whole and one
//! byte at a time (both must agree), each data packet written back with
//! `write_pkt` (must round-trip), `PackfileReader` (v2 fetch response
//! demultiplexing) and `SideBand` framing of the same bytes.
#![no_main]

use std::io::{BufReader, Read, Write};

use guts_git::pktline::{
    write_pkt, Packet, PackfileReader, PktReader, SideBand, SideBandMode, MAX_PKT_DATA,
    SIDE_BAND_SMALL_MAX,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Owned {
    Data(Vec<u8>),
    Flush,
    Delim,
    End,
}

/// Every packet up to the end or the first error (kept as text).
fn read_all(r: &mut PktReader<impl std::io::BufRead>) -> (Vec<Owned>, Option<String>) {
    let mut got = Vec::new();
    loop {
        match r.read() {
            Ok(None) => return (got, None),
            Ok(Some(p)) => {
                let _ = p.as_text("fuzz");
                got.push(match p {
                    Packet::Data(d) => Owned::Data(d.to_vec()),
                    Packet::Flush => Owned::Flush,
                    Packet::Delim => Owned::Delim,
                    Packet::ResponseEnd => Owned::End,
                })
            }
            Err(e) => return (got, Some(e.to_string())),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (whole, err) = read_all(&mut PktReader::new(data));
    let (bytewise, err1) = read_all(&mut PktReader::new(BufReader::with_capacity(1, data)));
    assert_eq!(whole, bytewise, "reading in pieces changes the packets");
    assert_eq!(err.is_some(), err1.is_some());

    // What was read writes back to the same bytes.
    let mut again = Vec::new();
    for p in &whole {
        match p {
            Owned::Data(d) => {
                assert!(d.len() <= MAX_PKT_DATA);
                write_pkt(&mut again, d).expect("a packet read is a packet writable")
            }
            Owned::Flush => again.extend_from_slice(b"0000"),
            Owned::Delim => again.extend_from_slice(b"0001"),
            Owned::End => again.extend_from_slice(b"0002"),
        }
    }
    if err.is_none() {
        assert!(
            data.eq_ignore_ascii_case(&again),
            "packets do not round-trip"
        );
    } else {
        assert!(data[..again.len()].eq_ignore_ascii_case(&again));
    }

    // The v2 fetch response demultiplexer, bounded like any reader.
    let mut pack = Vec::new();
    let _ = PackfileReader::new(data)
        .take(1 << 20)
        .read_to_end(&mut pack);
    assert!(pack.len() <= data.len());

    // Side-band framing of the input as pack data: what is read back is the input.
    for mode in [SideBandMode::Small, SideBandMode::Large] {
        let mut sb = SideBand::new(Vec::new(), mode, true);
        sb.write_all(data).expect("vec write");
        sb.progress("progress\n").expect("vec write");
        sb.flush_pkt().expect("vec write");
        let framed = sb.into_inner();
        let mut r = PktReader::new(&framed[..]);
        let mut back = Vec::new();
        while let Some(p) = r.read().expect("side-band output is pkt-lines") {
            match p {
                Packet::Data(d) => {
                    if mode == SideBandMode::Small {
                        assert!(d.len() <= SIDE_BAND_SMALL_MAX);
                    }
                    if d[0] == 1 {
                        back.extend_from_slice(&d[1..])
                    }
                }
                Packet::Flush => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(back, data);
    }
});
