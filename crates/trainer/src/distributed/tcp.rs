//! Ranks as processes, on one host or several, summing through rank 0 over TCP: the transport
//! of CPU and WGPU runs (and of CUDA runs, staged through host memory).
//!
//! Rank 0 listens on `MASTER_PORT`; the others connect to `MASTER_ADDR` and introduce
//! themselves with their rank, the world size and a fingerprint of the run's settings, so a
//! rank started with another config is refused at once instead of summing garbage. A sum: every
//! rank sends its values to rank 0, which adds them in rank order and sends the total back.
//! A closed connection is a rank that ended; a read that waits past the timeout, one that hangs.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::ops::AddAssign;
use std::time::{Duration, Instant};

use super::{Collective, CollectiveError, WorldEnv};

const MAGIC: &[u8; 8] = b"EMBERDP1";
/// How long a connected process may take to introduce itself.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// This process's place in a run of ranks connected through rank 0.
pub struct TcpGroup {
    rank: usize,
    world: usize,
    timeout: Duration,
    links: Links,
}

enum Links {
    /// Rank 0: the connection of rank `i + 1` at `i`.
    Hub(Vec<TcpStream>),
    /// Any other rank: its connection to rank 0.
    Spoke(TcpStream),
}

impl TcpGroup {
    /// Joins the run `env` describes. Rank 0 waits up to `timeout` for every other rank to
    /// connect; the others retry until rank 0 listens, for as long. `fingerprint` identifies
    /// the run's settings (see [`super::run_fingerprint`]).
    pub fn connect(env: &WorldEnv, fingerprint: u64, timeout: Duration) -> Result<Self, CollectiveError> {
        let links = match env.rank {
            0 => Links::Hub(accept_ranks(env, fingerprint, timeout)?),
            _ => Links::Spoke(join_rank_zero(env, fingerprint, timeout)?),
        };
        Ok(Self {
            rank: env.rank,
            world: env.world_size,
            timeout,
            links,
        })
    }

    fn sum<T: Wire>(&mut self, values: &mut [T]) -> Result<(), CollectiveError> {
        match &mut self.links {
            Links::Hub(peers) => {
                for (i, peer) in peers.iter_mut().enumerate() {
                    let theirs = receive::<T>(peer, i + 1, values.len(), self.timeout)?;
                    values.iter_mut().zip(theirs).for_each(|(v, t)| *v += t);
                }
                let message = encode(values);
                for (i, peer) in peers.iter_mut().enumerate() {
                    send(peer, &message, i + 1, self.timeout)?;
                }
            }
            Links::Spoke(hub) => {
                send(hub, &encode(values), 0, self.timeout)?;
                let total = receive::<T>(hub, 0, values.len(), self.timeout)?;
                values.copy_from_slice(&total);
            }
        }
        Ok(())
    }

    /// Whether every rank this one is connected to still runs: for transports that cannot tell
    /// (NCCL waits forever for a rank that died). A closed connection is [`CollectiveError::Left`].
    pub fn check_peers(&mut self) -> Result<(), CollectiveError> {
        let peers: Vec<(usize, &mut TcpStream)> = match &mut self.links {
            Links::Hub(peers) => peers.iter_mut().enumerate().map(|(i, p)| (i + 1, p)).collect(),
            Links::Spoke(hub) => vec![(0, hub)],
        };
        for (rank, peer) in peers {
            let looked = peer.set_nonblocking(true).and_then(|()| peer.peek(&mut [0u8; 1]));
            let _ = peer.set_nonblocking(false);
            match looked {
                Ok(0) => return Err(CollectiveError::Left { rank }),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(CollectiveError::Left { rank }),
            }
        }
        Ok(())
    }
}

impl Collective for TcpGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn sum_f32(&mut self, values: &mut [f32]) -> Result<(), CollectiveError> {
        self.sum(values)
    }

    fn sum_f64(&mut self, values: &mut [f64]) -> Result<(), CollectiveError> {
        self.sum(values)
    }
}

