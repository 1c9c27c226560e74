//! The small HTTP/1.1 server of `--metrics-addr`: `/metrics` (OpenMetrics text) and
//! `/healthz` (for the DaemonSet's probes). hyper 1 is already compiled for tonic.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::metrics::{self, Metrics};
use crate::status::StatusBoard;

/// Connections served at once (a scraper and two probes need three). When all are taken,
/// a new connection takes the slot of the one idle the longest: see [`Conns`].
const MAX_CONNECTIONS: usize = 16;
/// A client that has not sent a whole request head by then is dropped, also between the
/// requests of a kept-alive connection. kubelet's probes and Prometheus send theirs at
/// once; the short limit bounds how long a connection that sends nothing holds a slot.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

const TEXT: &str = "text/plain; charset=utf-8";

/// Answers one request.
pub fn respond(
    method: &Method,
    path: &str,
    metrics: &Metrics,
    status: &StatusBoard,
) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, ctype: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = code;
        if let Ok(v) = ctype.parse() {
            r.headers_mut().insert(CONTENT_TYPE, v);
        }
        r
    };
    let get = matches!(*method, Method::GET | Method::HEAD);
    match path {
        "/metrics" if get => reply(StatusCode::OK, metrics::CONTENT_TYPE, metrics.encode()),
        "/healthz" if get => match status.healthz() {
            Ok(line) => reply(StatusCode::OK, TEXT, format!("{line}\n")),
            Err(line) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{line}\n")),
        },
        "/" if get => reply(
            StatusCode::OK,
            TEXT,
            "railvf-device-plugin: /metrics /healthz\n".into(),
        ),
        "/metrics" | "/healthz" | "/" => {
            let mut r = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                TEXT,
                "only GET and HEAD\n".into(),
            );
            if let Ok(v) = "GET, HEAD".parse() {
                r.headers_mut().insert(ALLOW, v);
            }
            r
        }
        _ => reply(StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    }
}

/// The open connections and when each last had something to do.
///
/// With a fixed number of slots and a queue behind them, whoever holds every slot (a
/// client that opens connections and sends nothing, or keeps them alive) keeps kubelet's
/// probes out until a slot frees: with a 2 s probe timeout, kubelet restarts the plugin
/// over and over. A limit per peer address would not help, as kubelet probes from the
/// node's own address like any process on the node. So a new connection is always
/// served, and when every slot is taken the connection idle the longest is closed to make
/// room: a probe, which sends its request at once, is answered before it could become that
/// connection.
#[derive(Default)]
struct Conns {
    next_id: u64,
    /// Counts events, to order connections by their last activity without a clock.
    tick: u64,
    open: BTreeMap<u64, Conn>,
}

struct Conn {
    peer: SocketAddr,
    last_active: u64,
    close: Option<oneshot::Sender<()>>,
}

impl Conns {
    fn lock(conns: &Mutex<Conns>) -> std::sync::MutexGuard<'_, Conns> {
        conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a connection from `peer`, closing the one idle the longest when every slot is
    /// taken; returns the new one's id and the closed one's peer.
    fn admit(&mut self, peer: SocketAddr, close: oneshot::Sender<()>) -> (u64, Option<SocketAddr>) {
        let mut evicted = None;
        if self.open.len() >= MAX_CONNECTIONS
            && let Some(id) = self
                .open
                .iter()
                .min_by_key(|(_, c)| c.last_active)
                .map(|(id, _)| *id)
            && let Some(mut c) = self.open.remove(&id)
        {
            if let Some(tx) = c.close.take() {
                let _ = tx.send(());
            }
            evicted = Some(c.peer);
        }
        self.next_id += 1;
        self.tick += 1;
        self.open.insert(
            self.next_id,
            Conn {
                peer,
                last_active: self.tick,
                close: Some(close),
            },
        );
        (self.next_id, evicted)
    }

    /// A request arrived on connection `id`.
    fn touch(&mut self, id: u64) {
        self.tick += 1;
        if let Some(c) = self.open.get_mut(&id) {
            c.last_active = self.tick;
        }
    }

    fn remove(&mut self, id: u64) {
        self.open.remove(&id);
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves `listener` until `stop`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    status: Arc<StatusBoard>,
    mut stop: watch::Receiver<bool>,
) {
    let conns = Arc::new(Mutex::new(Conns::default()));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("metrics server: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let (close_tx, close_rx) = oneshot::channel();
        let (id, evicted) = Conns::lock(&conns).admit(peer, close_tx);
        if let Some(old) = evicted {
            tracing::debug!(%peer, closed = %old, "metrics server: all {MAX_CONNECTIONS} connections taken; closed the one idle the longest");
        }
        let (m, s, c) = (metrics.clone(), status.clone(), conns.clone());
        let svc = service_fn(move |req: Request<Incoming>| {
            Conns::lock(&c).touch(id);
            let r = respond(req.method(), req.uri().path(), &m, &s);
            async move { Ok::<_, Infallible>(r) }
        });
        let conns = conns.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!("metrics server connection: {e}");
                },
                _ = close_rx => {}
            }
            Conns::lock(&conns).remove(id);
        });
        // The new connection reads its request before a burst of accepts could make it the
        // one idle the longest.
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With every slot taken, a new connection closes the one whose last request (or
    /// whose accept) is the oldest; a connection that just sent a request is kept.
    #[test]
    fn a_new_connection_takes_the_slot_idle_the_longest() {
        let peer: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        let mut conns = Conns::default();
        let mut closed = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let (tx, rx) = oneshot::channel();
            let (id, evicted) = conns.admit(peer, tx);
            assert_eq!(evicted, None);
            ids.push(id);
            closed.push(rx);
        }
        // The first one is busy again; the second is now the one idle the longest.
        conns.touch(ids[0]);
        let probe: SocketAddr = "192.0.2.2:40000".parse().unwrap();
        let (tx, _rx) = oneshot::channel();
        let (new, evicted) = conns.admit(probe, tx);
        assert_eq!(evicted, Some(peer));
        assert_eq!(closed[1].try_recv(), Ok(()));
        assert!(closed[0].try_recv().is_err() && closed[2].try_recv().is_err());
        assert_eq!(conns.open.len(), MAX_CONNECTIONS);
        assert!(conns.open.contains_key(&new) && !conns.open.contains_key(&ids[1]));
        // A connection that ends frees its slot: the next one closes nothing.
        conns.remove(ids[2]);
        let (tx, _rx) = oneshot::channel();
        assert_eq!(conns.admit(peer, tx).1, None);
    }

    #[test]
    fn routes() {
        let m = Metrics::new();
        let s = StatusBoard::default();
        let r = respond(&Method::GET, "/metrics", &m, &s);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_TYPE], metrics::CONTENT_TYPE);
        assert_eq!(
            respond(&Method::GET, "/healthz", &m, &s).status(),
            StatusCode::OK
        );
        s.update("r/x", |st| {
            st.backoff_exhausted = true;
            st.last_error = Some("gone".into());
        });
        assert_eq!(
            respond(&Method::GET, "/healthz", &m, &s).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            respond(&Method::POST, "/metrics", &m, &s).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            respond(&Method::GET, "/nope", &m, &s).status(),
            StatusCode::NOT_FOUND
        );
    }
}
