//! TCP flows rebuilt from Ethernet frames: each direction of each connection's payload, placed
//! by sequence number (so retransmissions, reordering and GSO-sized frames make no
//! difference), and what can be asked of it: a byte string anywhere, TLS records from a
//! stream's first byte, connections opened to a port. `crate::link_capture` feeds it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// TLS record content types.
pub const TLS_HANDSHAKE: u8 = 0x16;
pub const TLS_APPLICATION_DATA: u8 = 0x17;

/// What a capture recorded: TCP flows and their payload.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    flows: Vec<Flow>,
    /// The flow each direction's segments go to now (a new SYN starts a new one).
    current: HashMap<(SocketAddr, SocketAddr), usize>,
    /// Frames recorded (markers excepted), TCP or not.
    pub frames: u64,
    pub drops: u64,
    pub truncated: u64,
}

/// One direction of one TCP connection.
#[derive(Clone, Debug)]
pub struct Flow {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// A SYN without ACK was seen: `src` opened this connection, and it started here.
    pub opened: bool,
    /// The sequence number of payload byte 0 (the ISN + 1 once a SYN was seen).
    base: u32,
    started: bool,
    /// Payload by offset from `base`.
    segments: BTreeMap<u64, Vec<u8>>,
}

impl Flow {
    /// Contiguous stretches of payload, `(offset, bytes)`, in order.
    pub fn runs(&self) -> Vec<(u64, Vec<u8>)> {
        let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
        for (off, data) in &self.segments {
            if let Some((start, run)) = runs.last_mut() {
                let end = *start + run.len() as u64;
                if *off <= end {
                    let skip = (end - off) as usize;
                    if skip < data.len() {
                        run.extend_from_slice(&data[skip..]);
                    }
                    continue;
                }
            }
            runs.push((*off, data.clone()));
        }
        runs
    }

    /// Payload bytes, each counted once.
    pub fn bytes(&self) -> u64 {
        self.runs().iter().map(|(_, r)| r.len() as u64).sum()
    }

    /// The stream from its first byte, when its start was seen.
    fn head(&self) -> Option<Vec<u8>> {
        let (off, run) = self.runs().into_iter().next()?;
        (self.started && off == 0).then_some(run)
    }
}

impl Seen {
    /// Records one Ethernet frame (anything but TCP over IPv4 or IPv6 is only counted).
    pub fn record(&mut self, frame: &[u8]) {
        self.frames += 1;
        let Some(seg) = Segment::parse(frame) else {
            return;
        };
        let key = (seg.src, seg.dst);
        let current = self.current.get(&key).map(|&i| &self.flows[i]);
        let data_seq = seg.seq.wrapping_add(u32::from(seg.syn));
        let new = match current {
            None => true,
            // A SYN starts a new flow unless it is this one's again.
            Some(f) => seg.syn && !(f.started && f.base == data_seq),
        };
        if new {
            self.current.insert(key, self.flows.len());
            self.flows.push(Flow {
                src: seg.src,
                dst: seg.dst,
                opened: seg.syn && !seg.ack,
                base: data_seq,
                started: seg.syn,
                segments: BTreeMap::new(),
            });
        }
        let flow = &mut self.flows[self.current[&key]];
        // Before `base`: a retransmission of what preceded the first segment seen.
        let off = data_seq.wrapping_sub(flow.base) as i32;
        if seg.payload.is_empty() || off < 0 {
            return;
        }
        let slot = flow.segments.entry(off as u64).or_default();
        if seg.payload.len() > slot.len() {
            *slot = seg.payload.to_vec();
        }
    }

    pub fn flows(&self) -> &[Flow] {
        &self.flows
    }

