//! The load generator: signed GitHub push deliveries over keep-alive HTTP/1.1
//! connections, in a closed loop (N senders, each waiting for its answer) or
//! an open loop (a fixed send schedule; latency counts from the *scheduled*
//! send time, so queueing delay is charged to the server). With several
//! replicas the load is spread over them round-robin: the concurrency or rate
//! is the scenario's in total, not per replica.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// A payload with its (precomputed) signature; each request gets a unique delivery id.
#[derive(Clone)]
pub(crate) struct Delivery {
    pub body: Bytes,
    pub signature: Arc<str>,
    /// Prefix of `X-GitHub-Delivery`, unique per scenario.
    pub id_prefix: Arc<str>,
}

impl Delivery {
    pub(crate) fn new(body: Bytes, secret: &str, id_prefix: &str) -> Delivery {
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(&body);
        Delivery {
            body,
            signature: format!("sha256={}", hex::encode(mac.finalize().into_bytes())).into(),
            id_prefix: id_prefix.into(),
        }
    }

    fn request(&self, seq: u64) -> Request<Full<Bytes>> {
        Request::post("/hooks/github")
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .header("content-length", self.body.len())
            .header("user-agent", "GitHub-Hookshot/bench")
            .header("x-github-event", "push")
            .header("x-github-delivery", format!("{}-{seq}", self.id_prefix))
            .header("x-hub-signature-256", &*self.signature)
            .body(Full::new(self.body.clone()))
            .unwrap()
    }
}

/// What one scenario saw.
pub(crate) struct Tally {
    pub latency: Histogram<u64>,
    /// Answers with the expected status.
    pub ok: u64,
    /// Answers with another status, by status.
    pub unexpected: Vec<(u16, u64)>,
    /// Requests that got no answer (connection errors).
    pub failed: u64,
    pub elapsed: Duration,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency: Histogram::new_with_bounds(1, 120_000_000, 3).unwrap(),
            ok: 0,
            unexpected: Vec::new(),
            failed: 0,
            elapsed: Duration::ZERO,
        }
    }

    fn answer(&mut self, status: u16, expected: &[u16], latency: Duration) {
        self.latency.saturating_record(latency.as_micros() as u64);
        if expected.contains(&status) {
            self.ok += 1;
        } else if let Some(e) = self.unexpected.iter_mut().find(|(s, _)| *s == status) {
            e.1 += 1;
        } else {
            self.unexpected.push((status, 1));
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latency.add(&other.latency).unwrap();
        self.ok += other.ok;
        self.failed += other.failed;
        for (s, n) in other.unexpected {
            if let Some(e) = self.unexpected.iter_mut().find(|(x, _)| *x == s) {
                e.1 += n;
            } else {
                self.unexpected.push((s, n));
            }
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.ok + self.failed + self.unexpected.iter().map(|(_, n)| n).sum::<u64>()
    }

    pub(crate) fn per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// A latency quantile in milliseconds.
    pub(crate) fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    pub(crate) fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1000.0
    }
}

async fn connect(addr: SocketAddr) -> hyper::Result<SendRequest<Full<Bytes>>> {
    let stream = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Send one request on `sender`; the status once the whole answer is read.
async fn exchange(sender: &mut SendRequest<Full<Bytes>>, req: Request<Full<Bytes>>) -> Option<u16> {
    sender.ready().await.ok()?;
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.ok()?;
    Some(status)
}

/// `concurrency` senders on their own connection (sender i to replica
/// i mod n), each sending its next delivery once the previous one is
/// answered, for `duration`.
pub(crate) async fn closed_loop(
    replicas: &[SocketAddr],
    delivery: &Delivery,
    concurrency: usize,
    duration: Duration,
    expected: &'static [u16],
) -> Tally {
    let seq = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let addr = replicas[i % replicas.len()];
        senders.push((addr, connect(addr).await.unwrap()));
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (addr, mut sender) in senders {
        let (delivery, seq) = (delivery.clone(), seq.clone());
        tasks.spawn(async move {
            let mut tally = Tally::new();
            while Instant::now() < deadline {
                let req = delivery.request(seq.fetch_add(1, Ordering::Relaxed));
                let t0 = Instant::now();
                match exchange(&mut sender, req).await {
                    Some(status) => tally.answer(status, expected, t0.elapsed()),
                    None => {
                        tally.failed += 1;
                        sender = connect(addr).await.unwrap();
                    }
                }
            }
            tally
        });
    }
    let mut tally = Tally::new();
    while let Some(t) = tasks.join_next().await {
        tally.merge(t.unwrap());
    }
    tally.elapsed = start.elapsed();
    tally
}

/// A replica's idle connections.
type Pool = Mutex<Vec<SendRequest<Full<Bytes>>>>;

/// `rate` deliveries per second for `duration` (delivery i to replica
/// i mod n), each on a free pooled connection to its replica (a new one
/// when none is free). A pacing thread keeps the schedule; latency is
/// measured from each delivery's scheduled time.
pub(crate) async fn open_loop(
    replicas: &[SocketAddr],
    delivery: &Delivery,
    rate: u64,
    duration: Duration,
    expected: &'static [u16],
) -> Tally {
    let pools: Arc<Vec<Pool>> = Arc::new(replicas.iter().map(|_| Pool::default()).collect());
    for i in 0..32 {
        let c = connect(replicas[i % replicas.len()]).await.unwrap();
        pools[i % replicas.len()].lock().unwrap().push(c);
    }
    let total = rate * duration.as_secs_f64() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let start = Instant::now() + Duration::from_millis(20);
    let pacer = std::thread::spawn(move || {
        for i in 0..total {
            let at = start + interval * i as u32;
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if tx.send((i, at)).is_err() {
                break;
            }
        }
    });
    let tally = Arc::new(Mutex::new(Tally::new()));
    let mut tasks = tokio::task::JoinSet::new();
    while let Some((i, at)) = rx.recv().await {
        let replica = i as usize % replicas.len();
        let (addr, pools, tally, req) = (
            replicas[replica],
            pools.clone(),
            tally.clone(),
            delivery.request(i),
        );
        tasks.spawn(async move {
            let pool = &pools[replica];
            let pooled = pool.lock().unwrap().pop();
            let mut sender = match pooled {
                Some(s) => s,
                None => connect(addr).await.unwrap(),
            };
            let status = exchange(&mut sender, req).await;
            let latency = at.elapsed();
            let mut t = tally.lock().unwrap();
            match status {
                Some(status) => {
                    t.answer(status, expected, latency);
                    drop(t);
                    pool.lock().unwrap().push(sender);
                }
                None => t.failed += 1,
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    pacer.join().unwrap();
    while tasks.join_next().await.is_some() {}
    let mut tally = Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap();
    tally.elapsed = start.elapsed();
    tally
}
