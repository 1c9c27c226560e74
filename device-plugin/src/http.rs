//! The small HTTP/1.1 server of `--metrics-addr`: `/metrics` (OpenMetrics text) and
//! `/healthz` (for the DaemonSet's probes). hyper 1 is already compiled for tonic.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::metrics::{self, Metrics};
use crate::status::StatusBoard;

/// Connections served at once; more wait in the listen queue (a scraper and two probes
/// need three).
const MAX_CONNECTIONS: usize = 16;
/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

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
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stopped(&mut stop) => return,
        };
        let (stream, _) = tokio::select! {
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
        let (m, s) = (metrics.clone(), status.clone());
        let svc = service_fn(move |req: Request<Incoming>| {
            let r = respond(req.method(), req.uri().path(), &m, &s);
            async move { Ok::<_, Infallible>(r) }
        });
        tokio::spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!("metrics server connection: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