/// Rank 0: takes one connection from each other rank, in any order.
fn accept_ranks(env: &WorldEnv, fingerprint: u64, timeout: Duration) -> Result<Vec<TcpStream>, CollectiveError> {
    let address = format!("0.0.0.0:{}", env.master_port);
    let listener = TcpListener::bind(&address).map_err(|source| CollectiveError::Io {
        what: format!(
            "rank 0 listening on port {} (MASTER_PORT; another run may hold it: choose another port)",
            env.master_port
        ),
        source,
    })?;
    listener.set_nonblocking(true).map_err(io_error("rank 0 listening"))?;
    let deadline = Instant::now() + timeout;
    let mut peers: Vec<Option<TcpStream>> = (1..env.world_size).map(|_| None).collect();
    while peers.iter().any(Option::is_none) {
        let mut stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let rank = peers.iter().position(Option::is_none).expect("one is missing") + 1;
                    return Err(CollectiveError::Handshake {
                        rank,
                        message: format!("did not connect to rank 0 within {} s", timeout.as_secs()),
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(io_error("rank 0 accepting a rank")(e)),
        };
        configure(&stream, HELLO_TIMEOUT)?;
        let mut hello = [0u8; 24];
        if stream.read_exact(&mut hello).is_err() || &hello[..8] != MAGIC {
            // Not one of ours (a port scan, another program): ignore it.
            continue;
        }
        let rank = u32::from_le_bytes(hello[8..12].try_into().expect("4 bytes")) as usize;
        let world = u32::from_le_bytes(hello[12..16].try_into().expect("4 bytes")) as usize;
        let theirs = u64::from_le_bytes(hello[16..24].try_into().expect("8 bytes"));
        let refusal = if world != env.world_size {
            Some(format!("has WORLD_SIZE={world}, rank 0 has {}", env.world_size))
        } else if rank == 0 || rank >= env.world_size {
            Some(format!("is not a rank of this run (0..{})", env.world_size))
        } else if peers[rank - 1].is_some() {
            Some("connected twice: two processes have this RANK".to_string())
        } else if theirs != fingerprint {
            Some(
                "runs other settings than rank 0 (config, model, data or adapter differ): every rank \
                 must run the same command"
                    .to_string(),
            )
        } else {
            None
        };
        let reply = match &refusal {
            Some(message) => [&[1u8][..], message.as_bytes()].concat(),
            None => vec![0u8],
        };
        // A refused rank learns why; its failure to hear it changes nothing here.
        let _ = stream
            .write_all(&(reply.len() as u32).to_le_bytes())
            .and_then(|_| stream.write_all(&reply));
        if let Some(message) = refusal {
            return Err(CollectiveError::Handshake { rank, message });
        }
        configure(&stream, timeout)?;
        peers[rank - 1] = Some(stream);
    }
    Ok(peers.into_iter().map(|p| p.expect("all connected")).collect())
}

/// Any other rank: connects to rank 0, retrying while it starts.
fn join_rank_zero(env: &WorldEnv, fingerprint: u64, timeout: Duration) -> Result<TcpStream, CollectiveError> {
    let address = format!("{}:{}", env.master_addr, env.master_port);
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        match TcpStream::connect(&address) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() >= deadline => {
                return Err(CollectiveError::Io {
                    what: format!(
                        "rank {} connecting to rank 0 at {address} (MASTER_ADDR:MASTER_PORT) for {} s",
                        env.rank,
                        timeout.as_secs()
                    ),
                    source: e,
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    configure(&stream, HELLO_TIMEOUT)?;
    let mut hello = Vec::with_capacity(24);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&(env.rank as u32).to_le_bytes());
    hello.extend_from_slice(&(env.world_size as u32).to_le_bytes());
    hello.extend_from_slice(&fingerprint.to_le_bytes());
    stream
        .write_all(&hello)
        .map_err(io_error("introducing this rank to rank 0"))?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).map_err(|e| classify(e, 0, HELLO_TIMEOUT))?;
    let mut reply = vec![0u8; u32::from_le_bytes(len) as usize];
    stream
        .read_exact(&mut reply)
        .map_err(|e| classify(e, 0, HELLO_TIMEOUT))?;
    if reply.first() != Some(&0) {
        return Err(CollectiveError::Handshake {
            rank: env.rank,
            message: format!(
                "was refused by rank 0: it {}",
                String::from_utf8_lossy(reply.get(1..).unwrap_or_default())
            ),
        });
    }
    configure(&stream, timeout)?;
    Ok(stream)
}

fn configure(stream: &TcpStream, timeout: Duration) -> Result<(), CollectiveError> {
    stream
        .set_nodelay(true)
        .and_then(|_| stream.set_nonblocking(false))
        .and_then(|_| stream.set_read_timeout(Some(timeout)))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(io_error("configuring a rank's connection"))
}

/// An element the sums carry, little-endian on the wire.
trait Wire: Copy + AddAssign {
    const TAG: u8;
    const SIZE: usize;
    fn put(self, out: &mut Vec<u8>);
    fn get(bytes: &[u8]) -> Self;
}

impl Wire for f32 {
    const TAG: u8 = 1;
    const SIZE: usize = 4;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        f32::from_le_bytes(bytes.try_into().expect("4 bytes"))
    }
}

impl Wire for f64 {
    const TAG: u8 = 2;
    const SIZE: usize = 8;
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn get(bytes: &[u8]) -> Self {
        f64::from_le_bytes(bytes.try_into().expect("8 bytes"))
    }
}

/// A message: the element kind, the count, the values.
fn encode<T: Wire>(values: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + values.len() * T::SIZE);
    out.push(T::TAG);
    out.extend_from_slice(&(values.len() as u64).to_le_bytes());
    values.iter().for_each(|v| v.put(&mut out));
    out
}