    /// Whether `needle` is in any flow's payload.
    pub fn contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty()
            && self.flows.iter().any(|f| {
                f.runs()
                    .iter()
                    .any(|(_, r)| r.windows(needle.len()).any(|w| w == needle))
            })
    }

    /// TLS records of `content_type` over every flow whose first byte was seen, walking
    /// record headers (type, version 0x0301-0x0303, length) from that byte until something
    /// is not a record header or the stream ends (a record cut off at the end counts).
    pub fn tls_records(&self, content_type: u8) -> usize {
        self.flows
            .iter()
            .filter_map(Flow::head)
            .map(|s| tls_walk(&s).iter().filter(|t| **t == content_type).count())
            .sum()
    }

    /// Connections opened across the link to `port` (SYNs without ACK, each connection
    /// once), whether they were accepted or not.
    pub fn flows_to_port(&self, port: u16) -> usize {
        self.flows
            .iter()
            .filter(|f| f.opened && f.dst.port() == port)
            .count()
    }

    /// One line per flow, for failure messages.
    pub fn summary(&self) -> String {
        let mut out: Vec<String> = self
            .flows
            .iter()
            .take(40)
            .map(|f| {
                let tls = f.head().map(|s| tls_walk(&s).len()).unwrap_or(0);
                format!(
                    "{} -> {}{}: {} bytes, {tls} TLS records",
                    f.src,
                    f.dst,
                    if f.opened { " (opened)" } else { "" },
                    f.bytes()
                )
            })
            .collect();
        if self.flows.len() > 40 {
            out.push(format!("... {} flows in all", self.flows.len()));
        }
        out.push(format!("{} frames", self.frames));
        out.join("\n")
    }
}

/// The content types of the TLS records `stream` starts with.
fn tls_walk(stream: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut pos = 0;
    while let (Some(&t), Some(version), Some(len)) = (
        stream.get(pos),
        be16(stream, pos + 1),
        be16(stream, pos + 3),
    ) {
        let record = (0x14..=0x18).contains(&t)
            && (0x0301..=0x0303).contains(&version)
            && len <= (1 << 14) + 256;
        if !record {
            break;
        }
        types.push(t);
        pos += 5 + usize::from(len);
    }
    types
}

pub(crate) fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// One TCP segment of an Ethernet frame.
struct Segment<'a> {
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    syn: bool,
    ack: bool,
    payload: &'a [u8],
}