fn send(stream: &mut TcpStream, message: &[u8], peer: usize, timeout: Duration) -> Result<(), CollectiveError> {
    stream.write_all(message).map_err(|e| classify(e, peer, timeout))
}

/// `expected` values from `peer`; another count is refused before anything is allocated for it.
fn receive<T: Wire>(
    stream: &mut TcpStream,
    peer: usize,
    expected: usize,
    timeout: Duration,
) -> Result<Vec<T>, CollectiveError> {
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).map_err(|e| classify(e, peer, timeout))?;
    if header[0] != T::TAG {
        return Err(CollectiveError::Handshake {
            rank: peer,
            message: "sent another kind of sum than this rank: the ranks are out of step".into(),
        });
    }
    let count = u64::from_le_bytes(header[1..].try_into().expect("8 bytes"));
    if count != expected as u64 {
        return Err(CollectiveError::Length {
            rank: peer,
            expected,
            got: usize::try_from(count).unwrap_or(usize::MAX),
        });
    }
    let mut bytes = vec![0u8; expected * T::SIZE];
    stream.read_exact(&mut bytes).map_err(|e| classify(e, peer, timeout))?;
    Ok(bytes.chunks_exact(T::SIZE).map(T::get).collect())
}

/// A failed read or write on `peer`'s connection: it ended, it hangs, or something else.
fn classify(error: io::Error, peer: usize, timeout: Duration) -> CollectiveError {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CollectiveError::Timeout { rank: peer, timeout },
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => CollectiveError::Left { rank: peer },
        _ => CollectiveError::Io {
            what: format!("the connection with rank {peer}"),
            source: error,
        },
    }
}

fn io_error(what: &'static str) -> impl Fn(io::Error) -> CollectiveError {
    move |source| CollectiveError::Io {
        what: what.to_string(),
        source,
    }
}