impl<'a> Segment<'a> {
    fn parse(frame: &'a [u8]) -> Option<Segment<'a>> {
        let (ethertype, l3) = match be16(frame, 12)? {
            0x8100 => (be16(frame, 16)?, 18),
            t => (t, 14),
        };
        let ip = frame.get(l3..)?;
        let (src, dst, tcp): (IpAddr, IpAddr, &[u8]) = match ethertype {
            0x0800 => {
                let ihl = usize::from(ip.first()? & 0x0f) * 4;
                if *ip.get(9)? != libc::IPPROTO_TCP as u8 {
                    return None;
                }
                // A zero total length: a GSO frame larger than the field (BIG TCP).
                let total = usize::from(be16(ip, 2)?);
                let end = if total == 0 { ip.len() } else { total };
                let addr = |at: usize| -> Option<IpAddr> {
                    let o: [u8; 4] = ip.get(at..at + 4)?.try_into().ok()?;
                    Some(Ipv4Addr::from(o).into())
                };
                (addr(12)?, addr(16)?, ip.get(ihl..end.min(ip.len()))?)
            }
            0x86dd => {
                // Extension headers are not followed: the test traffic has none.
                if *ip.get(6)? != libc::IPPROTO_TCP as u8 {
                    return None;
                }
                let len = usize::from(be16(ip, 4)?);
                let end = if len == 0 { ip.len() } else { 40 + len };
                let addr = |at: usize| -> Option<IpAddr> {
                    let o: [u8; 16] = ip.get(at..at + 16)?.try_into().ok()?;
                    Some(Ipv6Addr::from(o).into())
                };
                (addr(8)?, addr(24)?, ip.get(40..end.min(ip.len()))?)
            }
            _ => return None,
        };
        let flags = *tcp.get(13)?;
        let data = usize::from(tcp.get(12)? >> 4) * 4;
        Some(Segment {
            src: SocketAddr::new(src, be16(tcp, 0)?),
            dst: SocketAddr::new(dst, be16(tcp, 2)?),
            seq: be32(tcp, 4)?,
            syn: flags & 0x02 != 0,
            ack: flags & 0x10 != 0,
            payload: tcp.get(data..)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;

    /// An Ethernet + IPv4 + TCP frame (20-byte TCP header), padded like a short frame.
    fn v4(
        src: [u8; 4],
        sport: u16,
        dst: [u8; 4],
        dport: u16,
        seq: u32,
        flags: u8,
        data: &[u8],
    ) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let total = (20 + 20 + data.len()) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend_from_slice(data);
        f.resize(f.len().max(60), 0);
        f
    }

    fn v6(src: Ipv6Addr, dst: Ipv6Addr, dport: u16, seq: u32, flags: u8, data: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&0x86ddu16.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&((20 + data.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[6, 64]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend_from_slice(data);
        f
    }

    const A: [u8; 4] = [10, 77, 1, 2];
    const B: [u8; 4] = [10, 77, 2, 2];

    #[test]
    fn reassembles_out_of_order_and_retransmitted_segments() {
        let mut s = Seen::default();
        let isn = u32::MAX - 3; // the sequence space wraps inside the payload
        s.record(&v4(A, 40000, B, 8080, isn, SYN, b""));
        s.record(&v4(B, 8080, A, 40000, 7, SYN | ACK, b""));
        s.record(&v4(A, 40000, B, 8080, isn.wrapping_add(7), ACK, b"world!"));
        s.record(&v4(A, 40000, B, 8080, isn.wrapping_add(1), ACK, b"hello "));
        s.record(&v4(A, 40000, B, 8080, isn.wrapping_add(4), ACK, b"lo w"));
        s.record(&v4(B, 8080, A, 40000, 8, ACK, b"reply"));
        assert!(s.contains(b"hello world!"));
        assert!(s.contains(b"reply"));
        assert!(!s.contains(b"hello world!!"));
        assert_eq!(s.flows_to_port(8080), 1);
        assert_eq!(
            s.flows_to_port(40000),
            0,
            "the reply direction opened nothing"
        );
        assert_eq!(s.flows()[0].bytes(), 12);
    }

    #[test]
    fn a_new_syn_on_the_same_ports_is_a_new_connection() {
        let mut s = Seen::default();
        s.record(&v4(A, 40000, B, 15008, 100, SYN, b""));
        s.record(&v4(A, 40000, B, 15008, 100, SYN, b"")); // retransmitted
        s.record(&v4(A, 40000, B, 15008, 5000, SYN, b""));
        assert_eq!(s.flows_to_port(15008), 2);
    }

    #[test]
    fn counts_tls_records_from_the_stream_start_only() {
        let mut stream = vec![0x16, 0x03, 0x01, 0, 3, 1, 2, 3]; // ClientHello: version 0x0301
        for _ in 0..3 {
            stream.extend_from_slice(&[0x17, 0x03, 0x03, 0, 2, 9, 9]);
        }
        let mut s = Seen::default();
        s.record(&v6(
            "fd77::2".parse().unwrap(),
            "fd77::3".parse().unwrap(),
            15008,
            1,
            SYN,
            b"",
        ));
        // Split mid-header: the walk must follow the reassembled stream.
        s.record(&v6(
            "fd77::2".parse().unwrap(),
            "fd77::3".parse().unwrap(),
            15008,
            2,
            ACK,
            &stream[..10],
        ));
        s.record(&v6(
            "fd77::2".parse().unwrap(),
            "fd77::3".parse().unwrap(),
            15008,
            12,
            ACK,
            &stream[10..],
        ));
        assert_eq!(s.tls_records(TLS_HANDSHAKE), 1);
        assert_eq!(s.tls_records(TLS_APPLICATION_DATA), 3);
        // Plain text is no TLS, and a flow whose start was not seen is not walked.
        let mut plain = Seen::default();
        plain.record(&v4(A, 1, B, 8080, 1, SYN, b""));
        plain.record(&v4(A, 1, B, 8080, 2, ACK, b"REQ 4096 0\n"));
        plain.record(&v4(A, 2, B, 8080, 9, ACK, &stream));
        assert_eq!(plain.tls_records(TLS_APPLICATION_DATA), 0);
        assert_eq!(plain.tls_records(TLS_HANDSHAKE), 0);
    }
}
